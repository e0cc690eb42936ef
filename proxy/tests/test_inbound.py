"""inbound.py: where a request says it goes must be exactly where its connection goes."""

import pytest
from mitmproxy import http

from agentctl_proxy.inbound import authority_problem, header_problem, is_absolute_form


def _req(version="HTTP/1.1", authority="", headers=()):
    return http.Request("api.example.test", 443, b"GET", b"https", authority.encode(), b"/v1/x",
                        version.encode(), http.Headers([(k.encode(), v.encode()) for k, v in headers]),
                        b"", None, 0, 0)


def test_absolute_form_is_an_http1_request_with_an_authority():
    assert is_absolute_form(_req(authority="evil.example.test"))
    assert not is_absolute_form(_req())
    assert not is_absolute_form(_req("HTTP/2.0", authority="api.example.test"))  # :authority is normal in h2


@pytest.mark.parametrize("version,authority,hosts,expected", [
    ("HTTP/1.1", "", ["api.example.test"], None),
    ("HTTP/1.1", "", ["API.example.test.:443"], None),
    ("HTTP/1.1", "", [], 400),
    ("HTTP/1.1", "", ["api.example.test", "api.example.test"], 400),
    ("HTTP/1.1", "", ["evil.example.test"], 403),
    ("HTTP/1.1", "", ["api.example.test:8443"], 403),
    ("HTTP/1.1", "", ["api.example.test:x"], 400),
    ("HTTP/2.0", "api.example.test", [], None),
    ("HTTP/2.0", "", ["api.example.test"], None),
    ("HTTP/2.0", "api.example.test", ["api.example.test"], None),
    ("HTTP/2.0", "evil.example.test", [], 403),
    ("HTTP/2.0", "api.example.test", ["evil.example.test"], 403),  # an HTTP/1 upstream would get Host
    ("HTTP/2.0", "evil.example.test", ["api.example.test"], 403),
    ("HTTP/2.0", "", [], 400),
])
def test_every_host_claim_must_be_the_target(version, authority, hosts, expected):
    req = _req(version, authority, [("host", h) for h in hosts])
    got = authority_problem(req, "api.example.test", 443, True)
    assert (got[0] if got else None) == expected


def test_header_problem_names_smuggling_shapes():
    assert header_problem(_req(headers=[("content-length", "1"), ("transfer-encoding", "chunked")]))
    assert header_problem(_req(headers=[("transfer-encoding", "gzip")]))
    assert header_problem(_req(headers=[("content-length", "1"), ("content-length", "2")]))
    assert header_problem(_req(headers=[("host", "api.example.test")])) is None
