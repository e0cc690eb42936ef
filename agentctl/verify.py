"""`agentctl verify`: run each host's role suite (pytest-testinfra) against a converged
host. The suites derive what they expect from the same stack file that rendered the
host, so a passing run means "this host is what the config says"."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path

from agentctl import baseline, sshtrust
from agentctl.errors import ConfigError
from agentctl.model import Deployment
from agentctl.resources import ROLES
from agentctl.stackfile import load
SPEC = re.compile(r"^(paramiko|ssh)://(?P<user>[a-z_][a-z0-9_-]*)@(?P<addr>[A-Za-z0-9.:\[\]-]+?)(:(?P<port>\d+))?$")


def suites(role: str) -> list[Path]:
    return [ROLES / "base" / "verify_base.py", ROLES / "base" / "verify_ssh_baseline.py",
            ROLES / "base" / "verify_linux_baseline.py", ROLES / role / f"verify_{role}.py"]


def parse_hosts(specs: list[str], names: dict[str, str]) -> list[tuple[str, str, str]]:
    """NAME=SPEC pairs -> (name, role, spec); exit 2 on the first bad one."""
    out = []
    for raw in specs:
        name, sep, spec = raw.partition("=")
        if not sep:
            raise ConfigError("--host", raw, "is not NAME=SPEC", "e.g. scout=paramiko://admin@10.0.2.11")
        if name not in names:
            raise ConfigError("--host", raw, f"{name!r} is not a host of this stack",
                              f"one of {', '.join(sorted(names))}")
        if not SPEC.match(spec):
            raise ConfigError("--host", raw, f"{spec!r} is not a testinfra SSH host spec",
                              "paramiko://USER@ADDRESS[:PORT] or ssh://USER@ADDRESS[:PORT]")
        out.append((name, names[name], spec))
    return out


@dataclass(frozen=True)
class Trust:
    """How verify checks the hosts' SSH keys (agentctl/sshtrust.py)."""

    known_hosts: Path
    # "refuse" or "record"; unset: record only on Hetzner, the one cloud that publishes no
    # console output to pin from (AWS: aws ec2 get-console-output; the lab pins its own).
    first_contact: str | None = None
    jump: str | None = None         # [NAME=]USER@ADDRESS[:PORT]
    proxy_command: str | None = None


def _endpoint(name: str, spec: str) -> sshtrust.Endpoint:
    m = SPEC.match(spec)
    return sshtrust.Endpoint(name, m.group("user"), m.group("addr").strip("[]"), int(m.group("port") or 22))


def _ssh_config(folder: Path, name: str, trust: Trust) -> Path:
    """For ssh:// (OpenSSH's client): the same pins, by HostKeyAlias, strictly."""
    lines = ["Host *", f"  HostKeyAlias {name}", "  StrictHostKeyChecking yes",
             f"  UserKnownHostsFile {trust.known_hosts.resolve()}", "  GlobalKnownHostsFile /dev/null", "  BatchMode yes"]
    if trust.proxy_command:
        lines.append(f"  ProxyCommand {trust.proxy_command}")
    path = folder / f"ssh_config.{name}"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_verify(project_dir: Path, stack: str, hosts: list[str], ssh_key: Path | None,
               extra_args: list[str] | None = None, trust: Trust | None = None,
               junit_dir: Path | None = None, distro: str | None = None) -> int:
    """Each host's suite in its own pytest, side by side; with junit_dir, each writes
    its JUnit report to junit_dir/<host>.xml (pytest's own --junitxml). distro: what
    the hosts run when not the stack's (the lab's `lab up --distro`)."""
    known = typing.get_args(Deployment.model_fields["distro"].annotation)
    if distro is not None and distro not in known:
        raise ConfigError("--distro", distro, "is not a distro agentctl renders for", " or ".join(known))
    deployment = load(project_dir, stack, distro=distro)
    names = {deployment.proxy.name: "proxy", **{a.name: "agent" for a in deployment.agents}}
    targets = parse_hosts(hosts, names)
    if ssh_key is not None and not Path(ssh_key).is_file():
        raise ConfigError("--ssh-key", str(ssh_key), "no such file", "a private key file")
    trust = trust or Trust(sshtrust.known_hosts_file(project_dir, stack))
    if trust.first_contact not in (None, *sshtrust.FIRST_CONTACT):
        raise ConfigError("--first-contact", trust.first_contact, "is not known", " or ".join(sshtrust.FIRST_CONTACT))
    first_contact = trust.first_contact or ("record" if deployment.cloud == "hcloud" else "refuse")
    jump, _ = sshtrust.admin_path(trust.jump, trust.proxy_command)
    waivers = baseline.load_waivers()  # the suites read it too: a bad file stops here, before any login
    if jump is not None and any(spec.startswith("ssh://") for _, _, spec in targets):
        raise ConfigError("--jump", trust.jump, "works with paramiko:// hosts only",
                          "paramiko://USER@ADDRESS, or ssh:// with --proxy-command")
    # Log in once here first: a host whose key is not the pinned one (or unknown, unless
    # first contact may record it) stops verify with one line before any suite runs.
    # The suites then connect the same way, refusing anything but what is now pinned.
    for name, _, spec in targets:
        sshtrust.connect(_endpoint(name, spec), known_hosts=trust.known_hosts, first_contact=first_contact,
                         key_filename=str(ssh_key) if ssh_key else None, jump=jump,
                         proxy_command=trust.proxy_command).close()
    scratch = Path(tempfile.mkdtemp(prefix="agentctl-verify-"))
    # Hosts are independent: verify them side by side, print each report whole.
    procs = []
    for name, role, spec in targets:
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROLES),
                "-c", str(ROLES / "pytest.ini"), f"--hosts={spec}",
                f"--agentctl-stack={stack}", f"--agentctl-project-dir={Path(project_dir).resolve()}",
                f"--agentctl-host={name}", f"--agentctl-known-hosts={trust.known_hosts.resolve()}",
                f"--agentctl-distro={deployment.distro}",
                *[str(s) for s in suites(role)], *(extra_args or [])]
        if trust.jump:
            args.append(f"--agentctl-jump={trust.jump}")
        if trust.proxy_command:
            args.append(f"--agentctl-proxy-command={trust.proxy_command}")
        if spec.startswith("ssh://"):
            args.append(f"--ssh-config={_ssh_config(scratch, name, trust)}")
        if ssh_key is not None:
            args.append(f"--ssh-identity-file={ssh_key}")
        if junit_dir is not None:
            args.append(f"--junitxml={Path(junit_dir).resolve() / f'{name}.xml'}")
        procs.append((name, role, spec, subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))))
    worst = 0
    for name, role, spec, proc in procs:
        output, _ = proc.communicate()
        print(f"== {name} ({role}) {spec}\n{output}", end="", flush=True)
        worst = max(worst, proc.returncode)
    shutil.rmtree(scratch, ignore_errors=True)
    # What the suites let fail on purpose, with why, so a reader of a green run sees it.
    waived = baseline.report(waivers, {role for _, role, _ in targets})
    print(f"== dev-sec baseline controls waived ({baseline.WAIVERS.name}): {len(waived)}")
    for line in waived:
        print(f"  {line}")
    return worst
