"""`agentctl verify`: run each host's role suite (pytest-testinfra) against a converged
host. The suites derive what they expect from the same stack file that rendered the
host, so a passing run means "this host is what the config says"."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agentctl.errors import ConfigError
from agentctl.resources import ROLES
from agentctl.stackfile import load
SPEC = re.compile(r"^(paramiko|ssh)://(?P<user>[a-z_][a-z0-9_-]*)@(?P<addr>[A-Za-z0-9.:\[\]-]+?)(:(?P<port>\d+))?$")


def suites(role: str) -> list[Path]:
    return [ROLES / "base" / "verify_base.py", ROLES / role / f"verify_{role}.py"]


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


def run_verify(project_dir: Path, stack: str, hosts: list[str], ssh_key: Path | None,
               extra_args: list[str] | None = None, junit_dir: Path | None = None) -> int:
    """Each host's suite in its own pytest, side by side; with junit_dir, each writes
    its JUnit report to junit_dir/<host>.xml (pytest's own --junitxml)."""
    deployment = load(project_dir, stack)
    names = {deployment.proxy.name: "proxy", **{a.name: "agent" for a in deployment.agents}}
    targets = parse_hosts(hosts, names)
    if ssh_key is not None and not Path(ssh_key).is_file():
        raise ConfigError("--ssh-key", str(ssh_key), "no such file", "a private key file")
    # Hosts are independent: verify them side by side, print each report whole.
    procs = []
    for name, role, spec in targets:
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROLES),
                "-c", str(ROLES / "pytest.ini"), f"--hosts={spec}",
                f"--agentctl-stack={stack}", f"--agentctl-project-dir={Path(project_dir).resolve()}",
                f"--agentctl-host={name}", *[str(s) for s in suites(role)], *(extra_args or [])]
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
    return worst
