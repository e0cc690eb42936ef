"""SSH host keys: never accepted blindly (docs/ssh-host-keys.md).

Each stack keeps its own known_hosts (OpenSSH's format) under the stack's local state,
`.agentctl/<stack>/known_hosts`, keyed by the stack's host NAME rather than an address
(private addresses repeat across stacks; with a jump host the address is not even
ours to see): OpenSSH reads the same file with `-o HostKeyAlias=NAME`. A key gets there
  - pinned from where the cloud publishes it: cloud-init prints the host's public keys
    to the console (`-----BEGIN SSH HOST KEY KEYS-----`), which EC2 hands out with
    `aws ec2 get-console-output` (`agentctl hostkeys pin`); the lab reads them from
    each host's root;
  - or recorded on first contact, where nothing publishes it (Hetzner), if asked to.
A key that differs from the pinned one is refused with one line, always.

paramiko connects (RejectPolicy semantics, our own policies below); a jump host is
a paramiko connection of its own, checked the same way, whose direct-tcpip channel
carries the target's connection; a ProxyCommand (e.g. the EC2 Instance Connect
Endpoint's `aws ec2-instance-connect open-tunnel`) carries it otherwise.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import paramiko

from agentctl.errors import AgentctlError, ConfigError

# paramiko's transport thread logs its failure with a traceback at ERROR (transport.py:
# "Exception (client): Error reading SSH protocol banner"); with no logging set up,
# Python's last-resort handler prints that on stderr beside our one line, which says it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

FIRST_CONTACT = ("refuse", "record")
CONSOLE_KEYS = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S)
# Key type -> fields of its wire format (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4).
WIRE_FIELDS = {"ssh-ed25519": 2, "ssh-rsa": 3, "ecdsa-sha2-nistp256": 3, "ecdsa-sha2-nistp384": 3,
               "ecdsa-sha2-nistp521": 3}
KEY_START = re.compile(r"^(" + "|".join(re.escape(t) for t in WIRE_FIELDS) + r") ([A-Za-z0-9+/=]+)")
B64_RUN = re.compile(r"^[A-Za-z0-9+/=]*")
ENDPOINT = re.compile(r"^(?:(?P<name>[a-z][a-z0-9-]*)=)?(?P<user>[a-z_][a-z0-9_-]*)@(?P<addr>[A-Za-z0-9.:\[\]-]+?)"
                      r"(?::(?P<port>\d+))?$")
PROXY_COMMAND_EXPECTED = ("a command relaying stdin/stdout to %h:%p, e.g. 'aws ec2-instance-connect open-tunnel "
                          "--instance-id i-... --remote-port %p'")


class HostKeyError(AgentctlError):
    """The host is not who it should be (or nobody vouched for it, or it could not be
    asked): exit 1, one line. `endpoint` is the host it is about: behind a jump host, a
    failure of the jump host names the jump host. The subclasses say which way it failed,
    for a caller that words it its own way (snapshot-upgrade: bad input, exit 2)."""

    exit_code = 1

    def __init__(self, message: str, endpoint: "Endpoint | None" = None):
        super().__init__(message)
        self.endpoint = endpoint


class UnknownKey(HostKeyError):
    """No key is pinned for the host, and first contact may not record one."""

    def __init__(self, message: str, endpoint: "Endpoint", offered: paramiko.PKey):
        super().__init__(message, endpoint)
        self.offered = offered


class ChangedKey(HostKeyError):
    """The host offers a key other than the pinned one."""

    def __init__(self, message: str, endpoint: "Endpoint", offered: paramiko.PKey, pinned: paramiko.PKey):
        super().__init__(message, endpoint)
        self.offered, self.pinned = offered, pinned


class Unreachable(HostKeyError):
    """No SSH answer (yet): nothing listens, the jump host or the ProxyCommand cannot
    carry the connection, or no banner came. Worth asking again; nothing was trusted.
    `detail` is the reason alone (the message says which host and which way too)."""

    def __init__(self, message: str, endpoint: "Endpoint", detail: str):
        super().__init__(message, endpoint)
        self.detail = detail


class LoginFailed(HostKeyError):
    """The host answered with its pinned key, and the login failed (`cause` says how:
    paramiko.AuthenticationException when our key was refused)."""

    def __init__(self, message: str, endpoint: "Endpoint", cause: BaseException):
        super().__init__(message, endpoint)
        self.cause = cause


def known_hosts_file(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / ".agentctl" / stack / "known_hosts"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH style: SHA256:<base64 without padding>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class Endpoint:
    name: str  # the name its key is kept under (a stack host name, or the address)
    user: str
    address: str
    port: int = 22

    def spec(self) -> str:
        """As --jump takes it (parse_endpoint reads it back): [NAME=]USER@ADDRESS:PORT."""
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'' if self.name == self.address else self.name + '='}{self.user}@{addr}:{self.port}"


def admin_path(jump: str | None, proxy_command: str | None) -> tuple[Endpoint | None, str | None]:
    """The --jump and --proxy-command flags, as every command that takes them reads them
    (verify, snapshot-upgrade): at most one of them, each well formed, or exit 2 in one
    line. Returns (the jump host, the ProxyCommand), either or both None."""
    if jump is not None and proxy_command is not None:
        raise _both(jump)
    if proxy_command is not None:
        try:
            words = shlex.split(proxy_command)  # what paramiko.ProxyCommand does with it
        except ValueError as exc:
            raise ConfigError("--proxy-command", proxy_command, f"is not a command line ({exc})",
                              PROXY_COMMAND_EXPECTED) from None
        if not words:
            raise ConfigError("--proxy-command", proxy_command, "is empty", PROXY_COMMAND_EXPECTED)
    return (parse_endpoint(jump) if jump is not None else None), proxy_command


def _both(jump: str) -> ConfigError:
    return ConfigError("--jump", jump, "is given with --proxy-command", "one of them")


def parse_endpoint(spec: str, flag: str = "--jump") -> Endpoint:
    """[NAME=]USER@ADDRESS[:PORT]; without NAME, the key is kept under the address."""
    m = ENDPOINT.match(spec)
    if not m:
        raise ConfigError(flag, spec, "is not an SSH endpoint", "[NAME=]USER@ADDRESS[:PORT], e.g. proxy=admin@203.0.113.10")
    addr = m.group("addr").strip("[]")
    return Endpoint(m.group("name") or addr, m.group("user"), addr, int(m.group("port") or 22))


def console_keys(text: str) -> list[tuple[str, str]]:
    """(key type, base64) of every host key cloud-init printed to the console.

    EC2's console output wraps long lines (and may end them with CR LF), so a key can
    continue on the next lines, its comment too: the key is the one join of its pieces
    whose wire format parses exactly."""
    keys = []
    for block in CONSOLE_KEYS.findall(text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        for i, line in enumerate(lines):
            m = KEY_START.match(line)
            if not m:
                continue
            candidate, tails = m.group(2), [m.group(2)]
            for more in lines[i + 1:]:
                if KEY_START.match(more):
                    break
                candidate += B64_RUN.match(more).group(0)
                tails.append(candidate)
            exact = [c for c in tails if _wire_ok(m.group(1), c)]
            if exact:
                keys.append((m.group(1), exact[0]))
    return keys


def _wire_ok(keytype: str, b64: str) -> bool:
    try:
        blob = base64.b64decode(b64, validate=True)
    except ValueError:
        return False
    pos, fields = 0, []
    for _ in range(WIRE_FIELDS[keytype]):
        if pos + 4 > len(blob):
            return False
        size = int.from_bytes(blob[pos:pos + 4], "big")
        fields.append(blob[pos + 4:pos + 4 + size])
        pos += 4 + size
    return pos == len(blob) and fields[0] == keytype.encode()


def pin(known_hosts: Path, name: str, keys: list[tuple[str, str]]) -> list[str]:
    """Make `keys` the only pinned keys of `name`; returns their fingerprints."""
    if not keys:
        raise ConfigError("--console", name, "holds no host keys", "cloud-init's console output with its "
                          "'-----BEGIN SSH HOST KEY KEYS-----' block (aws ec2 get-console-output --latest)")
    store = _load(known_hosts)
    if name in store:
        del store[name]
    prints = []
    for keytype, data in keys:
        key = paramiko.PKey.from_type_string(keytype, base64.b64decode(data))
        store.add(name, keytype, key)
        prints.append(fingerprint(key))
    _save(store, known_hosts)
    return prints


def _load(path: Path) -> paramiko.HostKeys:
    store = paramiko.HostKeys()
    if path.is_file():
        store.load(str(path))
    return store


def _save(store: paramiko.HostKeys, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    store.save(str(tmp))
    os.replace(tmp, path)


class _Unknown(paramiko.MissingHostKeyPolicy):
    """A host with no pinned key: refused, or (first contact allowed) recorded."""

    def __init__(self, known_hosts: Path, first_contact: str, target: Endpoint):
        self.known_hosts, self.first_contact, self.target = known_hosts, first_contact, target

    def missing_host_key(self, client, hostname, key):
        if self.first_contact != "record":
            raise UnknownKey(f"{hostname}: no pinned host key in {self.known_hosts} (it offers {key.get_name()} "
                             f"{fingerprint(key)}); pin it from the console output (agentctl hostkeys pin), "
                             "or allow recording it on first contact (--first-contact record)", self.target, key)
        store = _load(self.known_hosts)
        store.add(hostname, key.get_name(), key)
        _save(store, self.known_hosts)
        print(f"agentctl: {hostname}: first contact, recorded host key {key.get_name()} {fingerprint(key)} "
              f"in {self.known_hosts}", file=sys.stderr)


class _Client(paramiko.SSHClient):
    """A login whose connection may ride on a jump host's login: closing it closes that
    one too (paramiko warns that a client left open can hang the process at its end)."""

    jump: paramiko.SSHClient | None = None

    def close(self) -> None:
        super().close()
        if self.jump is not None:
            self.jump.close()
            self.jump = None


def connect(target: Endpoint, *, known_hosts: Path, first_contact: str = "refuse", key_filename: str | None = None,
            jump: Endpoint | None = None, proxy_command: str | None = None, timeout: float = 10) -> paramiko.SSHClient:
    """An authenticated client whose host key (and the jump host's) is the pinned one.
    Raises a HostKeyError subclass naming the host that failed; with a jump host whose
    key is refused, nothing is sent towards the target."""
    if jump is not None and proxy_command is not None:
        raise _both(jump.name)
    # Loaded here, not by paramiko from key_filename: its loader tries each key type and
    # reports the last one's parse error in place of the host's refusal of our key.
    try:
        pkey = paramiko.PKey.from_path(key_filename) if key_filename else None  # any type, by its header
    except (OSError, paramiko.SSHException) as exc:
        raise ConfigError("--ssh-key", str(key_filename), f"cannot be read ({exc})",
                          "an unencrypted private key file") from None
    jump_client = None
    try:
        if jump is not None:
            jump_client = connect(jump, known_hosts=known_hosts, first_contact=first_contact,
                                  key_filename=key_filename, timeout=timeout)
            sock = jump_client.get_transport().open_channel(
                "direct-tcpip", (target.address, target.port), ("127.0.0.1", 0), timeout=timeout)
        elif proxy_command is not None:
            sock = paramiko.ProxyCommand(proxy_command.replace("%h", target.address).replace("%p", str(target.port)))
        else:
            sock = socket.create_connection((target.address, target.port), timeout=timeout)
    except (OSError, paramiko.SSHException) as exc:
        if jump_client is not None:
            jump_client.close()
        via = f" via {jump.name}" if jump else ""
        raise Unreachable(f"{target.name}: cannot reach {target.address}:{target.port}{via} ({exc})", target,
                          str(exc)) from None
    client = _Client()
    client.jump = jump_client  # the channel rides on the jump's transport: closed together
    client.get_host_keys().update(_load(known_hosts))
    client.set_missing_host_key_policy(_Unknown(known_hosts, first_contact, target))
    try:
        # Port 22 here only names the entry (the socket is ours): keys are kept by name.
        client.connect(target.name, port=22, sock=sock, username=target.user, pkey=pkey,
                       allow_agent=pkey is None, look_for_keys=pkey is None, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout)
    except BaseException as exc:
        transport = client.get_transport()
        handshake_done = transport is not None and transport.initial_kex_done
        client.close()
        if isinstance(exc, paramiko.BadHostKeyException):
            raise ChangedKey(f"{target.name}: host key CHANGED: {known_hosts} pins "
                             f"{fingerprint(exc.expected_key)}, the host offers {exc.key.get_name()} "
                             f"{fingerprint(exc.key)}; refusing to log in (if the host was rebuilt, pin its new "
                             "key from the console output)", target, exc.key, exc.expected_key) from None
        if isinstance(exc, (OSError, paramiko.SSHException)):
            detail = f"{type(exc).__name__}: {exc}"
            line = f"{target.name}: SSH to {target.user}@{target.address}:{target.port} failed ({detail})"
            # Closed or silent before the SSH handshake was done: a host still booting (or
            # down), not a host that refused us, and nothing of it was trusted. Through a
            # relay that loses its connection paramiko says so in more than one way
            # (paramiko/transport.py: "Error reading SSH protocol banner", or the session
            # gone before auth: "No existing session", seen in the lab with sshd stopped).
            if isinstance(exc, (OSError, paramiko.ProxyCommandFailure)) or not handshake_done:
                raise Unreachable(line, target, detail) from None
            raise LoginFailed(line, target, exc) from None
        raise
    return client


def use_in_testinfra(name: str, *, known_hosts: Path, jump: Endpoint | None = None,
                     proxy_command: str | None = None) -> None:
    """testinfra's paramiko backend makes its own SSHClient with paramiko's WarningPolicy
    and no known_hosts (pytest-testinfra 10.2.2, testinfra/backend/paramiko.py,
    ParamikoBackend.client), so any host key would do. Its `client` property is the one
    place that connects: replace it with ours, which refuses any key but the pinned one.
    A private internal, used because security needs it; tests/test_sshtrust.py fails
    if testinfra changes it."""
    import functools

    from testinfra.backend import paramiko as backend

    def client(self) -> paramiko.SSHClient:
        target = Endpoint(name, self.host.user, self.host.name, int(self.host.port or 22))
        return connect(target, known_hosts=known_hosts, first_contact="refuse", key_filename=self.ssh_identity_file,
                       jump=jump, proxy_command=proxy_command, timeout=self.timeout)

    prop = functools.cached_property(client)
    prop.__set_name__(backend.ParamikoBackend, "client")
    backend.ParamikoBackend.client = prop
