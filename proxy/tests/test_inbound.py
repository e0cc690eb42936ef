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


# --------------------------------------- the header helpers against mitmproxy's Headers
# header_problem, authority_problem and the addon read `Headers.fields` directly instead
# of mitmproxy's get_all / get / pop; every answer must be the original's.

import originals  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from agentctl_proxy.inbound import drop_header, header_get, header_values  # noqa: E402

NAMES = [b"host", b"Host", b"HOST", b"content-length", b"Content-Length", b"CONTENT-LENGTH", b"transfer-encoding",
         b"Transfer-Encoding", b"upgrade", b"Upgrade", b"authorization", b"Authorization", b"proxy-authorization",
         b"Proxy-Authorization", b"x-a", b"bad name", b"a:b", b"a\r", b"a\n", b"a\x00", b"content-length ",
         b"\xc4\xb0host", b"hos\xc5\xbf"]
VALUES = [b"", b"1", b"2", b" 1", b"1 ", b"01", b"-1", b"1,1", b"chunked", b"Chunked", b" chunked ", b"gzip",
          b"chunked, gzip", b"websocket", b"h2c", b"\r", b"\n", b"a\x00b", b"api.example.test", b"API.example.test.:443",
          b"api.example.test:443", b"api.example.test:8443", b"evil.example.test", b"[::1]:443", b"x:y:z",
          "\u00b2".encode(), "\u0661".encode(), b"\xff", b"\xc3\xa9", b"Bearer x"]
fields = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=5)
LOOKUPS = [b"host", b"content-length", b"transfer-encoding", b"upgrade", b"authorization", b"proxy-authorization"]


def _raw_req(fs, version="HTTP/1.1", authority=b""):
    return http.Request("api.example.test", 443, b"GET", b"https", authority, b"/v1/x", version.encode(),
                        http.Headers(list(fs)), b"", None, 0, 0)


@settings(max_examples=1500, deadline=None)
@given(fields, st.sampled_from(["HTTP/1.1", "HTTP/2.0"]),
       st.sampled_from([b"", b"api.example.test", b"api.example.test:443", b"evil.example.test", b"a:b"]),
       st.sampled_from([("api.example.test", 443, True), ("api.example.test", 80, False), ("1.2.3.4", 443, True)]))
def test_header_checks_equal_the_originals(fs, version, authority, target):
    req = _raw_req(fs, version, authority)
    assert header_problem(req) == originals.header_problem(req)
    assert authority_problem(req, *target) == originals.authority_problem(req, *target)


@settings(max_examples=1000, deadline=None)
@given(fields, st.sampled_from(LOOKUPS))
def test_header_helpers_equal_mitmproxys_headers(fs, name):
    headers = http.Headers(list(fs))
    assert header_values(headers, name) == headers.get_all(name.decode())
    assert header_get(headers, name) == headers.get(name.decode())
    mine, theirs = http.Headers(list(fs)), http.Headers(list(fs))
    drop_header(mine, name)
    theirs.pop(name.decode(), None)
    assert mine.fields == theirs.fields
