"""The bypass battery: one real proxy, real TLS upstreams, curl/httpx/raw sockets as agents.

Each test states the invariant it guards. The proxy runs as `python -m agentctl_proxy
run` with an `agents:` section; scout and builder are separate identities.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time

import httpcore
import httpx
import pytest
from mitmproxy import dns as mdns
from mitmproxy.net.dns import response_codes, types

from conftest import (BUILDER, SCOUT, STRANGER, UP_H1, UP_H2, UP_OK, base_config, client_tls_context,
                      connect_tunnel, free_port, h2_exchange, http_exchange, status_of)

from agentctl_proxy.dns_server import DNSMessage

PAT = "s3cret-pat-value-0123456789"
QKEY = "q-key-value-abcdef"


@pytest.fixture(scope="module")
def proxy(pki, upstreams, raw_upstreams, start_proxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("battery")
    (work / "pat").write_text(PAT + "\n")
    cfg = base_config(pki, work, https_listen=f"127.0.0.1:{free_port()}",
                      http_listen=f"127.0.0.1:{free_port()}", max_request_body_bytes=4096)
    cfg["dns"] = {
        "listen": f"127.0.0.1:{free_port()}",
        "proxy_ip": "127.0.0.1",
        "records": [
            {"name": n, "type": "A", "value": UP_OK}
            for n in ("api.example.test", "files.example.test", "other.example.test")
        ] + [{"name": "h1.example.test", "type": "A", "value": UP_H1},
             {"name": "h2.example.test", "type": "A", "value": UP_H2},
             {"name": "rebind.example.test", "type": "A", "value": "127.0.0.3"},
             {"name": "imds.example.test", "type": "A", "value": "169.254.169.254"}],
        "passthrough": ["localhost"],
    }
    cfg["transforms"] = [{"name": "allowlist", "config": {"rules": [
        {"name": "apt-mirrors", "host": "other.example.test", "methods": ["GET", "HEAD"], "paths": ["/debian/*"]}]}}]
    cfg["agents"] = [
        {"name": "scout", "sources": [f"{SCOUT}/32"],
         "transforms": [
             {"name": "allowlist", "config": {"rules": [
                 {"host": "api.example.test", "methods": ["GET", "POST"], "paths": ["/v1/*"]},
                 {"host": "api.example.test", "methods": ["GET"], "paths": ["/alt/*"], "ports": [8443]},
                 {"host": "files.example.test", "methods": ["GET", "PUT"], "paths": ["/bucket/*"],
                  "allow_encoded_slashes": True},
                 {"host": "api.example.test", "methods": ["GET"], "paths": ["/limited/*"], "rate_limit": 3},
                 {"host": "rebind.example.test", "methods": ["GET"]},
                 {"host": "imds.example.test", "methods": ["GET"]},
                 {"host": "api.example.test", "methods": ["GET"], "paths": ["/ws/*"]},
                 {"cidr": "127.0.0.0/24", "methods": ["GET"], "paths": ["/v1/*"]},
                 {"host": "api.example.test", "methods": ["GET"], "paths": ["/plain/*"], "ports": [80]},
                 {"host": "h1.example.test", "methods": ["GET", "POST"], "paths": ["/v1/*"]},
                 {"host": "h2.example.test", "methods": ["GET", "POST"], "paths": ["/v1/*"]},
             ]}},
             {"name": "secrets", "config": {"secrets": [
                 {"name": "github-pat", "source": {"type": "file", "path": str(work / "pat"), "ttl": "15m"},
                  "inject": {"header": "Authorization", "formatter": "Bearer {{ .Value }}"},
                  "rules": [{"host": "api.example.test", "methods": ["GET", "POST"], "paths": ["/v1/secret/*"]},
                            {"host": "api.example.test", "methods": ["GET"], "paths": ["/plain/secret/*"],
                             "ports": [80]},
                            {"host": "h1.example.test", "methods": ["POST"], "paths": ["/v1/secret/*"]},
                            {"host": "h2.example.test", "methods": ["POST"], "paths": ["/v1/secret/*"]}]},
                 {"name": "broken", "source": {"type": "file", "path": str(work / "missing")},
                  "inject": {"header": "X-Api-Key"},
                  "rules": [{"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/broken/*"]}]},
                 {"name": "qkey", "source": {"type": "env", "var": "AGENTCTL_TEST_QKEY"},
                  "inject": {"query_param": "key"},
                  "rules": [{"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/q/*"]}]},
             ]}},
         ],
         "bootstrap": {"max_duration": "30m",
                       "rules": [{"host": "files.example.test", "methods": ["GET"], "paths": ["/boot/*"]}]}},
        {"name": "builder", "sources": [f"{BUILDER}/32"],
         "transforms": [{"name": "allowlist", "config": {"rules": [
             {"host": "files.example.test", "methods": ["GET"], "paths": ["/builder/*"]}]}}]},
    ]
    # this battery refuses on purpose, fast: no audit line may be left to the budget
    cfg["log"]["refusal_burst"] = 1_000_000
    return start_proxy(cfg, env={"AGENTCTL_TEST_QKEY": QKEY}, workdir=work)


def curl(proxy, url, *args, source=SCOUT, pki=None, via_proxy=True):
    cmd = ["curl", "-s", "-S", "--max-time", "10", "--interface", source, "-o", "-", "-w", "\n%{http_code}"]
    if via_proxy:
        cmd += ["-x", proxy.tunnel]
    if pki:
        cmd += ["--cacert", pki["ca_cert"]]
    out = subprocess.run(cmd + list(args) + [url], capture_output=True, text=True)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body, out.returncode


def raw_request(proxy, pki, target, request, source=SCOUT, sni=None):
    sock = connect_tunnel(proxy, source, target, pki["ca_cert"], sni=sni)
    if isinstance(sock, bytes):
        return sock
    with sock:
        return http_exchange(sock, request)


def get(path, host="api.example.test", extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode()


# ----------------------------------------------------------------- deny by default


def test_allowed_request_reaches_upstream_and_is_audited(proxy, pki, upstreams):
    code, body, _ = curl(proxy, "https://api.example.test/v1/repos?x=1", pki=pki)
    assert code == 200
    assert json.loads(body)["path"] == "/v1/repos?x=1"
    rec = proxy.last_audit(path="/v1/repos", method="GET", event="complete")
    assert rec["action"] == "allow" and rec["agent"] == "scout" and rec["rule"] == "scout/allowlist[0]"
    assert rec["status_code"] == 200 and rec["remote_addr"] == SCOUT and rec["sni"] == "api.example.test"


def test_allow_is_recorded_as_a_decision_then_a_completion(proxy, pki):
    assert curl(proxy, "https://api.example.test/v1/two-lines", pki=pki)[0] == 200
    proxy.last_audit(path="/v1/two-lines", event="complete")
    lines = [r for r in proxy.audit() if r["path"] == "/v1/two-lines"]
    assert [r["event"] for r in lines] == ["decision", "complete"]
    decision, complete = lines
    assert decision["action"] == "allow" and decision["status_code"] is None
    assert complete["action"] == "allow" and complete["status_code"] == 200
    assert decision["rule"] == complete["rule"] == "scout/allowlist[0]"
    assert complete["duration_ms"] >= decision["duration_ms"]
    connect = proxy.last_audit(method="CONNECT", path="api.example.test:443")
    assert connect["event"] == "decision" and connect["status_code"] == 200


def test_a_refusal_is_one_decision_line(proxy, pki):
    assert curl(proxy, "https://api.example.test/v2/one-line", pki=pki)[0] == 403
    proxy.last_audit(path="/v2/one-line")
    time.sleep(0.2)  # a stray second line would be written right after the first
    assert [r["event"] for r in proxy.audit() if r["path"] == "/v2/one-line"] == ["decision"]


def test_connect_to_unnamed_host_refused_before_tls(proxy, pki, upstreams):
    head = raw_request(proxy, pki, "unnamed.example.test:443", b"")
    assert status_of(head) == 403  # the CONNECT itself is answered 403: no TLS ever starts
    rec = proxy.last_audit(host="unnamed.example.test", method="CONNECT")
    assert rec["action"] == "deny" and rec["rejected_by"] == "no rule names this host"


def test_unknown_client_source_is_denied_everything(proxy, pki):
    head = raw_request(proxy, pki, "api.example.test:443", b"", source=STRANGER)
    assert status_of(head) == 403
    assert proxy.last_audit(remote_addr=STRANGER, method="CONNECT")["agent"] == "-"
    code, _, _ = curl(proxy, "http://api.example.test/plain/x", source=STRANGER)
    assert code == 403


def test_system_rules_apply_to_every_agent_and_are_named(proxy, pki):
    code, _, _ = curl(proxy, "https://other.example.test/debian/dists/x", pki=pki, source=BUILDER)
    assert code == 200
    assert proxy.last_audit(agent="builder", path="/debian/dists/x")["rule"] == "system/apt-mirrors"
    code, _, _ = curl(proxy, "https://other.example.test/debian/x", "-X", "POST", pki=pki)
    assert code == 403  # GET/HEAD only


def test_agents_do_not_share_grants(proxy, pki):
    code, _, rc = curl(proxy, "https://api.example.test/v1/x", pki=pki, source=BUILDER)
    assert code != 200 and rc != 0  # curl reports the refused CONNECT as a failure
    assert proxy.last_audit(agent="builder", host="api.example.test")["action"] == "deny"


# ------------------------------------------------------------------------- paths

BAD_PATHS = [
    "/v1/../admin", "/v1/./x", "/v1//x", "/v1/%2e%2e/admin", "/v1/%2E%2e/admin", "/v1/.%2e/admin",
    "/v1/%252e%252e/admin", "/v1/%25252e%25252e/admin", "/v1/%c0%ae%c0%ae/admin", "/v1/%c0%af/x",
    "/v1/%e0%80%ae%e0%80%ae/x", "/v1\\..\\admin", "/v1/%5c../admin", "/v1/x;jsessionid=1", "/v1/x%3bparam",
    "/v1/%00", "/v1/%0d%0aX-Injected:1", "/v1/%01", "/v1/a%2fb", "/v1/a%252fb", "/v1/%ef%bc%8e%ef%bc%8e/x",
    "/v1/%zz", "/v1/x%", "/v1/%20../admin", "/v1/..%20/admin", "/v1/.../admin", "/v1/%2e%20%2e/admin",
    "/v1/%2520%2e%2e/admin", "/v1/x#frag", "/v1/x%7c|", "/v1/x?q=a|b",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_non_canonical_path_refused_never_normalised(proxy, pki, upstreams, path):
    before = len(upstreams["tls443"].seen)
    resp = raw_request(proxy, pki, "api.example.test:443", get(path))
    assert status_of(resp) in (400, 403), resp[:200]
    assert len(upstreams["tls443"].seen) == before  # nothing reached the upstream


@pytest.mark.parametrize("path,expected", [
    ("/v1", 200), ("/v1/", 200), ("/v1/ok", 200), ("/v1evil", 403), ("/v1-evil/x", 403),
    ("/V1/x", 403), ("/", 403), ("/v2/x", 403),
])
def test_prefix_matching_is_by_whole_segment(proxy, pki, path, expected):
    assert status_of(raw_request(proxy, pki, "api.example.test:443", get(path))) == expected


def test_encoded_slash_only_where_a_rule_allows_it(proxy, pki):
    ok = raw_request(proxy, pki, "files.example.test:443", get("/bucket/a%2Fb", "files.example.test"))
    assert status_of(ok) == 200
    assert status_of(raw_request(proxy, pki, "files.example.test:443",
                                 get("/bucket/..%2Fother", "files.example.test"))) == 403


# ------------------------------------------------------------------- host binding


def test_host_header_must_match_connect_target(proxy, pki):
    resp = raw_request(proxy, pki, "api.example.test:443", get("/v1/x", host="other.example.test"))
    assert status_of(resp) == 403
    assert proxy.last_audit(rejected_by="host mismatch", path="/v1/x")["action"] == "deny"


def test_duplicate_host_header_refused(proxy, pki):
    resp = raw_request(proxy, pki, "api.example.test:443", get("/v1/x", extra="Host: other.example.test\r\n"))
    assert status_of(resp) in (400, 403)


def test_sni_must_match_connect_target(proxy, pki):
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        raw_request(proxy, pki, "api.example.test:443", get("/v1/x", host="other.example.test"),
                    sni="other.example.test")
    assert proxy.last_audit(rejected_by="SNI differs from CONNECT target")["sni"] == "other.example.test"


def test_absolute_form_uri_host_must_match_host_header(proxy):
    code, _, _ = curl(proxy, "http://api.example.test/plain/x", "-H", "Host: other.example.test")
    assert code == 403
    assert curl(proxy, "http://api.example.test/plain/x")[0] == 200


def _tls_to(proxy, pki, key, sni="api.example.test", alpn=None):
    raw = socket.create_connection(("127.0.0.1", proxy.port(key)), 5, source_address=(SCOUT, 0))
    return client_tls_context(pki["ca_cert"], alpn).wrap_socket(raw, server_hostname=sni)


@pytest.mark.parametrize("how", ["tunnel", "dns-https"])
@pytest.mark.parametrize("uri", ["https://evil.example.test/v1/secret/x", "https://api.example.test/v1/secret/x",
                                 "http://evil.example.test/v1/secret/x"])
def test_absolute_form_inside_tls_refused_without_the_secret(proxy, pki, upstreams, how, uri):
    """mitmproxy routes by the tunnel / SNI but would forward this request-target as
    sent, with the secret granted to api.example.test: refused outright, same host or not."""
    before = len(upstreams["tls443"].seen)
    req = f"GET {uri} HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n".encode()
    if how == "tunnel":
        resp = raw_request(proxy, pki, "api.example.test:443", req)
    else:
        with _tls_to(proxy, pki, "https_listen") as sock:
            resp = http_exchange(sock, req)
    assert status_of(resp) == 400 and PAT.encode() not in resp
    assert len(upstreams["tls443"].seen) == before
    rec = proxy.last_audit(rejected_by="absolute-form request", path="/v1/secret/x")
    assert rec["action"] == "deny" and rec["host"] == "api.example.test"


def test_absolute_form_in_dns_mode_http_refused(proxy, upstreams):
    before = len(upstreams["plain80"].seen)
    s = socket.create_connection(("127.0.0.1", proxy.port("http_listen")), 5, source_address=(SCOUT, 0))
    with s:
        resp = http_exchange(s, b"GET http://evil.example.test/plain/x HTTP/1.1\r\n"
                                b"Host: api.example.test\r\nConnection: close\r\n\r\n")
    assert status_of(resp) == 400
    assert len(upstreams["plain80"].seen) == before


def _h2_tunnel(proxy, pki):
    sock = connect_tunnel(proxy, SCOUT, "api.example.test:443", pki["ca_cert"], alpn=["h2"])
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def _h2_get(path, authority="api.example.test", extra=()):
    head = [(":method", "GET"), (":scheme", "https"), (":path", path)]
    return head + ([(":authority", authority)] if authority else []) + list(extra)


@pytest.mark.parametrize("headers", [
    _h2_get("/v1/secret/x", authority="evil.example.test"),
    _h2_get("/v1/secret/x", authority="evil.example.test", extra=[("host", "api.example.test")]),
    _h2_get("/v1/secret/x", extra=[("host", "evil.example.test")]),  # an HTTP/1 upstream gets Host
    _h2_get("/v1/secret/x", authority=None, extra=[("host", "evil.example.test")]),
    _h2_get("/v1/secret/x", authority="api.example.test:8443"),
])
def test_http2_authority_and_host_must_both_equal_the_target(proxy, pki, upstreams, headers):
    before, lines = len(upstreams["tls443"].seen), len(proxy.audit())
    with _h2_tunnel(proxy, pki) as sock:
        status, _ = h2_exchange(sock, headers)
    assert status in (400, 403, None)  # None: the h2 stack itself killed the connection
    assert len(upstreams["tls443"].seen) == before
    assert _new_deny(proxy, lines)


def _new_deny(proxy, lines_before: int) -> dict:
    """The first deny line written after `lines_before` lines (waits for it)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        denies = [r for r in proxy.audit()[lines_before:] if r["action"] == "deny"]
        if denies:
            return denies[0]
        time.sleep(0.05)
    raise AssertionError("no deny line was written")


