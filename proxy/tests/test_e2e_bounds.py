"""Bounds on what an agent controls (issue 16), against a real proxy process.

Request heads (HTTP/1 and HTTP/2), the audit line and the audit budget, refusals that
mitmproxy answers itself, malformed DNS, connections per agent, the CA key copy left in
/dev/shm by a killed proxy. Each refusal must leave exactly one audit line, cut to the
audit's bounds.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from conftest import (BUILDER, SCOUT, STRANGER, UP_OK, base_config, connect_tunnel, free_port, h2_exchange,
                      http_exchange, status_of)

from agentctl_proxy import audit, bounds, runner

BURST = 40


@pytest.fixture(scope="module")
def proxy(pki, upstreams, start_proxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("bounds")
    cfg = base_config(pki, work, https_listen=f"127.0.0.1:{free_port()}")
    cfg["dns"] = {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1",
                  "records": [{"name": "api.example.test", "type": "A", "value": UP_OK}]}
    cfg["log"]["refusal_burst"] = BURST
    cfg["log"]["refusal_rate"] = 0.5
    cfg["agents"] = [
        {"name": "scout", "sources": [f"{SCOUT}/32"], "transforms": [{"name": "allowlist", "config": {"rules": [
            {"host": "api.example.test", "methods": ["GET", "POST"], "paths": ["/v1/*"]}]}}]},
        {"name": "builder", "sources": [f"{BUILDER}/32"], "transforms": [{"name": "allowlist", "config": {
            "rules": [{"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/*"]}]}}]},
    ]
    return start_proxy(cfg, workdir=work)


def _lines_since(proxy, n: int, wait: float = 0.4) -> list[dict]:
    """The lines after the first n, but the CONNECT decisions that opened a tunnel."""
    time.sleep(wait)  # lines are written as the refusal happens; a second one would follow at once
    return [r for r in proxy.audit()[n:] if r["method"] != "CONNECT"]


def _plain(proxy, source=SCOUT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port("tunnel_listen")), 5, source_address=(source, 0))


def _h2(proxy, pki):
    sock = connect_tunnel(proxy, SCOUT, "api.example.test:443", pki["ca_cert"], alpn=["h2"])
    assert sock.selected_alpn_protocol() == "h2"
    return sock


def _send_then_read(sock, data: bytes) -> bytes:
    """Send what the proxy takes (it may close half way), then read its answer."""
    try:
        sock.sendall(data)
    except OSError:
        pass
    sock.settimeout(3)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def _get(path, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: api.example.test\r\n{extra}Connection: close\r\n\r\n".encode()


# ------------------------------------------------------------------ request heads


@pytest.mark.parametrize("where", ["tunnel-tls", "plain-proxy"])
def test_a_4_mib_path_is_refused_with_one_bounded_audit_line(proxy, pki, upstreams, where):
    before, size = len(proxy.audit()), proxy.audit_path.stat().st_size
    req = _get("/v1/" + "A" * (4 << 20))
    if where == "tunnel-tls":
        sock = connect_tunnel(proxy, SCOUT, "api.example.test:443", pki["ca_cert"])
    else:
        sock = _plain(proxy)
    with sock:
        resp = _send_then_read(sock, req)
    assert status_of(resp) in (431, None)  # None: the close reset the connection before we read it
    new = _lines_since(proxy, before)
    assert [r["rejected_by"] for r in new] == ["HTTP/1 request head too large"]
    assert proxy.audit_path.stat().st_size - size <= audit.MAX_LINE_BYTES


@pytest.mark.parametrize("req,status,rejected_by", [
    (_get("/v1/" + "a" * bounds.MAX_TARGET_BYTES), 414, "request-target too long"),
    (_get("/v1/x", "".join(f"X-{i}: v\r\n" for i in range(bounds.MAX_HEADER_COUNT))), 431, "too many header fields"),
    (_get("/v1/x", "X-Big: " + "v" * (bounds.MAX_HEAD_BYTES - 200) + "\r\n"
          "X-Big2: " + "v" * 400 + "\r\n"), 431, "request head too large"),
])
def test_complete_http1_heads_over_a_bound_are_refused_and_audited(proxy, pki, upstreams, req, status, rejected_by):
    seen, before = len(upstreams["tls443"].seen), len(proxy.audit())
    with connect_tunnel(proxy, SCOUT, "api.example.test:443", pki["ca_cert"]) as sock:
        resp = http_exchange(sock, req)
    assert status_of(resp) == status
    new = _lines_since(proxy, before)
    assert [(r["action"], r["rejected_by"], r["status_code"]) for r in new] == [("deny", rejected_by, status)]
    assert len(upstreams["tls443"].seen) == seen


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_http1_head_that_never_ends_costs_bounded_memory(proxy):
    """mitmproxy buffers an unterminated head without limit ("FIXME: protect against
    header size DoS"): 4 connections x 16 MiB grew the proxy by about as much."""
    rss, before = _rss_kib(proxy.proc.pid), len(proxy.audit())
    chunk = b"X-Filler: " + b"f" * 65000 + b"\r\n"
    answers = []
    for _ in range(4):
        with _plain(proxy) as s:
            s.sendall(b"GET http://api.example.test/v1/x HTTP/1.1\r\nHost: api.example.test\r\n")
            try:
                for _ in range((16 << 20) // len(chunk)):
                    s.sendall(chunk)
            except OSError:
                pass  # closed by the proxy: what we want
            s.settimeout(3)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
    grown = _rss_kib(proxy.proc.pid) - rss
    assert grown < 16 * 1024, f"proxy grew by {grown} KiB"
    assert all(status_of(a) in (431, None) for a in answers)  # None: reset with our data unread
    new = _lines_since(proxy, before)
    assert [r["rejected_by"] for r in new] == ["HTTP/1 request head too large"] * 4


@pytest.mark.parametrize("headers,rejected_by", [
    ([(":path", "/v1/" + "a" * bounds.MAX_TARGET_BYTES)], "request-target too long"),
    ([(":path", "/v1/x")] + [(f"x-{i}", "v") for i in range(bounds.MAX_HEADER_COUNT + 1)], "too many header fields"),
    ([(":path", "/v1/x"), ("x-big", "v" * (bounds.MAX_HEAD_BYTES + 10))], "request head too large"),
    ([(":path", "/v1/x"), ("x-huge", "v" * (70 * 1024))], "HTTP/2 protocol error"),  # past h2's own 64 KiB
])
def test_http2_heads_over_a_bound_are_refused_and_audited(proxy, pki, upstreams, headers, rejected_by):
    seen, before = len(upstreams["tls443"].seen), len(proxy.audit())
    head = [(":method", "GET"), (":scheme", "https"), (":authority", "api.example.test")] + headers
    with _h2(proxy, pki) as sock:
        status, _ = h2_exchange(sock, head)
    new = _lines_since(proxy, before)
    assert [(r["action"], r["rejected_by"]) for r in new] == [("deny", rejected_by)]
    assert status in (414, 431, None)
    assert len(upstreams["tls443"].seen) == seen
    assert all(len(audit.encode_line(tuple(r.values()))) <= audit.MAX_LINE_BYTES for r in new)


def test_http2_streams_per_connection_are_bounded(proxy, pki):
    """Each open stream may hold a request body: h2's default of 100 per connection is
    cut to bounds.MAX_H2_STREAMS; a client that opens more loses the connection, audited."""
    before = len(proxy.audit())
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    for i in range(bounds.MAX_H2_STREAMS + 1):  # sent before the proxy's SETTINGS are read
        conn.send_headers(1 + 2 * i, [(":method", "POST"), (":scheme", "https"), (":path", f"/v1/s{i}"),
                                      (":authority", "api.example.test")])
    with _h2(proxy, pki) as sock:
        sock.sendall(conn.data_to_send())
        sock.settimeout(3)
        ended = False
        try:
            while data := sock.recv(65536):
                ended = ended or any(isinstance(e, h2.events.ConnectionTerminated) for e in conn.receive_data(data))
        except OSError:
            pass
    assert ended
    new = _lines_since(proxy, before)
    assert [r["rejected_by"] for r in new if r["event"] == "decision" and r["action"] == "deny"][:1] == \
        ["HTTP/2 protocol error"]


# ------------------------------------------------------- refusals mitmproxy makes itself


@pytest.mark.parametrize("raw,method", [
    (b"GET /v1/x HTTP/1.1\r\nX-A: b\r\n\r\n", "GET"),  # origin-form, no Host: "destination unknown"
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "PRI"),  # an h2 preface on the explicit proxy
])
def test_mitmproxys_own_400_on_the_tunnel_listener_is_audited_once(proxy, raw, method):
    before = len(proxy.audit())
    with _plain(proxy) as s:
        resp = http_exchange(s, raw)
    assert status_of(resp) == 400
    new = _lines_since(proxy, before)
    assert len(new) == 1 and new[0]["action"] == "deny" and new[0]["method"] == method
    assert new[0]["rejected_by"].startswith("mitmproxy: ") and new[0]["status_code"] == 400
    assert new[0]["agent"] == "scout"


def test_malformed_dns_packets_are_audited(proxy):
    before = len(proxy.audit())
    addr = ("127.0.0.1", int(proxy.cfg["dns"]["listen"].rsplit(":", 1)[1]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((SCOUT, 0))
        s.settimeout(0.5)
        s.sendto(b"\x00\x01garbage", addr)
        with pytest.raises(socket.timeout):
            s.recv(512)  # no answer to garbage
    new = _lines_since(proxy, before)
    assert [(r["mode"], r["agent"], r["rejected_by"]) for r in new] == [("dns", "scout", "malformed DNS packet")]


# -------------------------------------------------------------------- audit budget


def test_a_refusal_flood_is_cut_to_the_budget_then_summarised(proxy):
    """builder floods refusals: about BURST lines, then one summary line with the count;
    scout's refusals are still written one by one meanwhile (budgets are per agent)."""
    before = len(proxy.audit())
    sent = 200
    for i in range(sent):
        with _plain(proxy, BUILDER) as s:
            assert status_of(http_exchange(s, _get(f"http://api.example.test/v2/flood{i}"))) == 403
    with _plain(proxy, SCOUT) as s:
        http_exchange(s, _get("http://api.example.test/v2/scout-still-written"))
    time.sleep(audit.SUMMARY_SECONDS + 1)
    new = proxy.audit()[before:]
    flood = [r for r in new if r["agent"] == "builder" and r["event"] == "decision"]
    summaries = [r for r in new if r["agent"] == "builder" and r["event"] == "suppressed"]
    assert BURST <= len(flood) < BURST + 20  # the bucket refills at 0.5/s meanwhile
    assert len(summaries) == 1
    assert summaries[0]["rejected_by"].startswith(f"audit budget: {sent - len(flood)} more lines")
    assert any(r["path"] == "/v2/scout-still-written" for r in new if r["agent"] == "scout")


# ----------------------------------------------------------------- connections


def test_connections_per_agent_are_limited_and_the_refusal_audited(proxy):
    before = len(proxy.audit())
    held = [_plain(proxy, STRANGER) for _ in range(bounds.MAX_CLIENT_CONNECTIONS)]
    try:
        time.sleep(0.3)
        extra = _plain(proxy, STRANGER)
        extra.settimeout(3)
        assert extra.recv(1) == b""  # closed at once
        extra.close()
        new = _lines_since(proxy, before)
        assert [r["rejected_by"] for r in new] == [f"over {bounds.MAX_CLIENT_CONNECTIONS} open connections"]
        with _plain(proxy, SCOUT) as s:  # another agent is not affected
            assert status_of(http_exchange(s, _get("http://api.example.test/v1/other-agent"))) == 200
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    with _plain(proxy, STRANGER) as s:  # freed again: refused by policy now, not by count
        assert status_of(http_exchange(s, _get("http://api.example.test/v1/x"))) == 403


# ------------------------------------------------------------ the CA key copy in /dev/shm


def _confdirs(pid: int) -> list[Path]:
    base = Path("/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp")
    return [d for d in base.glob(runner.CONFDIR_PREFIX + "*")
            if (d / "owner").exists() and (d / "owner").read_text().split()[0] == str(pid)]


def test_a_killed_proxys_key_copy_is_removed_at_the_next_start(pki, upstreams, start_proxy, tmp_path):
    first = start_proxy(base_config(pki, tmp_path / "a"), workdir=_mk(tmp_path / "a"))
    left = _confdirs(first.proc.pid)
    assert len(left) == 1 and (left[0] / "mitmproxy-ca.pem").exists()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    assert left[0].exists()  # nothing runs after SIGKILL
    second = start_proxy(base_config(pki, tmp_path / "b"), workdir=_mk(tmp_path / "b"))
    assert not left[0].exists()
    assert len(_confdirs(second.proc.pid)) == 1  # its own, while it runs


def _mk(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_stale_confdir_rules(tmp_path):
    """Only ours, and only those whose owner process is gone (or, with no owner file,
    a minute old); a live proxy's directory is kept."""
    live = tmp_path / f"{runner.CONFDIR_PREFIX}live"
    dead = tmp_path / f"{runner.CONFDIR_PREFIX}dead"
    fresh = tmp_path / f"{runner.CONFDIR_PREFIX}fresh"
    old = tmp_path / f"{runner.CONFDIR_PREFIX}old"
    other = tmp_path / "other-dir"
    for d in (live, dead, fresh, old, other):
        d.mkdir()
    (live / "owner").write_text(runner._process_id(os.getpid()) + "\n")
    (dead / "owner").write_text(f"{os.getpid()} 1\n")  # our pid, another start time: reused pid
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert sorted(runner.remove_stale_confdirs(str(tmp_path))) == sorted([dead, old])
    assert live.exists() and fresh.exists() and other.exists()
