"""Push secret files onto a host over SSH (paramiko): the Hetzner way to give the proxy
its credentials and CA key without user-data, which any process on the host can read
from the metadata service.

Contents travel only on the SSH channel's stdin: never in a command line (visible in
`ps`), a log line, an exception or a return value.
"""
from __future__ import annotations

import base64
import hashlib
import posixpath
import shlex
import socket
import time
from dataclasses import dataclass

import paramiko

from agentctl.errors import AgentctlError


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


def write_command(item: PushFile, *, use_sudo: bool) -> str:
    """Shell command that writes stdin to item.path atomically, with owner and mode set
    before the content exists under its final name. A folder that already exists
    (/etc/agentctl-proxy) keeps its owner: the proxy user must not own its own policy.
    A new leaf folder (secrets/<agent>) belongs to the proxy user, 0700."""
    folder = posixpath.dirname(item.path)
    q_path, q_folder, q_parent = (shlex.quote(p) for p in (item.path, folder, posixpath.dirname(folder)))
    tmp = shlex.quote(item.path + ".agentctl-tmp")
    owner = shlex.quote(item.owner)
    script = (f"set -e; umask 022; mkdir -p {q_parent}; umask 077; "
              f"if [ ! -d {q_folder} ]; then mkdir {q_folder}; chown {owner}: {q_folder}; chmod 0700 {q_folder}; fi; "
              f"cat > {tmp}; chown {owner}: {tmp}; chmod {item.mode:04o} {tmp}; mv -f {tmp} {q_path}")
    return ("sudo -n " if use_sudo else "") + "sh -c " + shlex.quote(script)


WAIT_FOR_BOOT = "if command -v cloud-init >/dev/null 2>&1; then cloud-init status --wait >/dev/null 2>&1 || true; fi"


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
        except (OSError, socket.timeout, paramiko.SSHException) as exc:
            client.close()
            if time.monotonic() > deadline:
                raise SecretPushError(f"{user}@{host}:{port}: cannot connect ({type(exc).__name__}: {exc})") from None
            time.sleep(3)


def push_files(host: str, files: list[PushFile], *, user: str = "admin", port: int = 22,
               key_filename: str | None = None, expected_host_key: str | None = None,
               wait_seconds: float = 600, after: str | None = None) -> str:
    """Write every file on host; return the host key fingerprint to pin next time."""
    client, fingerprint = connect(host, user=user, port=port, key_filename=key_filename,
                                  expected_host_key=expected_host_key, wait_seconds=wait_seconds)
    use_sudo = user != "root"
    try:
        _run(client, WAIT_FOR_BOOT, None, host, "wait for cloud-init")
        for item in files:
            _run(client, write_command(item, use_sudo=use_sudo), item.content, host, item.path)
        if after:
            _run(client, ("sudo -n " if use_sudo else "") + after, None, host, after)
    finally:
        client.close()
    return fingerprint


def _run(client: paramiko.SSHClient, command: str, stdin_data: bytes | None, host: str, what: str) -> None:
    stdin, stdout, stderr = client.exec_command(command, timeout=900)
    if stdin_data is not None:
        stdin.write(stdin_data)
    stdin.channel.shutdown_write()
    status = stdout.channel.recv_exit_status()
    if status != 0:
        # stderr comes from mkdir/chown/mv, never from the content (it only goes to cat's stdin).
        detail = stderr.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise SecretPushError(f"{host}: {what}: exit {status} {detail[0]}")