def test_http2_matching_authority_passes(proxy, pki):
    with _h2_tunnel(proxy, pki) as sock:
        assert h2_exchange(sock, _h2_get("/v1/h2raw", extra=[("host", "api.example.test")])) == (200, "ended")


@pytest.mark.parametrize("path", ["/v1/x /admin", "/v1/x HTTP/1.1\tX", "/v1/x?a=b c", "/v1/x?a=\x7f", "/v1/%20../x"])
def test_http2_path_outside_rfc3986_refused(proxy, pki, upstreams, path):
    """A raw space in :path would become a second request-target word on the HTTP/1 line."""
    before, lines = len(upstreams["tls443"].seen), len(proxy.audit())
    with _h2_tunnel(proxy, pki) as sock:
        status, _ = h2_exchange(sock, _h2_get(path))
    assert status in (400, 403, None)  # None: the h2 stack itself killed the connection
    assert len(upstreams["tls443"].seen) == before
    assert _new_deny(proxy, lines)


def _count(proxy, **match) -> int:
    return sum(all(r.get(k) == v for k, v in match.items()) for r in proxy.audit())


def _wait_count(proxy, n: int, **match) -> int:
    """How many lines match, once there are `n` (or 3 s passed): lines are written async."""
    deadline = time.monotonic() + 3
    while _count(proxy, **match) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # and no more than that
    return _count(proxy, **match)


