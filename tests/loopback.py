"""Real servers on loopback that several test modules start: a free port, and an OpenSSH
sshd with its own config (keys only, root by key, nothing from the machine's config)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

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


def start_sshd(folder: Path, authorized_keys: str, extra_config: str = "") -> tuple[int, subprocess.Popen]:
    """sshd -D on 127.0.0.1 with a new ed25519 host key (folder/host_key{,.pub}); returns
    its port once it accepts connections, and the process (terminate it when done)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / "host_key")], check=True)
    (folder / "authorized_keys").write_text(authorized_keys)
    port = free_port()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder / 'host_key'}\nPidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n" + extra_config)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.DEVNULL)
    wait_listening(port)
    return port, proc
