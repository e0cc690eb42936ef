"""A name with one trailing dot is the same name (docs/design.md: Hosts): `api.example.test.`
that a rule allows is forwarded, in the CONNECT target, the SNI and the Host header, in the
tunnel and in DNS mode (HTTPS and plain HTTP); two dots, a leading dot or an empty label
stay refused. Real proxy, real TLS, real upstream on loopback."""

from __future__ import annotations

import socket

import pytest
from conftest import SCOUT, UP_OK, base_config, client_tls_context, connect_tunnel, free_port, http_exchange, status_of

RECORDS = [{"name": "api.example.test", "type": "A", "value": UP_OK}]
RULES = [{"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/*"]},
         {"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/*"], "ports": [80]}]


@pytest.fixture(scope="module")
def proxy(pki, upstreams, start_proxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("dot")
    cfg = base_config(pki, work, https_listen=f"127.0.0.1:{free_port()}", http_listen=f"127.0.0.1:{free_port()}")
    cfg["dns"] = {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1", "records": RECORDS}
    cfg["transforms"] = [{"name": "allowlist", "config": {"rules": RULES}}]
    return start_proxy(cfg, workdir=work)


def _get(host: str) -> bytes:
    return f"GET /v1/dot HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def _tunnel(proxy, pki, target: str, sni: str, host: str) -> bytes:
    sock = connect_tunnel(proxy, SCOUT, f"{target}:443", pki["ca_cert"], sni=sni)
    if isinstance(sock, bytes):
        return sock
    with sock:
        return http_exchange(sock, _get(host))


def _dns_https(proxy, pki, sni: str, host: str) -> bytes:
    s = socket.create_connection(("127.0.0.1", proxy.port("https_listen")), 5, source_address=(SCOUT, 0))
    try:
        tls = client_tls_context(pki["ca_cert"]).wrap_socket(s, server_hostname=sni)
    except OSError as e:  # refused at the ClientHello: closed
        s.close()
        return repr(e).encode()
    with tls:
        return http_exchange(tls, _get(host))


def _dns_http(proxy, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port("http_listen")), 5, source_address=(SCOUT, 0)) as s:
        return http_exchange(s, _get(host))


@pytest.mark.parametrize("target,sni,host", [
    ("api.example.test.", "api.example.test.", "api.example.test."),  # all three with the dot
    ("api.example.test.", "api.example.test", "api.example.test"),  # only the CONNECT target
    ("api.example.test", "api.example.test.", "api.example.test"),  # only the SNI
    ("api.example.test", "api.example.test", "api.example.test."),  # only the Host header
    ("API.Example.Test.", "api.example.test.", "api.example.test.:443"),
])
def test_one_trailing_dot_is_forwarded_through_the_tunnel(proxy, pki, upstreams, target, sni, host):
    before = len(upstreams["tls443"].seen)
    resp = _tunnel(proxy, pki, target, sni, host)
    assert status_of(resp) == 200, resp[:300]
    assert len(upstreams["tls443"].seen) == before + 1


@pytest.mark.parametrize("sni,host", [("api.example.test.", "api.example.test."),
                                      ("api.example.test.", "api.example.test"),
                                      ("api.example.test", "api.example.test.")])
def test_one_trailing_dot_is_forwarded_in_dns_mode_https(proxy, pki, upstreams, sni, host):
    before = len(upstreams["tls443"].seen)
    resp = _dns_https(proxy, pki, sni, host)
    assert status_of(resp) == 200, resp[:300]
    assert len(upstreams["tls443"].seen) == before + 1


def test_one_trailing_dot_is_forwarded_in_dns_mode_http(proxy, upstreams):
    before = len(upstreams["plain80"].seen)
    resp = _dns_http(proxy, "api.example.test.")
    assert status_of(resp) == 200, resp[:300]
    assert len(upstreams["plain80"].seen) == before + 1


@pytest.mark.parametrize("name", ["api.example.test..", ".api.example.test", "api..example.test"])
def test_other_dot_forms_stay_refused(proxy, pki, upstreams, name):
    seen = {k: len(upstreams[k].seen) for k in ("tls443", "plain80")}
    connect = _tunnel(proxy, pki, name, "api.example.test", "api.example.test")
    assert isinstance(connect, bytes) and status_of(connect) in (400, 403), connect[:200]
    inner = _tunnel(proxy, pki, "api.example.test", "api.example.test", name)
    assert status_of(inner) in (400, 403), inner[:200]
    assert status_of(_dns_http(proxy, name)) in (400, 403)
    assert {k: len(upstreams[k].seen) for k in seen} == seen
