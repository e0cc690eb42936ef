"""`agentctl stage` on a `cloud: lab` stack, through the lab's own library: up is
`lab up`, verify is the role suites (`lab verify`) + `lab escape` + converge again,
down is `lab down`. verify also reports `lab verify --score`'s lynis and ssh-audit figures. Nothing here re-implements a lab step; it collects their results."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

from agentctl.errors import ConfigError
from agentctl.lab import escape as lab_escape
from agentctl.lab import lab, topology
from agentctl.lab import verify as lab_verify
from agentctl.model import Deployment
from agentctl.stage.results import Check, EscapeRow, HostRow, ScoreRow, StageResult, Suite, suite_from_pytest_junit

# What `lab up` runs on this machine (./dev installs them: systemd-container,
# mmdebstrap, nftables, iproute2).
LAB_TOOLS = ("systemd-nspawn", "mmdebstrap", "nft", "ip")
# The role suites' own idempotence test (roles/base/verify_base.py): re-run the
# modules and the converge script, no managed file may change. Run again after
# every other check has exercised the hosts.
IDEMPOTENCE_TEST = "test_converge_is_idempotent"
Progress = Callable[[str], None]


class LabStage:
    cloud = "lab"

    def __init__(self, project_dir: Path, stack: str, d: Deployment, state_dir: Path, cache_dir: Path):
        self.project_dir, self.stack, self.d = project_dir, stack, d
        self.state_dir, self.cache_dir = state_dir, cache_dir

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "stage.lock"

    def preflight(self) -> None:
        """Before anything is made: the lab's tools and root, or one line, exit 2."""
        source = f"Pulumi.{self.stack}.yaml"
        missing = [t for t in LAB_TOOLS if shutil.which(t) is None]
        if missing:
            raise ConfigError(source, "agentctl:cloud", f"is 'lab', but this machine lacks the lab's tools: "
                              f"{', '.join(missing)}", "systemd-nspawn, mmdebstrap, nft and ip (./dev setup installs them)")
        if os.geteuid() != 0:
            raise ConfigError(source, "agentctl:cloud", "is 'lab', which needs root (namespaces, mounts, nspawn)",
                              "agentctl stage run as root")

    def up(self, progress: Progress) -> Suite:
        result = lab.up(self.project_dir, self.stack, self.state_dir, self.cache_dir, progress)
        suite = Suite("converge")
        if result.already_up:
            suite.checks.append(Check("lab already up and converged", True, "converge"))
        for h in result.hosts:
            svc = ", ".join(f"{k} {v}" for k, v in h.services.items())
            ok = h.converged and all(v == "active" for v in h.services.values())
            suite.checks.append(Check(f"{h.name}: cloud-init done, service active", ok, "converge",
                                      result.seconds, "" if ok else f"cloud-init: {h.detail or '?'}; {svc or 'no service'}"))
        return suite

    def hosts(self) -> list[HostRow]:
        up = lab.is_up(self.d, self.state_dir)
        return [HostRow(n, "proxy" if n == self.d.proxy.name else "agent", lab.host_ip(self.d, n),
                        "up" if up else "down") for n in lab.host_names(self.d)]

    def verify(self, work_dir: Path, progress: Progress) -> StageResult:
        if not lab.is_up(self.d, self.state_dir):
            raise lab.LabError(f"stage: lab {self.stack} is not up (agentctl stage up --stack {self.stack})")
        result = StageResult(self.stack, self.cloud, hosts=self.hosts())
        names = lab.host_names(self.d)

        progress("role suites (from the admin namespace)")
        lab_verify.run_suites(self.project_dir, self.stack, self.state_dir, junit_dir=work_dir / "role-suites")
        result.suites += [suite_from_pytest_junit(work_dir / "role-suites" / f"{n}.xml", f"role suite: {n}")
                          for n in names]

        progress("escape attempts (as agentuser on each agent host)")
        t0 = time.monotonic()
        try:
            escaped = lab_escape.run_escape(self.project_dir, self.stack, self.state_dir)
        except lab.LabError as exc:
            result.suites.append(Suite("escape", [Check("escape probe ran", False, "escape", message=str(exc), error=True)]))
            escaped = []
        per = (time.monotonic() - t0) / max(1, sum(len(v) for _, v in escaped))
        for agent, verdicts in escaped:
            suite = Suite(f"escape: {agent}")
            for v in verdicts:
                a, verdict = v.attempt, lab_escape.outcome(v)
                seen = "; ".join(filter(None, [v.observed, *v.evidence]))
                suite.checks.append(Check(f"{a.id}: {a.vector}", v.ok, f"escape.{agent}", per,
                                          "" if v.ok else f"{verdict}: {a.what}: expected {a.expect}, observed {seen}",
                                          details=seen))
                result.escapes.append(EscapeRow(agent, a.vector, a.id, a.what, a.expect, seen, verdict))
            result.suites.append(suite)

        progress("scores (lynis inside each host, ssh-audit from the admin namespace)")
        result.suites.append(self._scores(names, result))

        progress("converge again (idempotence)")
        lab_verify.run_suites(self.project_dir, self.stack, self.state_dir, junit_dir=work_dir / "idempotence",
                              select=IDEMPOTENCE_TEST)
        idem = Suite("idempotence")
        for n in names:
            for c in suite_from_pytest_junit(work_dir / "idempotence" / f"{n}.xml", n).checks:
                c.name, c.classname = f"{n}: converge again changes nothing", "idempotence"
                idem.checks.append(c)
        result.suites.append(idem)
        return result

    def _scores(self, names: list[str], result: StageResult) -> Suite:
        """`lab verify --score`'s figures as checks: lynis must give its hardening index,
        ssh-audit must find no fail and no warn but the accepted classic key exchanges
        (lab_verify.audit_accepted)."""
        suite = Suite("scores")
        admin_ip = next(n.ip for n in topology.nodes(self.d) if n.kind == "admin")
        for n in names:
            ns = topology.host_netns(n)
            t0 = time.monotonic()
            try:
                index, note = lab_verify.lynis_index(ns)
            except subprocess.TimeoutExpired as exc:
                index, note = None, f"lynis did not finish within {exc.timeout:.0f} s"
            suite.checks.append(Check(f"{n}: lynis hardening index", index is not None, "scores",
                                      time.monotonic() - t0, "" if index is not None else note,
                                      details=f"hardening index {index}, {note}" if index is not None else note))
            t0 = time.monotonic()
            try:
                with lab_verify.fail2ban_ignoring(ns, admin_ip):
                    rc, audit, ok = lab_verify.ssh_audit(lab.host_ip(self.d, n))
            except subprocess.TimeoutExpired as exc:
                rc, audit, ok = -1, f"ssh-audit did not finish within {exc.timeout:.0f} s", False
            suite.checks.append(Check(f"{n}: ssh-audit finds nothing but the classic-kex warnings", ok, "scores", time.monotonic() - t0,
                                      "" if ok else f"exit {rc}: {audit}", details=f"exit {rc}: {audit}"))
            result.scores.append(ScoreRow(n, index, note, f"exit {rc}: {audit}"))
        return suite

    def down(self, progress: Progress) -> list[str]:
        """What was left behind (empty: nothing)."""
        return lab.down(self.state_dir, progress).leftovers
