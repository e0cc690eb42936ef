"""Real processes on loopback: TLS upstreams (trustme), the proxy as a subprocess.

Addresses: upstreams live on 127.0.0.2 (allowed) and 127.0.0.3 (in the tests'
upstream_deny_cidrs); agents connect from 127.0.0.11 (scout) and 127.0.0.12
(builder); 127.0.0.1 is a client that belongs to no agent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from upstream import RawUpstream, Upstream, free_port  # noqa: E402

from agentctl_proxy.ca import init_ca  # noqa: E402

UP_OK, UP_DENIED = "127.0.0.2", "127.0.0.3"
# raw, byte-logging upstreams (upstream.RawUpstream): HTTP/1.1 only, and h2 + HTTP/1.1
UP_H1, UP_H2 = "127.0.0.4", "127.0.0.5"
SCOUT, BUILDER, STRANGER = "127.0.0.11", "127.0.0.12", "127.0.0.1"
TEST_DENY = ["0.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "127.0.0.1/32", "127.0.0.3/32", "::1/128"]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    up_ca = trustme.CA()
    up_ca.cert_pem.write_to_path(str(d / "upstream-ca.pem"))
    leaf = up_ca.issue_cert("api.example.test", "files.example.test", "other.example.test",
                            "rebind.example.test", "imds.example.test", "h1.example.test", "h2.example.test",
                            "127.0.0.2", "127.0.0.3")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(d / "upstream.pem"))
    cert, key = init_ca(d / "proxy-ca")
    return {"dir": d, "upstream_ca": str(d / "upstream-ca.pem"), "upstream_pem": str(d / "upstream.pem"),
            "ca_cert": str(cert), "ca_key": str(key)}


@pytest.fixture(scope="session")
def upstreams(pki):
    servers = {
        "tls443": Upstream(UP_OK, 443, pki["upstream_pem"]),
        "tls8443": Upstream(UP_OK, 8443, pki["upstream_pem"]),
        "plain80": Upstream(UP_OK, 80),
        "denied443": Upstream(UP_DENIED, 443, pki["upstream_pem"]),
    }
    yield servers
    for s in servers.values():
        s.close()


@pytest.fixture(scope="session")
def raw_upstreams(pki):
    """HTTP/1.1-only and h2-capable upstreams that log every byte (the framing tests)."""
    servers = {"h1": RawUpstream(UP_H1, 443, pki["upstream_pem"], ["http/1.1"]),
               "h2": RawUpstream(UP_H2, 443, pki["upstream_pem"], ["h2", "http/1.1"])}
    yield servers
    for s in servers.values():
        s.close()


class ProxyProc:
    def __init__(self, workdir: Path, cfg: dict, env: dict | None = None) -> None:
        self.workdir = workdir
        self.cfg = cfg
        self.config_path = workdir / "proxy.yaml"
        self.audit_path = Path(cfg["log"]["audit_path"])
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log = open(workdir / "proxy.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentctl_proxy", "run", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self._wait_healthy()

    def port(self, key: str) -> int:
        return int(self.cfg["proxy"][key].rsplit(":", 1)[1])

    @property
    def tunnel(self) -> str:
        return f"http://127.0.0.1:{self.port('tunnel_listen')}"

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port("health_listen")), 0.5) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    if b"200 OK" in s.recv(4096):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"proxy did not become healthy: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return (self.workdir / "proxy.log").read_text()

    def audit(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def last_audit(self, **match) -> dict:
        deadline = time.monotonic() + 3
        while True:
            for rec in reversed(self.audit()):
                if all(rec.get(k) == v for k, v in match.items()):
                    return rec
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit line matching {match}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def base_config(pki, workdir: Path, **proxy_extra) -> dict:
    return {
        "proxy": {
            "tunnel_listen": f"127.0.0.1:{free_port()}",
            "health_listen": f"127.0.0.1:{free_port()}",
            "upstream_deny_cidrs": TEST_DENY,
            **proxy_extra,
        },
        "tls": {"ca_cert": pki["ca_cert"], "ca_key": pki["ca_key"], "upstream_ca_bundle": pki["upstream_ca"]},
        "log": {"audit_path": str(workdir / "audit.jsonl")},
    }


@pytest.fixture(scope="module")
def start_proxy(tmp_path_factory):
    procs: list[ProxyProc] = []

    def start(cfg: dict, env: dict | None = None, workdir: Path | None = None) -> ProxyProc:
        p = ProxyProc(workdir or tmp_path_factory.mktemp("proxy"), cfg, env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def client_tls_context(ca_cert: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def connect_tunnel(proxy: ProxyProc, source: str, target: str, ca_cert: str,
                   sni: str | None = None, alpn: list[str] | None = None) -> ssl.SSLSocket | bytes:
    """CONNECT through the tunnel listener from `source`; the TLS socket, or the refusal bytes."""
    s = socket.create_connection(("127.0.0.1", proxy.port("tunnel_listen")), 5, source_address=(source, 0))
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        s.close()
        return head
    host = sni if sni is not None else target.rsplit(":", 1)[0]
    return client_tls_context(ca_cert, alpn).wrap_socket(s, server_hostname=host)


def http_exchange(sock, request: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the peer closes or a complete response arrived."""
    sock.settimeout(timeout)
    sock.sendall(request)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                        return data
    except (socket.timeout, ConnectionError, ssl.SSLError):
        pass
    return data


def status_of(response: bytes) -> int | None:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def h2_exchange(sock, headers: list[tuple[str, str]], timeout: float = 5, body: bytes | None = None,
                trailers: list[tuple[str, str]] | None = None) -> tuple[int | None, str]:
    """One HTTP/2 request with exactly these headers (no client-side validation), then
    DATA with `body` and a trailing HEADERS frame with `trailers` if given;
    (status or None, how it ended: "ended", "reset", "goaway", "closed" or "error")."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=body is None and trailers is None)
    if body is not None:
        conn.send_data(1, body, end_stream=trailers is None)
    if trailers is not None:
        conn.send_headers(1, trailers, end_stream=True)
    sock.settimeout(timeout)
    sock.sendall(conn.data_to_send())
    status = None
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return status, "closed"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.StreamEnded):
                    return status, "ended"
                elif isinstance(ev, h2.events.StreamReset):
                    return status, "reset"
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return status, "goaway"
            if out := conn.data_to_send():
                sock.sendall(out)
    except (socket.timeout, ssl.SSLError, ConnectionError):
        return status, "error"


@pytest.fixture
def mitm_patched():
    """internals.install() for one test, then mitmproxy exactly as it was."""
    from agentctl_proxy import internals

    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in internals.PATCHES]
    limit = internals.LIMITS.request
    yield internals.install
    internals.LIMITS.request = limit
    for cls, name, original in saved:
        if original is None:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, original)