def test_http2_protocol_error_kill_is_audited(proxy, pki, upstreams):
    before = _count(proxy, rejected_by="HTTP/2 protocol error", remote_addr=SCOUT)
    with _h2_tunnel(proxy, pki) as sock:
        status, how = h2_exchange(sock, _h2_get("/v1/x", extra=[(":bogus", "1")]))
    assert status is None and how in ("goaway", "closed", "error")
    assert _wait_count(proxy, before + 1, rejected_by="HTTP/2 protocol error", remote_addr=SCOUT) == before + 1
    rec = proxy.last_audit(rejected_by="HTTP/2 protocol error", remote_addr=SCOUT)
    assert rec["action"] == "deny" and rec["agent"] == "scout" and rec["sni"] == "api.example.test"


@pytest.mark.parametrize("how", ["tunnel-tls", "plain-proxy"])
def test_unparseable_http1_request_is_refused_and_audited(proxy, pki, upstreams, how):
    """mitmproxy answers 400 itself, before any hook: the refusal still gets its line."""
    before, lines = len(upstreams["tls443"].seen), _count(proxy, rejected_by="HTTP/1 protocol error")
    req = b"GET /v1/x /admin HTTP/1.1\r\nHost: api.example.test\r\n\r\n"
    if how == "tunnel-tls":
        resp = raw_request(proxy, pki, "api.example.test:443", req)
    else:
        s = socket.create_connection(("127.0.0.1", proxy.port("tunnel_listen")), 5, source_address=(SCOUT, 0))
        with s:
            resp = http_exchange(s, req)
    assert status_of(resp) == 400
    assert len(upstreams["tls443"].seen) == before
    assert _wait_count(proxy, lines + 1, rejected_by="HTTP/1 protocol error") == lines + 1
    assert proxy.last_audit(rejected_by="HTTP/1 protocol error")["agent"] == "scout"


