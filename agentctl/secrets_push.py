"""Push secret files onto a host over SSH (paramiko): the Hetzner way to give the proxy
its credentials and CA key without user-data, which any process on the host can read
from the metadata service.

Contents travel only on the SSH channel's stdin: never in a command line (visible in
`ps` and in sudo's log), a log line, an exception or a return value; and sudo does not
record that stdin (its I/O log is off for the installer alone, templates/sudoers.j2).
"""
from __future__ import annotations

import base64
import hashlib
import shlex
import socket
import time
from dataclasses import dataclass

import paramiko

from agentctl.errors import AgentctlError
from agentctl.render import REBOOT_REQUIRED
from agentctl.secrets import INSTALL_SECRET_BIN


class SecretPushError(AgentctlError):
    exit_code = 1


@dataclass(frozen=True)
class PushFile:
    path: str
    content: bytes
    owner: str
    mode: int = 0o600

    def __repr__(self) -> str:  # a dataclass repr would print the secret
        return f"PushFile(path={self.path!r}, owner={self.owner!r}, mode={oct(self.mode)}, content=<{len(self.content)} bytes>)"


def host_key_fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH style: SHA256:<base64 without padding>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use, then only the pinned key: a rebuilt or spoofed host must not
    receive the secrets."""

    def __init__(self, expected: str | None):
        self.expected, self.seen = expected, None

    def missing_host_key(self, client, hostname, key):
        self.seen = host_key_fingerprint(key)
        if self.expected and self.seen != self.expected:
            raise SecretPushError(f"{hostname}: host key {self.seen} is not the pinned {self.expected}; refusing to push")


def write_command(item: PushFile, *, use_sudo: bool, installer: str = INSTALL_SECRET_BIN) -> str:
    """The command that writes stdin to item.path on the proxy: the role's installer
    (roles/proxy/templates/install-secret.sh.j2: atomic, owner and mode set before the
    content has its final name, only secret paths). Through sudo it is the one command
    whose I/O sudo does not log (templates/sudoers.j2): its stdin is the secret."""
    argv = [installer, item.path, item.owner, f"{item.mode:04o}"]
    return ("sudo -n " if use_sudo else "") + shlex.join(argv)


# Ready means: cloud-init finished, and this boot is not the one converge ends with a
# reboot (Ubuntu 24.04's first boot, templates/converge.sh.j2 -> power_state). The
# boot id tells a host that has not gone down yet from one that came back.
READY_PROBE = ("if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi; "
               "cat /proc/sys/kernel/random/boot_id; "
               f"if [ -e {REBOOT_REQUIRED} ]; then echo reboot-pending; else echo ready; fi")
RETRY_SECONDS = 5
MAX_ATTEMPTS = 5  # connections cut while writing (a reboot, a network blip); each retry rewrites every file


class _Disconnected(Exception):
    """The session ended without an exit status: the host went away mid-command."""


def connect(host: str, *, user: str, port: int = 22, key_filename: str | None = None,
            expected_host_key: str | None = None, wait_seconds: float = 600) -> tuple[paramiko.SSHClient, str]:
    """Connect, retrying while the host boots. Returns the client and the host key seen."""
    deadline = time.monotonic() + wait_seconds
    while True:
        client = paramiko.SSHClient()
        pin = _PinnedHostKey(expected_host_key)
        client.set_missing_host_key_policy(pin)
        try:
            client.connect(host, port=port, username=user, key_filename=key_filename, timeout=10,
                           banner_timeout=10, auth_timeout=10, allow_agent=key_filename is None,
                           look_for_keys=key_filename is None)
            return client, pin.seen or host_key_fingerprint(client.get_transport().get_remote_server_key())
        except SecretPushError:
            client.close()
            raise
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            client.close()
            if time.monotonic() > deadline:
                raise SecretPushError(f"{user}@{host}:{port}: cannot connect ({type(exc).__name__}: {exc})") from None
            time.sleep(3)


def push_files(host: str, files: list[PushFile], *, user: str = "admin", port: int = 22,
               key_filename: str | None = None, expected_host_key: str | None = None,
               wait_seconds: float = 600, after: str | None = None, installer: str = INSTALL_SECRET_BIN) -> str:
    """Write every file on host once it is ready (booted for good); return the host key
    fingerprint to pin next time. Idempotent: a push cut off (the first-boot reboot, a
    dropped connection) is started again from the top, up to MAX_ATTEMPTS times, with
    the host key seen first pinned for every later connection."""
    deadline = time.monotonic() + wait_seconds
    pinned, left_boot, attempts = expected_host_key, None, 0
    use_sudo = user != "root"
    while True:
        client, fingerprint = connect(host, user=user, port=port, key_filename=key_filename,
                                      expected_host_key=pinned, wait_seconds=max(0.0, deadline - time.monotonic()))
        pinned = pinned or fingerprint
        try:
            boot_id, state = _probe(client, host)
            if state == "ready" and boot_id != left_boot:
                for item in files:
                    _run(client, write_command(item, use_sudo=use_sudo, installer=installer), item.content, host,
                         item.path)
                if after:
                    _run(client, ("sudo -n " if use_sudo else "") + after, None, host, after)
                return fingerprint
            left_boot = boot_id  # reboot pending, or not gone down yet: wait for the next boot
        except (_Disconnected, paramiko.SSHException, EOFError, OSError) as exc:
            attempts += 1
            if attempts >= MAX_ATTEMPTS:
                raise SecretPushError(f"{host}: connection lost {attempts} times while pushing "
                                      f"({type(exc).__name__}); run `pulumi up` again") from None
        finally:
            client.close()
        if time.monotonic() > deadline:
            raise SecretPushError(f"{host}: not ready (cloud-init done, no reboot pending) after {int(wait_seconds)} s")
        time.sleep(RETRY_SECONDS)


def _probe(client: paramiko.SSHClient, host: str) -> tuple[str, str]:
    out = _run(client, READY_PROBE, None, host, "wait for cloud-init").split()
    if len(out) != 2 or out[1] not in ("ready", "reboot-pending"):
        raise SecretPushError(f"{host}: unexpected answer to the readiness probe: {' '.join(out)[:80]!r}")
    return out[0], out[1]


def _run(client: paramiko.SSHClient, command: str, stdin_data: bytes | None, host: str, what: str) -> str:
    """Run command with stdin_data on its stdin; its stdout (never fed from the content)."""
    stdin, stdout, stderr = client.exec_command(command, timeout=900)
    if stdin_data is not None:
        stdin.write(stdin_data)
    stdin.channel.shutdown_write()
    out = stdout.read().decode(errors="replace")
    status = stdout.channel.recv_exit_status()
    if status == -1:  # paramiko: the channel closed with no exit status
        raise _Disconnected(what)
    if status != 0:
        # stderr comes from mkdir/chown/mv, never from the content (it only goes to cat's stdin).
        detail = stderr.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise SecretPushError(f"{host}: {what}: exit {status} {detail[0]}")
    return out
