"""`agentctl snapshot-upgrade`: the command around the engine (engine.py).

It checks the input (bad input: exit 2, one line, nothing snapshotted), builds the
backend of the stack's cloud (lab, aws, hcloud) and the host runtime (host.py), runs
the engine under the host's lock, shows every step as it happens, prints a table of
steps with durations, and with --json prints one JSON object as the last stdout line.
Exit 0 only for `upgraded`; 1 for rolled-back, failed, or interrupted (a rollback step
failed and the journal waits for --resume), the reason on stderr.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from agentctl import sshtrust
from agentctl.errors import AgentctlError, ConfigError
from agentctl.model import Agent, Deployment, PackagePin
from agentctl.stackfile import NAMESPACE, load, stack_path
from agentctl.upgrade import engine, stackedit
from agentctl.upgrade.host import HostRuntime, verify_child
from agentctl.upgrade.journal import host_dir
from agentctl.upgrade.ssh import AdminSsh

REPORT = "role-suite.log"  # every acceptance's whole role suite output, beside the journals
# The lab's ProxyCommand: stdin/stdout to an address's SSH port, run in the admin
# namespace. It waits LAB_RELAY_CONNECT_TIMEOUT seconds for the connection, and that
# timeout must not outlive the connect: a held admin session sits idle while the role
# suite runs, and a recv timeout there would close it under paramiko.
LAB_RELAY_CONNECT_TIMEOUT = 10.0
LAB_RELAY = ("import socket,sys,threading\n"
             "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),float(sys.argv[3]))\n"
             "s.settimeout(None)\n"
             "def up():\n"
             "    while (b:=sys.stdin.buffer.read1(65536)): s.sendall(b)\n"
             "    s.shutdown(socket.SHUT_WR)\n"
             "threading.Thread(target=up,daemon=True).start()\n"
             "while (b:=s.recv(65536)): sys.stdout.buffer.write(b); sys.stdout.buffer.flush()\n")


def lab_relay(address: str, port: int = 22, connect_timeout: float = LAB_RELAY_CONNECT_TIMEOUT) -> list[str]:
    """The relay's command line (without the namespace it runs in)."""
    return [sys.executable, "-c", LAB_RELAY, address, str(port), str(connect_timeout)]


def _agent(d: Deployment, stack: str, host: str) -> Agent:
    if host == d.proxy.name:
        raise ConfigError("--host", host, "is the proxy host; snapshot-upgrade upgrades an agent's runtime",
                          "one of " + ", ".join(a.name for a in d.agents))
    agent = next((a for a in d.agents if a.name == host), None)
    if agent is None:
        raise ConfigError("--host", host, f"is not a host of stack {stack}",
                          "one of " + ", ".join(a.name for a in d.agents))
    if agent.runtime.package_pin is None:
        raise ConfigError(str(stack_path(Path("."), stack).name), f"{NAMESPACE}:agents[{host}].runtime",
                          "has no versioned package", "runtime.package {name, version} (or hermes with a version)")
    return agent


