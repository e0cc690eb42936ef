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
