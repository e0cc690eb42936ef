"""The audit file decides: a decision that cannot be written is a refusal, and an
allowed decision is on disk before the exchange starts, so a proxy killed mid-stream
still leaves it behind. Each test runs its own proxy (one is killed, one writes to a
full disk)."""

from __future__ import annotations

import json
import signal

from conftest import SCOUT, UP_OK, base_config, connect_tunnel, free_port, status_of
from test_e2e_battery import curl

RECORDS = [{"name": "api.example.test", "type": "A", "value": UP_OK}]
RULES = [{"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/*"]},
         {"host": "api.example.test", "methods": ["GET"], "paths": ["/plain/*"], "ports": [80]}]


def _config(pki, work, audit_path=None):
    cfg = base_config(pki, work, https_listen=f"127.0.0.1:{free_port()}")
    cfg["dns"] = {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1", "records": RECORDS}
    cfg["transforms"] = [{"name": "allowlist", "config": {"rules": RULES}}]
    if audit_path:
        cfg["log"]["audit_path"] = audit_path
    return cfg


def test_audit_on_a_full_disk_denies_everything(pki, upstreams, start_proxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("fulldisk")
    p = start_proxy(_config(pki, work, audit_path="/dev/full"), workdir=work)
    seen = {k: len(upstreams[k].seen) for k in ("tls443", "plain80")}
    # the tunnel decision cannot be written: no 200, so no TLS, no request
    head = connect_tunnel(p, SCOUT, "api.example.test:443", pki["ca_cert"])
    assert isinstance(head, bytes) and status_of(head) == 503
    # DNS-mode HTTPS and the plain proxy: each request's decision fails the same way
    port = p.port("https_listen")
    code, body, _ = curl(p, "https://api.example.test/v1/x", "--connect-to",
                         f"api.example.test:443:127.0.0.1:{port}", pki=pki, via_proxy=False)
    assert code == 503 and "audit" in body
    code, body, _ = curl(p, "http://api.example.test/plain/x")
    assert code == 503 and "audit" in body
    assert {k: len(upstreams[k].seen) for k in seen} == seen  # nothing reached an upstream
    log = p.logs()
    assert "audit write failed (No space left on device)" in log and "Traceback" not in log


def test_decision_line_survives_sigkill_mid_stream(pki, upstreams, start_proxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("sigkill")
    p = start_proxy(_config(pki, work), workdir=work)
    sock = connect_tunnel(p, SCOUT, "api.example.test:443", pki["ca_cert"])
    with sock:
        sock.settimeout(5)
        sock.sendall(b"GET /v1/sse HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        got = b""
        while b"event 0" not in got:  # the upstream now pauses 1.5 s before the next event
            got += sock.recv(4096)
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(5)
    lines = [json.loads(x) for x in p.audit_path.read_text().splitlines()]
    sse = [r for r in lines if r["path"] == "/v1/sse"]
    assert [r["event"] for r in sse] == ["decision"]  # the stream never completed
    assert sse[0]["action"] == "allow" and sse[0]["agent"] == "*"  # no agents: section
    assert sse[0]["rule"] == "system/allowlist[0]" and sse[0]["remote_addr"] == SCOUT


def test_concurrent_requests_pair_by_request_id_and_name_their_connect(pki, upstreams, start_proxy,
                                                                          tmp_path_factory):
    """One agent, one path, requests in flight at once on several tunnels: each request's
    decision and complete lines share a request_id (and nothing else does), and each names
    its connection and the CONNECT that opened its tunnel (docs/audit.md)."""
    import threading
    import time

    from conftest import http_exchange

    work = tmp_path_factory.mktemp("ids")
    p = start_proxy(_config(pki, work), workdir=work)
    tunnels, per_tunnel = 6, 3
    barrier = threading.Barrier(tunnels)
    statuses: list[int] = []

    def client():
        sock = connect_tunnel(p, SCOUT, "api.example.test:443", pki["ca_cert"])
        with sock:
            barrier.wait()
            for i in range(per_tunnel):
                close = "Connection: close\r\n" if i == per_tunnel - 1 else ""
                statuses.append(status_of(http_exchange(
                    sock, f"GET /v1/same HTTP/1.1\r\nHost: api.example.test\r\n{close}\r\n".encode())))

    threads = [threading.Thread(target=client) for _ in range(tunnels)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * tunnels * per_tunnel
    deadline = time.monotonic() + 10  # a complete line is written once the response is sent
    while True:
        lines = [json.loads(x) for x in p.audit_path.read_text().splitlines()]
        if sum(r["event"] == "complete" for r in lines) >= tunnels * per_tunnel or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert all(r["request_id"] for r in lines)
    connects = {r["conn_id"]: r for r in lines if r["method"] == "CONNECT"}
    assert len(connects) == tunnels and all(r["connect_id"] is None for r in connects.values())
    gets = [r for r in lines if r["path"] == "/v1/same"]
    by_id: dict[str, list[dict]] = {}
    for r in gets:
        by_id.setdefault(r["request_id"], []).append(r)
    assert len(by_id) == tunnels * per_tunnel
    for rid, pair in by_id.items():
        assert sorted(r["event"] for r in pair) == ["complete", "decision"], pair
        decision, complete = sorted(pair, key=lambda r: r["event"] != "decision")
        assert decision["action"] == "allow" and complete["status_code"] == 200
        assert decision["conn_id"] == complete["conn_id"] and decision["connect_id"] == complete["connect_id"]
        # the CONNECT line that carried it: same connection, its request_id referenced
        assert connects[decision["conn_id"]]["request_id"] == decision["connect_id"]
    per_conn = [sum(1 for r in gets if r["conn_id"] == c and r["event"] == "decision") for c in connects]
    assert per_conn == [per_tunnel] * tunnels


def test_a_refusal_inside_a_tunnel_names_its_connect(pki, upstreams, start_proxy, tmp_path_factory):
    """A connection-level refusal after the CONNECT (here an SNI that is not the CONNECT
    target) has an id of its own and names the CONNECT's request_id and connection."""
    import ssl
    import time

    work = tmp_path_factory.mktemp("ids-refusal")
    p = start_proxy(_config(pki, work), workdir=work)
    try:
        sock = connect_tunnel(p, SCOUT, "api.example.test:443", pki["ca_cert"], sni="other.example.test")
        sock.close()
    except (ssl.SSLError, OSError):
        pass  # refused at the ClientHello: the connection is closed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in p.audit_path.read_text().splitlines()]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    connect, refusal = lines[0], lines[1]
    assert connect["method"] == "CONNECT" and connect["action"] == "allow"
    assert refusal["rejected_by"] == "SNI differs from CONNECT target"
    assert refusal["connect_id"] == connect["request_id"] and refusal["conn_id"] == connect["conn_id"]
    assert refusal["request_id"] not in (None, connect["request_id"])