def index_versions(pin: PackagePin) -> Callable[[], set[str]]:
    """The versions a PEP 691 index lists for the package (the operator's machine asks)."""
    def versions() -> set[str]:
        req = urllib.request.Request(pin.index + pin.name + "/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                files = json.load(resp).get("files", [])
        except (OSError, ValueError) as exc:
            raise ConfigError("--to", pin.index, f"the package index cannot be read ({exc})",
                              "an index that answers") from None
        return {_version_of(f["filename"]) for f in files if _version_of(f["filename"])}
    return versions


def _version_of(filename: str) -> str:
    if filename.endswith(".whl"):
        return filename.split("-")[1]
    for ext in (".tar.gz", ".zip"):
        if filename.endswith(ext):
            return filename[: -len(ext)].rsplit("-", 1)[-1]
    return ""


class _Progress:
    def __init__(self, console: Console):
        self.console, self.started = console, {}

    def __call__(self, step: str, status: str, detail: str) -> None:
        if status == "started":
            self.started[step] = time.monotonic()
            self.console.print(f"  … {step}", highlight=False)
            return
        took = time.monotonic() - self.started.get(step, time.monotonic())
        mark = {"done": "[green]✓[/]", "failed": "[red]✗[/]"}.get(status, "•")
        self.console.print(f"  {mark} {step} ({took:.1f} s){': ' + detail if detail else ''}", highlight=False)


def _lab_parts(project_dir: Path, stack: str, d: Deployment, host: str, state_dir: Path):
    from agentctl.lab import lab, state, topology
    from agentctl.upgrade.backends.lab import LabBackend, lab_start, lab_stop

    st = state.load(state_dir)
    if not (st.stack == stack and st.converged):
        raise ConfigError("--stack", stack, f"has no lab up in {state_dir}", "`agentctl lab up` first")
    if st.hosts != "container":
        # The lab's snapshots are copies of a container's overlay layer; a VM's disk is not one.
        raise ConfigError("--stack", stack, f"is up on {st.hosts} hosts in {state_dir}",
                          "container hosts for snapshot-upgrade on the lab (`agentctl lab up` without --hosts vm)")
    agent_ip, proxy_ip = lab.host_ip(d, host), d.proxy_ip
    pinned = lab.known_hosts(state_dir)  # by host name, pinned at `lab up`: what verify checks too
    key = lab.ssh_key(state_dir)

    def ssh(address: str, name: str) -> Callable[[], AdminSsh]:
        relay = shlex.join(["ip", "netns", "exec", topology.ADMIN_NS, *lab_relay(address)])
        return lambda: AdminSsh(name, address, pinned, key_file=key, timeout=20, proxy_command=relay)

    backend = LabBackend(state_dir, Path(st.image), stack, lab_stop(state_dir), lab_start(state_dir))
    verify = verify_child(["ip", "netns", "exec", topology.ADMIN_NS], [
        sys.executable, "-m", "agentctl.cli", "verify", "--stack", stack, "--project-dir", str(project_dir.resolve()),
        "--host", f"{host}=paramiko://admin@{agent_ip}", "--ssh-key", str(key),
        "--known-hosts", str(pinned), "--first-contact", "refuse"], host_dir(project_dir, stack, host) / REPORT)

    def versions() -> set[str]:
        found = set()
        for folder in map(Path, st.wheel_dirs):
            found |= {_version_of(w.name) for w in folder.glob("*.whl")
                      if w.name.split("-")[0].replace("_", "-") == d_pin(d, host).name.replace("_", "-")}
        return found
    return backend, ssh(agent_ip, host), ssh(proxy_ip, d.proxy.name), verify, versions


def d_pin(d: Deployment, host: str) -> PackagePin:
    return next(a for a in d.agents if a.name == host).runtime.package_pin


@dataclass(frozen=True)
class CloudAdmin:
    """How the operator's machine reaches a cloud stack's hosts as admin: the addresses,
    and `agentctl verify`'s admin path for the agent (a jump host, or a ProxyCommand)."""

    address: str  # the agent's admin address (behind a jump host: as the jump host sees it)
    proxy: sshtrust.Endpoint  # the proxy host's login: the upgrade grant is opened there
    jump: sshtrust.Endpoint | None = None
    proxy_command: str | None = None


def cloud_admin(d: Deployment, address: str | None, proxy_address: str | None, jump: str | None,
                proxy_command: str | None) -> CloudAdmin:
    """The flags, checked as verify checks them (exit 2, one line) before anything runs."""
    via_jump, via_command = sshtrust.admin_path(jump, proxy_command)
    if not address:
        raise ConfigError("--address", "(missing)", "is needed on a cloud: the agent's admin address",
                          "the ADDRESS of `agentctl verify --host NAME=paramiko://admin@ADDRESS`")
    if proxy_address:
        proxy = sshtrust.Endpoint(d.proxy.name, "admin", proxy_address)
    elif via_jump is not None and via_jump.name == d.proxy.name:
        proxy = via_jump  # Hetzner: the proxy host is the jump host, one login and one pin
    else:
        raise ConfigError("--proxy-address", "(missing)", "is needed on a cloud: the proxy host's admin address "
                          "(the upgrade grant is opened there)",
                          f"its address, or --jump {d.proxy.name}=admin@ADDRESS when it is the jump host")
    return CloudAdmin(address, proxy, via_jump, via_command)


def cloud_verify_argv(project_dir: Path, stack: str, host: str, admin: CloudAdmin, known_hosts: Path,
                      ssh_key: Path | None) -> list[str]:
    """The acceptance's `agentctl verify` for the agent: the same keys, the same path."""
    return [sys.executable, "-m", "agentctl.cli", "verify", "--stack", stack,
            "--project-dir", str(project_dir.resolve()), "--host", f"{host}=paramiko://admin@{admin.address}",
            "--known-hosts", str(known_hosts), "--first-contact", "refuse",
            *(["--ssh-key", str(ssh_key)] if ssh_key else []),
            *(["--jump", admin.jump.spec()] if admin.jump else []),
            *(["--proxy-command", admin.proxy_command] if admin.proxy_command else [])]


def _cloud_parts(project_dir: Path, stack: str, d: Deployment, host: str, admin: CloudAdmin, ssh_key: Path | None):
    kh = sshtrust.known_hosts_file(project_dir, stack)
    if d.cloud == "aws":
        import boto3
        from agentctl.upgrade.backends.aws import AwsBackend
        backend = AwsBackend(boto3.client("ec2", region_name=d.region), stack)
    else:
        from hcloud import Client
        from agentctl.upgrade.backends.hcloud import HcloudBackend
        token = os.environ.get("HCLOUD_TOKEN")
        if not token:
            raise ConfigError("HCLOUD_TOKEN", "(environment)", "is not set", "a Hetzner Cloud API token")
        backend = HcloudBackend(Client(token=token), stack)
    verify = verify_child([], cloud_verify_argv(project_dir, stack, host, admin, kh, ssh_key),
                          host_dir(project_dir, stack, host) / REPORT)
    p = admin.proxy
    # The agent by its admin path; the proxy host directly (on Hetzner it is the jump host).
    return (backend,
            lambda: AdminSsh(host, admin.address, kh, key_file=ssh_key, jump=admin.jump,
                             proxy_command=admin.proxy_command),
            lambda: AdminSsh(p.name, p.address, kh, key_file=ssh_key, port=p.port, user=p.user),
            verify, index_versions(d_pin(d, host)))


def snapshot_upgrade(*, project_dir: Path, stack: str, host: str, to: str | None, checks: list[str], keep: int,
                     resume: bool, rollback: bool, yes: bool, json_out: bool, state_dir: Path | None,
                     address: str | None, proxy_address: str | None, ssh_key: Path | None,
                     jump: str | None = None, proxy_command: str | None = None) -> int:
    err = Console(stderr=True, highlight=False)
    if keep < 1:
        raise ConfigError("--keep", str(keep), "keeps no snapshot", "1 or more (default 3)")
    d = load(project_dir, stack)
    agent = _agent(d, stack, host)
    if d.cloud == "lab":
        sshtrust.admin_path(jump, proxy_command)  # the same checks, the same words
        for flag, value in (("--jump", jump), ("--proxy-command", proxy_command)):
            if value is not None:
                raise ConfigError(flag, value, f"is for a cloud stack; {stack} is a lab stack, reached through "
                                  "the lab's admin namespace", f"no {flag} on a lab stack")
        admin = None
    else:
        admin = cloud_admin(d, address, proxy_address, jump, proxy_command)
    pin = agent.runtime.package_pin
    if to is not None and not (resume or rollback):
        from agentctl.model import exact_version
        try:
            exact_version(to)
        except ValueError as exc:
            raise ConfigError("--to", to, str(exc).split(";")[0], "an exact version such as 1.2.0") from None
    if not (yes or resume or rollback):
        if not sys.stdin.isatty():
            raise ConfigError("--yes", "(missing)", "is needed without a terminal to confirm on",
                              "--yes to upgrade unattended")
        if input(f"snapshot {host}, then upgrade {pin.name} to {to}? [y/N] ").strip().lower() not in ("y", "yes"):
            err.print("nothing done")
            return 1
    if d.cloud == "lab":
        from agentctl.lab.state import DEFAULT_STATE_DIR
        parts = _lab_parts(project_dir, stack, d, host, state_dir or DEFAULT_STATE_DIR)
    else:
        parts = _cloud_parts(project_dir, stack, d, host, admin, ssh_key)
    backend, agent_ssh, proxy_ssh, verify, versions = parts
    folder = host_dir(project_dir, stack, host)
    journal_ref: dict = {}
    runtime = HostRuntime(host, pin, agent.runtime.health, checks, agent_ssh, proxy_ssh, versions, verify,
                          run_id=lambda: journal_ref.get("run_id", "snapshot-upgrade"))

    class Recorder:
        def record(self, version: str) -> None:
            if stackedit.runtime_version(project_dir, stack, host) != version:
                stackedit.set_runtime_version(project_dir, stack, host, version)

    def hook(journal) -> None:
        journal_ref["run_id"] = journal.data["run_id"]

    err.print(f"[bold]snapshot-upgrade[/] {stack}/{host}: {pin.name} → {to or '(resume)'}")
    try:
        journal = engine.run(folder, stack=stack, host=host, to=to, keep=keep, backend=backend, runtime=runtime,
                             recorder=Recorder(), resume=resume, rollback=rollback, events=_Progress(err), hook=hook)
    except engine.UpgradeError as exc:
        if exc.journal is None:
            raise
        journal, interrupted = exc.journal, str(exc)
    else:
        interrupted = None
    data = journal.data
    table = Table(title=f"{host}: {data.get('from')} → {data.get('to')}")
    for col in ("step", "status", "seconds", "detail"):
        table.add_column(col)
    steps = []
    for s in data["steps"]:
        secs = round((s["ended"] or s["started"]) - s["started"], 1)
        steps.append({"name": s["name"], "status": s["status"], "seconds": secs, "detail": s["detail"]})
        table.add_row(s["name"], s["status"], f"{secs:.1f}", (s["detail"] or "")[:80])
    err.print(table)
    # "interrupted": a step that must not guess failed; the journal waits for --resume
    outcome = "interrupted" if interrupted else data["outcome"]
    if json_out:
        print(json.dumps({"host": host, "from": data.get("from"), "to": data.get("to"), "outcome": outcome,
                          "snapshot": data.get("snapshot"), "journal": str(journal.path), "steps": steps}))
    if outcome == "upgraded":
        err.print(f"[green]{host} upgraded to {data['to']}[/]" + (f" ({data['warning']})" if data.get("warning")
                                                                  else ""))
        return 0
    print(f"agentctl: {interrupted}" if interrupted else f"agentctl: {host}: {outcome}: {data.get('reason')}",
          file=sys.stderr)
    return 1
