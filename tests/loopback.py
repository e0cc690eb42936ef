"""Real servers on loopback that several test modules start: a free port, and an OpenSSH
sshd with its own config (keys only, root by key, nothing from the machine's config)."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)


def keygen(path: Path) -> None:
    """A new ed25519 key pair without passphrase: path and path.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(folder: Path, authorized_keys: str, extra_config: str = "",
               log: Path | None = None) -> tuple[int, subprocess.Popen]:
    """sshd -D on 127.0.0.1 with a new ed25519 host key (folder/host_key{,.pub}); returns
    its port once it accepts connections, and the process (terminate it when done).
    With `log`, what it logs (at its config's LogLevel) goes to that file."""
    keygen(folder / "host_key")
    (folder / "authorized_keys").write_text(authorized_keys)
    port = free_port()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n" + extra_config)
    with open(log or "/dev/null", "ab") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=err)
    wait_listening(port)
    return port, proc


@contextmanager
def sshd_hosts(tmp: Path, names: tuple[str, ...], extra_config: str = "AllowTcpForwarding yes\n") -> Iterator[dict]:
    """An sshd per name (a target, a jump host, ...), each logging to NAME/sshd.log, all
    letting in root with one new client key: {"key": its path, NAME: {"port", "proc",
    "pub": [type, base64] of the host key, "log"}}."""
    keygen(tmp / "client_key")
    pub = (tmp / "client_key.pub").read_text()
    servers = {}
    try:
        for name in names:
            (tmp / name).mkdir()
            port, proc = start_sshd(tmp / name, pub, extra_config, log=tmp / name / "sshd.log")
            servers[name] = {"port": port, "proc": proc, "pub": (tmp / name / "host_key.pub").read_text().split()[:2],
                             "log": tmp / name / "sshd.log"}
        yield {"key": str(tmp / "client_key"), **servers}
    finally:
        for s in servers.values():
            s["proc"].terminate()
            s["proc"].wait(timeout=5)


class Front:
    """A TCP listener on loopback that counts the connections it accepts. The first
    `close_first` are closed at once (a host whose sshd does not answer yet); the rest
    are relayed to port `to`, or closed too when there is none."""

    def __init__(self, to: int | None = None, close_first: int = 0):
        self.to, self.close_first, self.accepted = to, close_first, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.to is None or self.accepted <= self.close_first:
                conn.close()
                continue
            back = socket.create_connection(("127.0.0.1", self.to))
            for a, b in ((conn, back), (back, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


STDIO_RELAY = """
import os, select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
open_fds = [0, s.fileno()]
while s.fileno() in open_fds:
    for fd in select.select(open_fds, [], [])[0]:
        data = os.read(fd, 65536)
        if fd == 0:
            if data:
                s.sendall(data)
            else:
                s.shutdown(socket.SHUT_WR)
                open_fds.remove(0)
        elif not data:
            open_fds.remove(fd)
        else:
            while data:
                data = data[os.write(1, data):]
"""


def relay_command(folder: Path) -> str:
    """A ProxyCommand template relaying stdin/stdout to %h:%p, what `aws
    ec2-instance-connect open-tunnel` does (the relay is written to folder/relay.py)."""
    (folder / "relay.py").write_text(STDIO_RELAY)
    return f"{sys.executable} {folder / 'relay.py'} %h %p"
