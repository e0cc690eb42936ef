"""The agent host's runtime, for the engine: read its version, install another, accept it.

Everything runs over SSH as `admin` (ssh.py: the host key pinned, never accepted),
with `sudo -n` where root is needed:

- preflight: `agentctl-runtime-install --installed` (the version first boot or the
  last upgrade recorded), the new version's presence at the package index, disk room;
- upgrade: the operator opens the host's upgrade grant on the proxy host (admin SSH
  there: `agentctl-proxy grant open`, only the package source's hosts and paths, a
  deadline), runs the same install script first boot ran, restarts the agent, and
  closes the grant whatever happened;
- acceptance: the role suite through `agentctl verify`'s own code path (a child
  `agentctl verify` for this one host, the same pinned keys), the agent service
  active, the watchdog's checks, the runtime's health command, and every --check.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agentctl.errors import AgentctlError, ConfigError
from agentctl.model import PackagePin
from agentctl.render import AGENT_SERVICE, PROXY_BIN, RUNTIME_INSTALL
from agentctl.upgrade.ssh import AdminSsh

MIN_FREE_MB = 512  # a venv of a large runtime (Hermes and its dependencies) fits with room
WATCHDOG = "/usr/local/sbin/agentctl-watchdog"
# A state folder of its own, so an acceptance run neither counts toward nor resets the
# real watchdog's failure streak.
WATCHDOG_PROBE_STATE = "/run/agentctl-upgrade-watchdog"


class HostStepError(AgentctlError):
    exit_code = 1


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


@dataclass
class HostRuntime:
    host: str
    pin: PackagePin
    health: str | None
    checks: list[str]
    agent_ssh: Callable[[], AdminSsh]
    proxy_ssh: Callable[[], AdminSsh]
    versions: Callable[[], set[str]]  # the versions the package index has
    verify: Callable[[], tuple[bool, str]]  # the role suite: (passed, its last line)
    run_id: Callable[[], str] = lambda: "snapshot-upgrade"
    grant_minutes: int = 30
    health_wait: float = 30
    boot_wait: float = 180  # a restored host boots again before acceptance
    log: list[str] = field(default_factory=list)

    # --- preflight ---------------------------------------------------------------------

    def preflight(self, version: str) -> str:
        available = self.versions()
        if version not in available:
            near = ", ".join(sorted(available)[-5:]) or "none"
            raise ConfigError("--to", version, f"{self.pin.name} {version} is not at {self.pin.index}",
                              f"a version the index has (latest: {near})")
        with self.agent_ssh() as ssh:
            r = ssh.run(f"sudo -n {RUNTIME_INSTALL} --installed")
            if r.rc != 0:
                raise ConfigError("--host", self.host, f"reports no installed runtime ({_last_line(r.err)})",
                                  f"a host whose runtime {self.pin.name} was installed by agentctl")
            installed = r.out.strip()
            r = ssh.run("df --output=avail -m /opt | tail -n 1")
            free = int(r.out.strip() or 0) if r.rc == 0 and r.out.strip().isdigit() else 0
            if free < MIN_FREE_MB:
                raise ConfigError("--host", self.host, f"has {free} MB free under /opt",
                                  f"at least {MIN_FREE_MB} MB for the new version beside the old")
        return installed

    # --- upgrade -----------------------------------------------------------------------

    def _grant(self, proxy: AdminSsh, action: str) -> None:
        if action == "open":
            rules = " ".join("--rule " + shlex.quote(json.dumps(r.model_dump(exclude_none=True, exclude_defaults=True)
                                                                 | {"host": r.host, "methods": r.methods,
                                                                    "paths": r.paths}))
                             for r in self.pin.grant_rules())
            cmd = (f"sudo -n {PROXY_BIN} grant open --agent {shlex.quote(self.host)} "
                   f"--run-id {shlex.quote(self.run_id())} --minutes {self.grant_minutes} {rules}")
        else:
            cmd = f"sudo -n {PROXY_BIN} grant close --agent {shlex.quote(self.host)}"
        r = proxy.run(cmd, timeout=60)
        if r.rc != 0:
            raise HostStepError(f"proxy: grant {action} for {self.host} failed: {_last_line(r.err or r.out)}")
        self.log.append(f"grant {action}: {_last_line(r.out)}")

    def upgrade(self, version: str) -> None:
        with self.proxy_ssh() as proxy:
            self._grant(proxy, "open")
            try:
                with self.agent_ssh() as ssh:
                    r = ssh.run(f"sudo -n {RUNTIME_INSTALL} {shlex.quote(version)}", timeout=1800)
                    if r.rc != 0:
                        raise HostStepError(f"install of {self.pin.name} {version} failed: {_last_line(r.err)}")
                    r = ssh.run(f"sudo -n systemctl restart {AGENT_SERVICE}", timeout=120)
                    if r.rc != 0:
                        raise HostStepError(f"restarting {AGENT_SERVICE} failed: {_last_line(r.err)}")
            finally:
                self._grant(proxy, "close")  # at the step's end, whatever happened

    # --- acceptance --------------------------------------------------------------------

    def accept(self, checks: bool = True) -> list[str]:
        failures: list[str] = []
        # After a restart or a restore the host may still be booting: wait for its sshd
        # first (its host key still checked), then judge it.
        with self.agent_ssh().patient(self.boot_wait) as ssh:
            passed, line = self.verify()
            if not passed:
                failures.append(f"role suite: {line}")
            if ssh.run(f"systemctl is-active --quiet {AGENT_SERVICE}").rc != 0:
                failures.append(f"{AGENT_SERVICE} is not active")
            r = ssh.run(f"sudo -n rm -rf {WATCHDOG_PROBE_STATE} && sudo -n env AGENTCTL_WATCHDOG_STATE="
                        f"{WATCHDOG_PROBE_STATE} {WATCHDOG} && sudo -n cat {WATCHDOG_PROBE_STATE}/failures")
            if r.rc != 0 or r.out.strip() != "0":
                failures.append("the watchdog's checks fail (journalctl -t agentctl-watchdog)")
            if self.health:
                # The service was just restarted: give the runtime a moment to answer.
                deadline = time.monotonic() + self.health_wait
                while True:
                    r = ssh.run(self.health, timeout=60)
                    if r.rc == 0 or time.monotonic() > deadline:
                        break
                    time.sleep(2)
                if r.rc != 0:
                    failures.append(f"runtime health ({self.health}) exits {r.rc}")
            for cmd in self.checks if checks else []:
                r = ssh.run(cmd, timeout=600)
                if r.rc != 0:
                    failures.append(f"--check {cmd!r} exits {r.rc}: {_last_line(r.err or r.out)}")
        return failures


def verify_child(argv_prefix: list[str], argv: list[str], report: Path) -> Callable[[], tuple[bool, str]]:
    """`agentctl verify` for one host, as its own process (the lab runs it inside the
    lab's admin namespace): the role suite exactly as the verify command runs it. Its
    whole output is appended to `report` (the step's detail has room for a line only)."""
    def run() -> tuple[bool, str]:
        proc = subprocess.run([*argv_prefix, *argv], capture_output=True, text=True, timeout=1200)
        out = proc.stdout + proc.stderr
        report.parent.mkdir(parents=True, exist_ok=True)
        with report.open("a") as fh:
            fh.write(f"=== role suite {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} exit {proc.returncode}\n{out}\n")
        # pytest's short summary names what failed; the last line only counts it
        failed = [ln.split(" - ")[0].removeprefix("FAILED ") for ln in out.splitlines() if ln.startswith("FAILED ")]
        return proc.returncode == 0, "; ".join([_last_line(out), *failed, f"report: {report}"])[:700]
    return run
