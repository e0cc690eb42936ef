"""Run a command inside a lab VM through QEMU's guest agent (qemu-guest-agent).

The guest agent is to a VM what nsenter is to a container: root on this machine
reaches root in the guest over a virtio serial port (a unix socket on this side, a
character device only root can open on the other), with no network path, so the
lab's own checks (lynis, the escape probe, cloud-init's status) never depend on the
network they are checking. Protocol: QEMU's qga-qapi-schema.json (qemu 7.2), one
JSON object per line; `guest-exec` starts a process and `guest-exec-status` collects
its exit code and base64 output once it has exited.
"""
from __future__ import annotations

import base64
import fcntl
import json
import secrets
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agentctl.errors import AgentctlError


class GuestAgentError(AgentctlError):
    exit_code = 1


@contextmanager
def _session(sock_path: Path, timeout: float) -> Iterator:
    """One client at a time (QEMU's socket chardev serves one), synced so that a reply
    left over from an earlier, interrupted client is never taken for ours."""
    with open(sock_path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(sock_path, timeout)
        try:
            sync = secrets.randbelow(2**31)
            _send(sock, "guest-sync", {"id": sync})
            reader = sock.makefile("rb")
            while _read(reader, sock_path).get("return") != sync:
                pass
            yield sock, reader
        finally:
            sock.close()


def _connect(sock_path: Path, timeout: float) -> socket.socket:
    """Connect, retrying a refusal for a moment: a listener serves one client and
    takes a moment to listen again after the previous one left."""
    deadline = time.monotonic() + min(timeout, 3)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(sock_path))
            return sock
        except OSError as exc:
            sock.close()
            if not isinstance(exc, ConnectionRefusedError) or time.monotonic() > deadline:
                raise GuestAgentError(f"{sock_path}: {exc.strerror or exc}") from None
            time.sleep(0.05)


def _send(sock: socket.socket, command: str, arguments: dict) -> None:
    sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")


def _read(reader, sock_path: Path) -> dict:
    try:
        line = reader.readline()
    except (TimeoutError, socket.timeout):
        raise GuestAgentError(f"{sock_path}: the guest agent does not answer") from None
    if not line:
        raise GuestAgentError(f"{sock_path}: the guest agent closed the connection")
    try:
        return json.loads(line.lstrip(b"\xff"))
    except ValueError:
        return {}


def _call(sock_path: Path, command: str, arguments: dict, timeout: float = 10) -> dict:
    with _session(sock_path, timeout) as (sock, reader):
        _send(sock, command, arguments)
        reply = _read(reader, sock_path)
    if "error" in reply:
        raise GuestAgentError(f"{sock_path}: {command}: {reply['error'].get('desc', reply['error'])}")
    return reply.get("return", {})


def run(sock_path: Path, argv: list[str], timeout: float = 120, input: str | None = None,
        connect_timeout: float = 10) -> subprocess.CompletedProcess:
    """Run argv in the guest as root; like subprocess.run(capture_output=True, text=True).
    The guest's own `timeout` ends a command that outlasts ours (the guest agent cannot
    kill what it started), and subprocess.TimeoutExpired is raised here as for a local one."""
    args = {"path": "/usr/bin/timeout", "arg": ["-k", "5", str(int(timeout) + 1), *argv], "capture-output": True}
    if input is not None:
        args["input-data"] = base64.b64encode(input.encode()).decode()
    pid = _call(sock_path, "guest-exec", args, connect_timeout)["pid"]
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        status = _call(sock_path, "guest-exec-status", {"pid": pid}, connect_timeout)
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(argv, timeout)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    code = status.get("exitcode", 128 + status.get("signal", 0))
    return subprocess.CompletedProcess(argv, code, _text(status.get("out-data")), _text(status.get("err-data")))


def _text(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""
