"""SSH to an agent host as `admin` for snapshot-upgrade, host key verified, never accepted.

paramiko's SSHClient with RejectPolicy (paramiko/client.py: a key not in the loaded
host keys raises SSHException; a different key for a known name raises
BadHostKeyException), over a known_hosts file kept in the stack's local state,
`.agentctl/<stack>/known_hosts`. Every failure to reach or trust the host is bad input
for the command (exit 2, one line, nothing snapshotted yet). This is the only module
of snapshot-upgrade that opens SSH, so it can later take its host keys from the
project's host-key pinning instead.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from agentctl.errors import ConfigError


def known_hosts_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / ".agentctl" / stack / "known_hosts"


@dataclass
class Result:
    rc: int
    out: str
    err: str


class _NotYet(Exception):
    """The host did not answer (yet): `error` is what to say if it never does."""

    def __init__(self, error: ConfigError):
        self.error = error


class AdminSsh:
    def __init__(self, host: str, address: str, known_hosts: Path, key_file: Path | None = None, port: int = 22,
                 user: str = "admin", timeout: float = 15):
        self.host, self.address, self.port, self.user = host, address, port, user
        self.known_hosts, self.key_file, self.timeout = Path(known_hosts), key_file, timeout
        self.client: paramiko.SSHClient | None = None
        # What carries the connection when the address is not directly reachable (the
        # lab: a relay in the lab's admin namespace, paramiko.ProxyCommand).
        self.sock_factory = None
        self.patience = 0.0  # seconds to keep trying a host that does not answer yet

    def patient(self, seconds: float) -> "AdminSsh":
        """Keep trying for `seconds` while the host does not answer yet (just booted or
        restored: no listener, or no banner yet). A changed or unknown host key and a
        refused login fail at once, as ever."""
        self.patience = seconds
        return self

    def _bad(self, problem: str, expected: str) -> ConfigError:
        return ConfigError("--host", self.host, problem, expected)

    def connect(self) -> "AdminSsh":
        deadline = time.monotonic() + self.patience
        while True:
            try:
                return self._connect()
            except _NotYet as exc:
                if time.monotonic() >= deadline:
                    raise exc.error from None
                time.sleep(3)

    def _connect(self) -> "AdminSsh":
        if not self.known_hosts.is_file():
            raise self._bad(f"no pinned host keys ({self.known_hosts} does not exist)",
                            "the host's key in that known_hosts file")
        pkey = None
        if self.key_file is not None:
            try:
                pkey = paramiko.PKey.from_path(self.key_file)  # any key type, by its own header
            except (OSError, paramiko.SSHException) as exc:
                raise ConfigError("--ssh-key", str(self.key_file), f"cannot be read ({exc})",
                                  "an unencrypted private key file") from None
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.address, port=self.port, username=self.user, timeout=self.timeout,
                           banner_timeout=self.timeout, auth_timeout=self.timeout,
                           pkey=pkey, sock=self.sock_factory() if self.sock_factory else None,
                           allow_agent=self.key_file is None, look_for_keys=self.key_file is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._bad(f"the host key of {self.address} changed (it offers {exc.key.get_name()} "
                            f"{exc.key.fingerprint}, {self.known_hosts} pins {exc.expected_key.fingerprint})",
                            "the pinned key; if the host was really rebuilt, re-pin it deliberately") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise self._bad(f"{self.user}@{self.address} refused our key ({exc})", "an admin key the host accepts") from None
        except paramiko.SSHException as exc:
            client.close()
            # paramiko/transport.py: "Error reading SSH protocol banner" (a listener, or the
            # lab's relay, that closes before sshd speaks: no sshd there, or not yet);
            # RejectPolicy's "not found in known_hosts" is never retried
            if "banner" in str(exc):
                raise _NotYet(self._bad(f"{self.address}:{self.port} does not answer SSH ({exc})",
                                        "a host that answers SSH")) from None
            raise self._bad(f"{self.address}: {exc}", f"its key pinned in {self.known_hosts}") from None
        except (OSError, socket.timeout) as exc:
            client.close()
            raise _NotYet(self._bad(f"{self.address}:{self.port} is unreachable ({exc})",
                                    "a host that answers SSH")) from None
        self.client = client
        return self

    def run(self, command: str, timeout: float = 600) -> Result:
        assert self.client is not None, "connect() first"
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        return Result(stdout.channel.recv_exit_status(), out, err)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "AdminSsh":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