@pytest.mark.parametrize("key,mode", [("tunnel_listen", "tunnel"), ("http_listen", "http")])
def test_tls_on_a_plain_http_port_is_refused_and_audited(proxy, pki, key, mode):
    before = _count(proxy, rejected_by="TLS on a plain-HTTP port", mode=mode)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _tls_to(proxy, pki, key).close()
    assert _wait_count(proxy, before + 1, rejected_by="TLS on a plain-HTTP port", mode=mode) == before + 1
    assert proxy.last_audit(rejected_by="TLS on a plain-HTTP port", mode=mode)["agent"] == "scout"


def test_alpn_other_than_http1_h2_refused_and_audited(proxy, pki, upstreams):
    before = len(upstreams["tls443"].seen)
    sock = connect_tunnel(proxy, SCOUT, "api.example.test:443", pki["ca_cert"], alpn=["http/1.0"])
    assert sock.selected_alpn_protocol() == "http/1.0"  # mitmproxy agrees to it; we do not
    with sock:
        assert http_exchange(sock, get("/v1/x")) == b""
    assert proxy.last_audit(rejected_by="ALPN 'http/1.0' is not HTTP/1.1 or h2")["action"] == "deny"
    assert len(upstreams["tls443"].seen) == before


def test_plain_data_in_a_tunnel_is_not_relayed(proxy, pki, upstreams):
    s = socket.create_connection(("127.0.0.1", proxy.port("tunnel_listen")), 5, source_address=(SCOUT, 0))
    s.sendall(b"CONNECT api.example.test:443 HTTP/1.1\r\nHost: api.example.test:443\r\n\r\n")
    assert b" 200 " in s.recv(4096)
    s.sendall(b"GET /v1/x HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
    s.settimeout(5)
    assert s.recv(4096) == b""  # closed: no raw TCP, no cleartext HTTP on 443
    s.close()


@pytest.mark.parametrize("target", [
    "2130706434:443", "0177.0.0.2:443", "0x7f000002:443", "127.1:443", "0x7f.0.0.2:443",
    "[::ffff:127.0.0.2]:443", "[::ffff:169.254.169.254]:443", "[::ffff:a9fe:a9fe]:443",
])
def test_ip_literal_spellings_refused(proxy, pki, target):
    assert status_of(raw_request(proxy, pki, target, b"")) == 403


def test_canonical_ip_literal_needs_a_cidr_rule_and_passes_deny_list(proxy, pki):
    resp = raw_request(proxy, pki, "127.0.0.2:443", get("/v1/x", host="127.0.0.2"))
    assert status_of(resp) == 200
    resp = raw_request(proxy, pki, "127.0.0.3:443", get("/v1/x", host="127.0.0.3"))
    assert status_of(resp) == 403  # inside the cidr rule, but in upstream_deny_cidrs
    assert proxy.last_audit(host="127.0.0.3", method="GET")["rejected_by"] == "upstream_deny_cidrs"


@pytest.mark.parametrize("host", ["rebind.example.test", "imds.example.test"])
def test_name_resolving_into_denied_range_refused(proxy, pki, upstreams, host):
    before = len(upstreams["denied443"].seen)
    code, body, _ = curl(proxy, f"https://{host}/latest/meta-data/", pki=pki)
    assert code == 403 and "upstream_deny_cidrs" in body
    assert len(upstreams["denied443"].seen) == before


def test_connect_to_other_port_refused(proxy, pki):
    assert status_of(raw_request(proxy, pki, "api.example.test:22", b"")) == 403
    assert proxy.last_audit(path="api.example.test:22")["rejected_by"] == "port not allowed"


def test_rule_ports_bind_rules_to_their_port(proxy, pki):
    assert curl(proxy, "https://api.example.test:8443/alt/x", pki=pki)[0] == 200
    assert curl(proxy, "https://api.example.test:8443/v1/x", pki=pki)[0] == 403


# --------------------------------------------------------------------- smuggling


@pytest.mark.parametrize("headers", [
    "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "Content-Length: 5\r\nContent-Length: 6\r\n",
    "Transfer-Encoding: chunked, identity\r\n",
    "Transfer-Encoding: xchunked\r\n",
])
def test_request_smuggling_refused(proxy, pki, upstreams, headers):
    before = len(upstreams["tls443"].seen)
    req = (f"POST /v1/x HTTP/1.1\r\nHost: api.example.test\r\n{headers}\r\n"
           "0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: api.example.test\r\n\r\n").encode()
    resp = raw_request(proxy, pki, "api.example.test:443", req)
    assert status_of(resp) in (400, 403, 501) or resp == b""
    assert not any(s["path"] == "/v1/smuggled" for s in upstreams["tls443"].seen[before:])


def test_obs_fold_header_refused(proxy, pki):
    resp = raw_request(proxy, pki, "api.example.test:443",
                       b"GET /v1/x HTTP/1.1\r\nHost: api.example.test\r\nX-A: a\r\n b\r\n\r\n")
    assert status_of(resp) in (400, 403) or resp == b""


# ------------------------------------------- HTTP/2 client, HTTP/1.1 upstream (issue 16)
# mitmproxy converts an HTTP/2 request for an HTTP/1.1 upstream without framing its body
# (proxy/layers/http/_http1.py, Http1Client.send): a body without content-length was
# read by the upstream as a second request, with any method, path and credential, never
# decided or audited. The upstreams here log every byte and parse it as a strict server.

SMUGGLED = (b"DELETE /v1/admin/users?who=all HTTP/1.1\r\nHost: h1.example.test\r\n"
            b"Authorization: Bearer agents-own\r\nContent-Length: 0\r\n\r\n")


def _h2_via(proxy, pki, how, host):
    """An h2 connection to `host` through the tunnel, or to the DNS-mode HTTPS listener."""
    if how == "tunnel":
        sock = connect_tunnel(proxy, SCOUT, f"{host}:443", pki["ca_cert"], alpn=["h2"])
    else:
        sock = _tls_to(proxy, pki, "https_listen", sni=host, alpn=["h2"])
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def _h2_post(host, path, extra=()):
    return [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", host), *extra]


@pytest.mark.parametrize("how", ["tunnel", "dns-https"])
@pytest.mark.parametrize("up", ["h1", "h2"])
@pytest.mark.parametrize("path", ["/v1/allowed/x", "/v1/secret/x"])  # the second carries the injected PAT
def test_http2_body_without_length_reaches_the_upstream_as_one_framed_request(proxy, pki, raw_upstreams,
                                                                               how, up, path):
    host, server = f"{up}.example.test", raw_upstreams[up]
    before = len(server.requests)
    with _h2_via(proxy, pki, how, host) as sock:
        status, _ = h2_exchange(sock, _h2_post(host, path), body=SMUGGLED)
    assert status == 200
    time.sleep(0.3)  # a second request would be parsed right after the first
    got = server.requests[before:]
    assert [(m, t) for _, m, t, _, _ in got] == [("POST", path)], got
    assert got[0][4] == SMUGGLED  # the body arrived as the body, framed by content-length
    assert not any(b"agents-own" in raw and b"DELETE" not in raw for raw in server.raw)  # logged bytes agree
    rec = proxy.last_audit(path=path, host=host, event="decision")
    assert rec["action"] == "allow" and rec["method"] == "POST"


@pytest.mark.parametrize("how", ["tunnel", "dns-https"])
@pytest.mark.parametrize("up", ["h1", "h2"])
def test_http2_request_trailers_are_refused_not_sent_unframed(proxy, pki, raw_upstreams, how, up):
    """Http1Client.send fails on trailers (AssertionError) after the body went out
    unframed; refused before anything goes upstream, whatever the upstream speaks."""
    host, server = f"{up}.example.test", raw_upstreams[up]
    before, raw_before = len(server.requests), sum(map(len, server.raw))
    with _h2_via(proxy, pki, how, host) as sock:
        status, _ = h2_exchange(sock, _h2_post(host, "/v1/trailers"), body=SMUGGLED,
                                trailers=[("x-checksum", "1")])
    assert status == 400
    assert server.requests[before:] == [] and sum(map(len, server.raw)) == raw_before
    rec = proxy.last_audit(path="/v1/trailers", host=host)
    assert rec["action"] == "deny" and rec["rejected_by"] == "unframed request"
    assert "AssertionError" not in proxy.logs()


@pytest.mark.parametrize("proto", ["HTTP/1.1", "HTTP/2"])
def test_method_is_forwarded_as_the_decision_saw_it(proxy, pki, raw_upstreams, proto):
    server = raw_upstreams["h1"]
    before = len(server.requests)
    if proto == "HTTP/1.1":
        resp = raw_request(proxy, pki, "h1.example.test:443", get("/v1/lower", host="h1.example.test").replace(
            b"GET", b"get", 1))
        assert status_of(resp) == 200
    else:
        with _h2_via(proxy, pki, "tunnel", "h1.example.test") as sock:
            head = [(":method", "get"), (":scheme", "https"), (":path", "/v1/lower"),
                    (":authority", "h1.example.test")]
            assert h2_exchange(sock, head)[0] == 200
    assert [m for _, m, _, _, _ in server.requests[before:]] == ["GET"]
    assert proxy.last_audit(path="/v1/lower", host="h1.example.test")["method"] == "GET"


@pytest.mark.parametrize("value", ["a\x0bb", "a\x7fb", "a\x1bb", "a\x01b"])
@pytest.mark.parametrize("proto", ["HTTP/1.1", "HTTP/2"])
def test_control_bytes_in_header_values_refused(proxy, pki, raw_upstreams, value, proto):
    server = raw_upstreams["h1"]
    before, lines = len(server.requests), len(proxy.audit())
    if proto == "HTTP/1.1":
        resp = raw_request(proxy, pki, "h1.example.test:443",
                           get("/v1/ctl", host="h1.example.test", extra=f"X-A: {value}\r\n"))
        status = status_of(resp)
    else:
        with _h2_via(proxy, pki, "tunnel", "h1.example.test") as sock:
            status, _ = h2_exchange(sock, _h2_get("/v1/ctl", authority="h1.example.test",
                                                  extra=[("x-a", value)]))
    assert status in (400, None)  # None: mitmproxy's own parser refused the head
    assert server.requests[before:] == []
    assert _new_deny(proxy, lines)


# ---------------------------------------------------------------------- bodies


def test_oversized_body_413(proxy, pki, upstreams):
    before = len(upstreams["tls443"].seen)
    code, _, _ = curl(proxy, "https://api.example.test/v1/upload", "-X", "POST",
                      "--data-binary", "x" * 5000, pki=pki)
    assert code == 413
    assert proxy.last_audit(path="/v1/upload")["rejected_by"] == "max_request_body_bytes"
    assert len(upstreams["tls443"].seen) == before
    assert curl(proxy, "https://api.example.test/v1/upload", "-X", "POST",
                "--data-binary", "x" * 4000, pki=pki)[0] == 200


def test_oversized_body_to_a_denied_path_is_one_413_line(proxy, pki):
    """mitmproxy answers 413 before policy matters; the one line must say what was sent."""
    code, _, _ = curl(proxy, "https://api.example.test/v2/upload-denied", "-X", "POST",
                      "--data-binary", "x" * 5000, pki=pki)
    assert code == 413
    proxy.last_audit(path="/v2/upload-denied")
    time.sleep(0.2)
    lines = [r for r in proxy.audit() if r["path"] == "/v2/upload-denied"]
    assert [(r["status_code"], r["rejected_by"]) for r in lines] == [(413, "max_request_body_bytes")]


def test_oversized_chunked_body_413(proxy, pki):
    chunk = b"x" * 3000
    req = (b"POST /v1/upload HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(chunk) + chunk + b"\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
    assert status_of(raw_request(proxy, pki, "api.example.test:443", req)) == 413


# -------------------------------------------------------------------- credentials


def test_forged_authorization_stripped_then_secret_injected(proxy, pki, upstreams):
    code, body, _ = curl(proxy, "https://api.example.test/v1/secret/x", "-H", "Authorization: Bearer forged",
                         "-H", "Proxy-Authorization: Basic Zm9vOmJhcg==", pki=pki)
    assert code == 200
    seen = json.loads(body)["headers"]
    assert seen["authorization"] == f"Bearer {PAT}"
    assert "proxy-authorization" not in seen
    rec = proxy.last_audit(path="/v1/secret/x")
    assert rec["request_transforms"] == ["allowlist", "secrets"]


def test_client_credentials_dropped_even_where_no_secret_matches(proxy, pki):
    """The agent holds no credential by design: one it sends anyway never leaves."""
    code, body, _ = curl(proxy, "https://api.example.test/v1/other", "-H", "Proxy-Authorization: Basic eA==",
                         "-H", "Authorization: Bearer exfiltrated", pki=pki)
    headers = json.loads(body)["headers"]
    assert code == 200 and "proxy-authorization" not in headers and "authorization" not in headers


def test_secret_injected_as_query_param_replacing_client_value(proxy, pki):
    code, body, _ = curl(proxy, "https://api.example.test/v1/q/x?key=forged&a=1", "-H", "Authorization: Bearer forged",
                         pki=pki)
    assert code == 200
    assert "authorization" not in json.loads(body)["headers"]  # stripped even though the secret is a query param
    path = json.loads(body)["path"]
    assert f"key={QKEY}" in path and "forged" not in path and "a=1" in path


def test_secret_never_injected_into_cleartext(proxy, upstreams):
    before = len(upstreams["plain80"].seen)
    code, body, _ = curl(proxy, "http://api.example.test/plain/secret/x")
    assert code == 403 and "cleartext" in body and PAT not in body
    assert len(upstreams["plain80"].seen) == before


def test_secret_source_down_503_names_the_secret(proxy, pki):
    code, body, _ = curl(proxy, "https://api.example.test/v1/broken/x", pki=pki)
    assert code == 503 and "broken" in body
    assert curl(proxy, "https://api.example.test/v1/ok", pki=pki)[0] == 200  # other grants keep working


def test_secret_values_never_in_audit_or_logs(proxy, pki):
    curl(proxy, "https://api.example.test/v1/secret/y", pki=pki)
    text = proxy.audit_path.read_text() + proxy.logs()
    assert PAT not in text and QKEY not in text


# ----------------------------------------------------------------- protocols


class _H2First(ssl.SSLContext):
    """httpcore offers http/1.1 first; mitmproxy honours the client's order."""

    def set_alpn_protocols(self, protocols):
        super().set_alpn_protocols(["h2", "http/1.1"])


class _FromSource(httpcore.SyncBackend):
    def __init__(self, source):
        self.source = source

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return super().connect_tcp(host, port, timeout, self.source, socket_options)


def _client(proxy, pki, source=SCOUT, http2=False):
    """httpx through the tunnel from `source` (httpx drops local_address with a proxy)."""
    transport = httpx.HTTPTransport(http2=http2)
    ctx = _H2First(ssl.PROTOCOL_TLS_CLIENT) if http2 else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki["ca_cert"])
    transport._pool = httpcore.HTTPProxy(proxy_url=proxy.tunnel, ssl_context=ctx,
                                         http1=True, http2=http2, network_backend=_FromSource(source))
    return httpx.Client(transport=transport, timeout=10)


def test_http2_same_decisions(proxy, pki):
    with _client(proxy, pki, http2=True) as c:
        ok = c.get("https://api.example.test/v1/h2")
        assert ok.http_version == "HTTP/2" and ok.status_code == 200
        assert c.get("https://api.example.test/v2/h2").status_code == 403
        assert c.get("https://api.example.test/v1/%2e%2e/admin").status_code == 403
        assert c.post("https://api.example.test/v1/upload", content=b"x" * 5000).status_code == 413
        assert c.get("https://api.example.test/v1/secret/h2",
                      headers={"authorization": "forged"}).json()["headers"]["authorization"] == f"Bearer {PAT}"


def test_sse_is_streamed_not_buffered(proxy, pki):
    with _client(proxy, pki) as c:
        start = time.monotonic()
        with c.stream("GET", "https://api.example.test/v1/sse") as r:
            it = r.iter_raw()
            first = next(it)
            t_first = time.monotonic() - start
            rest = b"".join(it)
            t_all = time.monotonic() - start
    assert b"event 0" in first and b"event 1" in rest
    assert t_first < 1.0 and t_all >= 1.4  # the upstream pauses 1.5 s between events


def _ws_handshake(path):
    return (f"GET {path} HTTP/1.1\r\nHost: api.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def test_websocket_upgrade_passes_the_allowlist(proxy, pki):
    sock = connect_tunnel(proxy, SCOUT, "api.example.test:443", pki["ca_cert"])
    with sock:
        sock.settimeout(5)
        sock.sendall(_ws_handshake("/ws/chat"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert status_of(head) == 101
        payload = b"hi"
        mask = b"\x01\x02\x03\x04"
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        frame = sock.recv(100)
        assert frame[2:] == b"echo hi"
        # recorded when decided, not when the stream ends
        assert proxy.last_audit(path="/ws/chat", event="decision")["action"] == "allow"
    assert proxy.last_audit(path="/ws/chat", event="complete")["status_code"] == 101
    denied = raw_request(proxy, pki, "api.example.test:443", _ws_handshake("/wsx/chat"))
    assert status_of(denied) == 403


def test_non_websocket_upgrade_refused(proxy, pki):
    resp = raw_request(proxy, pki, "api.example.test:443",
                       get("/v1/x", extra="Upgrade: h2c\r\nConnection: Upgrade\r\n"))
    assert status_of(resp) == 403


# ------------------------------------------------------------------- limits


def test_rate_limit_429(proxy, pki):
    codes = [curl(proxy, "https://api.example.test/limited/x", pki=pki)[0] for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert proxy.last_audit(status_code=429)["rejected_by"] == "rate_limit"


# ------------------------------------------------------------------- DNS mode


def test_dns_mode_https_routed_by_sni(proxy, pki):
    port = proxy.port("https_listen")
    code, body, _ = curl(proxy, "https://api.example.test/v1/dns", "--connect-to",
                         f"api.example.test:443:127.0.0.1:{port}", pki=pki, via_proxy=False)
    assert code == 200 and json.loads(body)["path"] == "/v1/dns"
    assert proxy.last_audit(path="/v1/dns")["mode"] == "https"
    code, _, rc = curl(proxy, "https://unnamed.example.test/v1/x", "--connect-to",
                       f"unnamed.example.test:443:127.0.0.1:{port}", pki=pki, via_proxy=False)
    assert code == 0 and rc != 0  # refused before TLS completes
    code, _, _ = curl(proxy, "https://api.example.test/v1/x", "-H", "Host: other.example.test", "--connect-to",
                      f"api.example.test:443:127.0.0.1:{port}", pki=pki, via_proxy=False)
    assert code == 403


def test_dns_mode_http_routed_by_host(proxy):
    port = proxy.port("http_listen")
    code, _, _ = curl(proxy, "http://api.example.test/plain/x", "--connect-to",
                      f"api.example.test:80:127.0.0.1:{port}", via_proxy=False)
    assert code == 200
    code, _, _ = curl(proxy, "http://evil.example.test/plain/x", "--connect-to",
                      f"evil.example.test:80:127.0.0.1:{port}", via_proxy=False)
    assert code == 403


def _dns_query(proxy, name, qtype=types.A, source=SCOUT, tcp=False):
    q = DNSMessage(timestamp=0, id=4242, query=True, op_code=0, authoritative_answer=False,
                     truncation=False, recursion_desired=True, recursion_available=False, reserved=0,
                     response_code=0, questions=[mdns.Question(name, qtype, 1)], answers=[],
                     authorities=[], additionals=[]).packed
    addr = ("127.0.0.1", int(proxy.cfg["dns"]["listen"].rsplit(":", 1)[1]))
    if tcp:
        with socket.create_connection(addr, 5, source_address=(source, 0)) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            size = struct.unpack("!H", s.recv(2))[0]
            data = b""
            while len(data) < size:
                data += s.recv(size - len(data))
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.settimeout(5)
            s.sendto(q, addr)
            data = s.recv(4096)
    return DNSMessage.unpack(data)


def test_dns_answers_only_allowed_names(proxy):
    ans = _dns_query(proxy, "api.example.test")
    assert ans.response_code == response_codes.NOERROR and str(ans.answers[0].ipv4_address) == "127.0.0.1"
    assert _dns_query(proxy, "api.example.test", tcp=True).answers[0].ipv4_address.exploded == "127.0.0.1"
    assert _dns_query(proxy, "evil.example.test").response_code == response_codes.REFUSED
    assert _dns_query(proxy, "api.example.test", source=STRANGER).response_code == response_codes.REFUSED
    assert _dns_query(proxy, "files.example.test", source=BUILDER).answers  # builder's own grant
    assert _dns_query(proxy, "rebind.example.test", source=BUILDER).answers  # a static record
    txt = _dns_query(proxy, "api.example.test", qtype=types.TXT)
    assert txt.answers == []  # no TXT: no data channel
    assert str(_dns_query(proxy, "localhost").answers[0].ipv4_address) == "127.0.0.1"  # passthrough


# ------------------------------------------------------------------ audit format


def test_every_audit_line_has_the_design_keys(proxy):
    from agentctl_proxy.audit import KEYS

    lines = proxy.audit()
    assert len(lines) > 20
    assert all(set(KEYS) <= set(rec) for rec in lines)
    assert {rec["action"] for rec in lines} == {"allow", "deny"}
    assert {rec["event"] for rec in lines} == {"decision", "complete"}


# -------------------------------------------------- bootstrap (last: it closes for good)


def test_bootstrap_grant_closes_after_ready(proxy, pki):
    assert curl(proxy, "https://files.example.test/boot/setup.sh", pki=pki)[0] == 200
    assert proxy.last_audit(path="/boot/setup.sh")["rule"] == "scout/bootstrap[0]"
    # another agent cannot close scout's window, and has none of its own
    assert curl(proxy, "http://agentctl-proxy.internal/v1/ready", "-X", "POST", source=BUILDER)[0] == 403
    assert curl(proxy, "https://files.example.test/boot/setup.sh", pki=pki)[0] == 200
    code, body, _ = curl(proxy, "http://agentctl-proxy.internal/v1/ready", "-X", "POST")
    assert code == 200 and json.loads(body)["bootstrap"] == "closed"
    assert proxy.last_audit(mode="control", agent="scout")["rule"] == "control/ready"
    assert curl(proxy, "https://files.example.test/boot/setup.sh", pki=pki)[0] == 403
    assert curl(proxy, "http://agentctl-proxy.internal/v1/ready", "-X", "POST")[0] == 200  # idempotent
    assert curl(proxy, "https://files.example.test/boot/setup.sh", pki=pki)[0] == 403


def test_http2_preface_over_http1_is_killed(proxy, pki, upstreams):
    """HTTP/2 by prior knowledge on a connection that negotiated HTTP/1.1: refused and
    the connection killed without an answer, as mitmproxy's DisableH2C (no longer
    loaded) did; audited; nothing reaches the upstream."""
    before = len(upstreams["tls443"].seen)
    for extra in (b"", b"Host: api.example.test\r\n"):  # refused for the Host, or for the path
        resp = raw_request(proxy, pki, "api.example.test:443", b"PRI * HTTP/2.0\r\n" + extra + b"\r\nSM\r\n\r\n")
        assert resp == b""  # killed: not even the refusal is sent
    assert len(upstreams["tls443"].seen) == before
    refused = [r for r in proxy.audit() if r["method"] == "PRI" and r["path"] == "*"]
    assert [r["action"] for r in refused] == ["deny", "deny"]
    assert {r["rejected_by"] for r in refused} == {"host mismatch", "non-canonical path"}
