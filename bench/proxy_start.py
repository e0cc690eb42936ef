"""Starting agentctl-proxy for a bench (proxy_bench.py, proxy_flood_bench.py): this
tree's code, or a git revision's (extract) to compare against."""

from __future__ import annotations

import io
import os
import resource
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def start_proxy(config: Path, port: int, pythonpath: str | None = None,
                address_space: int | None = None) -> subprocess.Popen:
    """`agentctl-proxy run` on `config`, returned once it listens on `port`.

    pythonpath: another revision's proxy code (extract). address_space: a cap on the
    process's address space (RLIMIT_AS, bytes), so a proxy without bounds cannot take
    the shared machine with it."""
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    p = subprocess.Popen([sys.executable, "-m", "agentctl_proxy", "run", "--config", str(config)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         preexec_fn=limit if address_space else None)
    try:
        wait_port(port)
    except BaseException:
        p.kill()
        p.wait()
        raise
    return p


def extract(rev: str, into: Path) -> str:
    """The proxy code of git revision `rev` under `into`: a PYTHONPATH for start_proxy."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "proxy/agentctl_proxy"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        t.extractall(into, filter="data")
    return str(into / "proxy")
