"""SSH to a host as `admin` for snapshot-upgrade, host key verified, never accepted.

The login is `agentctl verify`'s (agentctl/sshtrust.py `connect`): keys looked up by the
stack's host NAME in the stack's known_hosts (`.agentctl/<stack>/known_hosts`; the lab's
own pins in the lab), first contact never recorded, and the same admin paths: a jump
host (`--jump`, whose key is checked the same way first) or a ProxyCommand
(`--proxy-command`; the lab's relay into its admin namespace). Every failure to reach or
trust a host is bad input for the command (exit 2, one line, naming the flag of the host
that failed: `--jump` or `--host`), nothing snapshotted yet.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from agentctl import sshtrust
from agentctl.errors import ConfigError


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
                 user: str = "admin", timeout: float = 15, jump: sshtrust.Endpoint | None = None,
                 proxy_command: str | None = None):
        self.host, self.target = host, sshtrust.Endpoint(host, user, address, port)
        self.known_hosts, self.key_file, self.timeout = Path(known_hosts), key_file, timeout
        self.jump, self.proxy_command = jump, proxy_command
        self.client: paramiko.SSHClient | None = None
        self.patience = 0.0  # seconds to keep trying a host that does not answer yet

    def patient(self, seconds: float) -> "AdminSsh":
        """Keep trying for `seconds` while the host does not answer yet (just booted or
        restored: no listener, or no banner yet). A changed or unknown host key and a
        refused login fail at once, as ever."""
        self.patience = seconds
        return self

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
            raise ConfigError("--host", self.host, f"no pinned host keys ({self.known_hosts} does not exist)",
                              "the host's key in that known_hosts file")
        try:
            self.client = sshtrust.connect(
                self.target, known_hosts=self.known_hosts, first_contact="refuse",
                key_filename=str(self.key_file) if self.key_file is not None else None,
                jump=self.jump, proxy_command=self.proxy_command, timeout=self.timeout)
        except sshtrust.Unreachable as exc:
            raise _NotYet(self._refused(exc)) from None
        except sshtrust.HostKeyError as exc:
            raise self._refused(exc) from None
        return self

    def _refused(self, exc: sshtrust.HostKeyError) -> ConfigError:
        """sshtrust's failure as bad input, in the words of the flag naming that host."""
        at = exc.endpoint or self.target
        flag, value = ("--jump", self.jump.spec()) if self.jump is not None and at == self.jump else \
            ("--host", self.host)
        kh = self.known_hosts
        if isinstance(exc, sshtrust.ChangedKey):
            return ConfigError(flag, value, f"the host key of {at.address} changed (it offers {exc.offered.get_name()} "
                               f"{sshtrust.fingerprint(exc.offered)}, {kh} pins "
                               f"{sshtrust.fingerprint(exc.pinned)} for {at.name})",
                               "the pinned key; if the host was really rebuilt, re-pin it deliberately")
        if isinstance(exc, sshtrust.UnknownKey):
            return ConfigError(flag, value, f"the host key of {at.address} is not pinned ({kh} has none for "
                               f"{at.name}; it offers {exc.offered.get_name()} {sshtrust.fingerprint(exc.offered)})",
                               f"its key pinned under {at.name} (agentctl hostkeys, or agentctl verify's first "
                               "contact); snapshot-upgrade never records one")
        if isinstance(exc, sshtrust.Unreachable):
            via = ""
            if at == self.target and self.jump is not None:
                via = f" through {self.jump.name}"
            elif at == self.target and self.proxy_command:
                via = " through --proxy-command"
            return ConfigError(flag, value, f"{at.address}:{at.port} is unreachable{via} ({exc.detail})",
                               "a host that answers SSH")
        if isinstance(exc, sshtrust.LoginFailed) and isinstance(exc.cause, paramiko.AuthenticationException):
            return ConfigError(flag, value, f"{at.user}@{at.address} refused our key ({exc.cause})",
                               "an admin key the host accepts")
        return ConfigError(flag, value, str(exc), f"its key pinned in {kh}, and an admin login it accepts")

    def run(self, command: str, timeout: float = 600) -> Result:
        assert self.client is not None, "connect() first"
        _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
        return Result(stdout.channel.recv_exit_status(), out, err)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()  # and the jump host's login it rides on
            self.client = None

    def __enter__(self) -> "AdminSsh":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
