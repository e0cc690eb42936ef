"""An agent's first-boot steps through the proxy (its runtime install, its ready report)
outlast the proxy's own first boot, which on Ubuntu ends in one reboot: converge's own
`through_proxy` and `ready`, run by bash against real sockets on loopback in place of the
proxy. CI once saw pip's back-off (12 retries, up to 120 s apart) outlast the lab's wait."""
from __future__ import annotations

import http.server
import re
import socket
import subprocess
import threading
import time

import pytest


def _functions(hosts, stack: str, name: str) -> tuple[str, str, int]:
    converge = hosts[stack, name].file("/usr/local/sbin/agentctl-converge")
    body = re.search(r"# BEGIN through_proxy.*?\n(.*?)# END through_proxy", converge, re.S).group(1)
    ip, port = re.search(r"/dev/tcp/([\d.]+)/(\d+)", body).groups()
    ready = re.search(r"\nready\(\) \{\n.*?\n\}\n", converge, re.S)
    return body + (ready.group(0) if ready else ""), ip, int(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bash(functions: str, ip: str, port: int, local_port: int, script: str, timeout: float = 60):
    """Run `script` after converge's functions, with the proxy's address made loopback's."""
    text = functions.replace(f"/dev/tcp/{ip}/{port}", f"/dev/tcp/127.0.0.1/{local_port}")
    text = text.replace(f"http://{ip}:{port}", f"http://127.0.0.1:{local_port}")
    return subprocess.run(["bash", "-euo", "pipefail", "-c", text + script], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def agent(hosts):
    return _functions(hosts, "example-aws", "scout")


def test_it_waits_for_the_proxy_port_before_the_first_try(agent, tmp_path):
    functions, ip, port = agent
    local = _free_port()
    tries = tmp_path / "tries"
    listener = socket.socket()

    def open_later():
        time.sleep(4)
        listener.bind(("127.0.0.1", local))
        listener.listen()
    threading.Thread(target=open_later, daemon=True).start()
    t0 = time.monotonic()
    proc = _bash(functions, ip, port, local, f"through_proxy 60 sh -c 'echo try >> {tries}'")
    listener.close()
    assert proc.returncode == 0, proc.stderr
    assert tries.read_text() == "try\n"  # never tried while the port was closed
    assert time.monotonic() - t0 >= 4


def test_a_try_the_proxy_cut_short_is_tried_again(agent, tmp_path):
    functions, ip, port = agent
    local = _free_port()
    tries = tmp_path / "tries"
    with socket.create_server(("127.0.0.1", local)):
        # fails the first time (the proxy went down for its reboot mid-install), then succeeds
        proc = _bash(functions, ip, port, local,
                     f"through_proxy 60 sh -c 'echo try >> {tries}; [ $(wc -l < {tries}) -ge 2 ]'")
    assert proc.returncode == 0, proc.stderr
    assert tries.read_text() == "try\ntry\n"


def test_it_gives_up_at_its_deadline(agent, tmp_path):
    functions, ip, port = agent
    local = _free_port()  # nothing listens
    t0 = time.monotonic()
    proc = _bash(functions, ip, port, local, f"through_proxy 4 touch {tmp_path / 'ran'}; echo never", timeout=30)
    assert proc.returncode == 1 and "never" not in proc.stdout
    assert not (tmp_path / "ran").exists()
    assert time.monotonic() - t0 < 15  # the deadline, one sleep and a connect past it at most


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Answers the ready report as the proxy would, from a script of status codes."""
    codes: list[int] = []
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(self.path)
        self.send_response(type(self).codes.pop(0))
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("codes,ok", [([503, 200], True), ([502, 403], True), ([404] * 10, False)])
def test_the_ready_report_is_retried_until_the_proxy_answers_it(agent, codes, ok):
    """200: closed now; 403: this host has no window (closed by an earlier run); anything
    else (the proxy restarting, a 5xx) is asked again until the deadline."""
    functions, ip, port = agent
    assert "ready()" in functions  # example-aws's scout installs Hermes under bootstrap grants
    _Proxy.codes, _Proxy.seen = list(codes), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = _bash(functions, ip, port, server.server_address[1], "through_proxy 8 ready", timeout=60)
    finally:
        server.shutdown()
    assert (proc.returncode == 0) == ok, proc.stderr
    assert _Proxy.seen[0] == "http://agentctl-proxy.internal/v1/ready"
    assert len(_Proxy.seen) == 2 if ok else len(_Proxy.seen) >= 2  # asked again, then gave up
