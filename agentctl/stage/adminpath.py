"""The admin path a cloud stack documents, read from its `ssh` output (one OpenSSH
command per host: stacks/aws_deployment.py `ssh -o ProxyCommand='aws ec2-instance-connect
open-tunnel --instance-id i-..' admin@i-..`, stacks/hcloud_deployment.py `ssh admin@PROXY`
and `ssh -J admin@PROXY admin@10.0.2.11`), turned into sshtrust endpoints, so that
`stage` logs in exactly the way the stack tells its admins to, with the host keys
pinned (agentctl/sshtrust.py): AWS pins them from each host's console output, Hetzner
pins the proxy from the `proxyHostKey` fingerprint the secrets push recorded and records
an agent's on first contact through that pinned proxy (Hetzner publishes no console
output; docs/ssh-host-keys.md)."""
from __future__ import annotations

import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko

from agentctl import sshtrust
from agentctl.errors import AgentctlError


class AdminPathError(AgentctlError):
    exit_code = 1


@dataclass(frozen=True)
class Route:
    """How to reach one host: its endpoint, and the jump host or ProxyCommand carrying it."""

    host: str
    target: sshtrust.Endpoint
    jump: sshtrust.Endpoint | None = None
    proxy_command: str | None = None

    def spec(self) -> str:
        return f"paramiko://{self.target.user}@{self.target.address}:{self.target.port}"

    def jump_spec(self) -> str | None:
        return None if self.jump is None else self.jump.spec()


def _destination(text: str, default_port: int = 22) -> tuple[str, str, int]:
    user, _, rest = text.rpartition("@")
    addr, port = rest, default_port
    if rest.count(":") == 1:
        addr, p = rest.split(":")
        port = int(p)
    return user, addr.strip("[]"), port


def parse_command(host: str, command: str) -> Route:
    """One host's `ssh ...` output -> Route. Only what the stacks write (and plain
    OpenSSH spellings of it: -p PORT, -J USER@HOST[:PORT], -o ProxyCommand=...)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise AdminPathError(f"stage: the stack's ssh output for {host} is not a command ({exc}): {command!r}") from None
    if not words or words[0] != "ssh":
        raise AdminPathError(f"stage: the stack's ssh output for {host} is not an ssh command: {command!r}")
    port, jump, proxy_command, dest = None, None, None, None
    it = iter(words[1:])
    for w in it:
        if w == "-p":
            port = int(next(it, "22"))
        elif w == "-J":
            jump = next(it, "")
        elif w == "-o":
            key, _, value = next(it, "").partition("=")
            if key.lower() == "proxycommand":
                proxy_command = value
        elif w.startswith("-"):
            raise AdminPathError(f"stage: the stack's ssh output for {host} has an option stage does not follow "
                                 f"({w}): {command!r}")
        elif dest is None:
            dest = w
    if not dest or "@" not in dest:
        raise AdminPathError(f"stage: the stack's ssh output for {host} names no USER@HOST: {command!r}")
    user, addr, p = _destination(dest)
    target = sshtrust.Endpoint(host, user, addr, port or p)
    j = None
    if jump:
        ju, ja, jp = _destination(jump)
        j = sshtrust.Endpoint(ja, ju or user, ja, jp)
    return Route(host, target, j, proxy_command)


def routes(outputs: dict, names: list[str]) -> dict[str, Route]:
    """Every host's route; a jump host that is one of the stack's hosts keeps its key
    under that host's name (one pin per host, whichever way it is reached)."""
    ssh = outputs.get("ssh") or {}
    missing = [n for n in names if n not in ssh]
    if missing:
        raise AdminPathError(f"stage: the stack's outputs have no ssh command for {', '.join(missing)} "
                             "(pulumi stack output ssh); was `stage up` run on this stack?")
    out = {n: parse_command(n, str(ssh[n])) for n in names}
    by_addr = {(r.target.user, r.target.address, r.target.port): n for n, r in out.items() if r.jump is None}
    for n, r in out.items():
        if r.jump is not None:
            name = by_addr.get((r.jump.user, r.jump.address, r.jump.port), r.jump.name)
            out[n] = Route(n, r.target, sshtrust.Endpoint(name, r.jump.user, r.jump.address, r.jump.port),
                           r.proxy_command)
    return out


def pin_by_fingerprint(known_hosts: Path, route: Route, fingerprint: str, timeout: float = 10) -> str:
    """Pin the key the host offers if, and only if, its SHA256 fingerprint is the one the
    stack recorded (hcloud's proxyHostKey). Returns the fingerprint pinned."""
    t = route.target
    try:
        sock = socket.create_connection((t.address, t.port), timeout=timeout)
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
        finally:
            transport.close()
    except (OSError, paramiko.SSHException) as exc:
        raise sshtrust.HostKeyError(f"{route.host}: cannot reach {t.address}:{t.port} to read its host key ({exc})") from None
    offered = sshtrust.fingerprint(key)
    if offered != fingerprint:
        raise sshtrust.HostKeyError(f"{route.host}: host key is not the one the stack recorded: proxyHostKey is "
                                    f"{fingerprint}, the host offers {key.get_name()} {offered}; refusing to log in")
    sshtrust.pin(known_hosts, route.host, [(key.get_name(), key.get_base64())])
    return offered


def connect(route: Route, known_hosts: Path, first_contact: str, key_filename: str | None,
            timeout: float = 10) -> paramiko.SSHClient:
    """An admin login over the route. Callers pin a jump host first (pins()): with its
    key pinned, first contact can never apply to it, only to the host behind it."""
    return sshtrust.connect(route.target, known_hosts=known_hosts, first_contact=first_contact,
                            key_filename=key_filename, jump=route.jump, proxy_command=route.proxy_command,
                            timeout=timeout)


def run(client: paramiko.SSHClient, command: str, stdin: str = "", timeout: float = 240) -> tuple[int, str, str]:
    """One command over an open login: (exit status, stdout, stderr)."""
    chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
    if stdin:
        chan_in.write(stdin)
    chan_in.channel.shutdown_write()
    out, err = chan_out.read().decode(errors="replace"), chan_err.read().decode(errors="replace")
    return chan_out.channel.recv_exit_status(), out, err
