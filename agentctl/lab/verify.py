"""`agentctl lab verify`: the role suites against the lab hosts, from the admin
namespace (the only place the switch lets SSH come from), and with --score the
figures of tools no one here wrote: lynis inside each host, ssh-audit from outside."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.table import Table

from agentctl import hardening
from agentctl.lab import hosts, lab, topology, vm

LYNIS_TIMEOUT = 300
# ssh-audit's current release from PyPI (pyproject.toml pins it), not Debian 12's 2.5,
# which predates the algorithms it would judge (it calls sntrup761x25519 experimental).
SSH_AUDIT = [sys.executable, "-m", "ssh_audit"]


def verify_argv(project_dir: Path, stack: str, state_dir: Path, junit_dir: Path | None = None) -> list[str]:
    d = lab.load_lab(project_dir, stack, state_dir)
    specs = [f"{name}=paramiko://admin@{lab.host_ip(d, name)}" for name in lab.host_names(d)]
    argv = ["ip", "netns", "exec", topology.ADMIN_NS, sys.executable, "-m", "agentctl.cli", "verify",
            "--stack", stack, "--project-dir", str(Path(project_dir).resolve()), "--distro", d.distro]
    for spec in specs:
        argv += ["--host", spec]
    # Host keys: the ones `lab up` pinned from each host's root; nothing else is accepted.
    argv += ["--ssh-key", str(lab.ssh_key(state_dir)), "--known-hosts", str(lab.known_hosts(state_dir)),
             "--first-contact", "refuse"]
    return argv + (["--junit-dir", str(Path(junit_dir).resolve())] if junit_dir is not None else [])


def run_suites(project_dir: Path, stack: str, state_dir: Path, junit_dir: Path | None = None,
               select: str | None = None) -> int:
    """The role suites from the admin namespace; their exit code. junit_dir: one JUnit
    file per host (what `agentctl stage` reads); select: a pytest -k expression, passed
    through pytest's own PYTEST_ADDOPTS to each host's pytest."""
    env = None
    if select:
        env = dict(os.environ, PYTEST_ADDOPTS=f"{os.environ.get('PYTEST_ADDOPTS', '')} -k {shlex.quote(select)}".strip())
    return subprocess.run(verify_argv(project_dir, stack, state_dir, junit_dir), env=env).returncode


def lynis_index(ns: str) -> tuple[int | None, str]:
    """lynis's hardening index, run inside the host (as a cloud user would run it)."""
    timeout = LYNIS_TIMEOUT * (5 if vm.is_vm(ns) else 1)  # a VM may run under TCG, ~5x slower here
    try:
        proc = hosts.run_in(ns, "lynis", "audit", "system", "--quick", "--no-colors", "--no-log", timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"lynis did not finish in {timeout} s"
    m = re.search(r"Hardening index\s*:\s*(\d+)", proc.stdout)
    warnings = re.search(r"Warnings \((\d+)\)", proc.stdout)
    if m is None:
        tail = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        return None, f"no hardening index (exit {proc.returncode}): {tail[-120:]}"
    if warnings is None and "no warnings" in proc.stdout:  # lynis: "Great, no warnings"
        return int(m.group(1)), "0 warnings"
    return int(m.group(1)), f"{warnings.group(1)} warnings" if warnings else "warnings not reported"


# The one finding accepted: a classic key exchange kept after the post-quantum one
# (hardening.SSH_KEX), for clients that have none (paramiko, which verify uses).
CLASSIC_KEX = hardening.SSH_KEX[1:]


def audit_accepted(finding: str) -> bool:
    """An ssh-audit report line that is no defect of these hosts: the post-quantum
    warning on a classic key exchange listed after sntrup761x25519."""
    words = finding.split()
    return (finding.startswith("(kex) ") and "[warn]" in finding and "post-quantum" in finding
            and len(words) > 1 and words[1] in CLASSIC_KEX)


def ssh_audit(ip: str) -> tuple[int, str, bool]:
    """ssh-audit's exit code, its fail/warn counts read from its text report (the JSON
    layout changes between releases; the markers do not), and whether the host passes:
    no fail, and no warn but the accepted ones."""
    proc = subprocess.run(["ip", "netns", "exec", topology.ADMIN_NS, *SSH_AUDIT, "--no-colors", ip],
                          capture_output=True, text=True, timeout=120)
    return (proc.returncode, *judge_audit(proc.stdout, proc.stderr))


def judge_audit(report: str, stderr: str = "") -> tuple[str, bool]:
    findings = [line for line in report.splitlines() if not line.startswith("(rec)")]
    fails = [line for line in findings if "[fail]" in line]
    warns = [line for line in findings if "[warn]" in line]
    if not findings:
        return (stderr or "no report").strip()[-200:], False
    named = "; ".join(line.split(" -- ")[0].strip() + ": " + line.split("]", 1)[-1].strip() for line in warns)
    note = f"{len(fails)} fail, {len(warns)} warn" + (f" ({named})" if named else "")
    return note, not fails and all(audit_accepted(w) for w in warns)


@contextmanager
def fail2ban_ignoring(ns: str, ip: str, quiet: float = 3, limit: float = 30) -> Iterator[None]:
    """ssh-audit's probing looks like an attack, and fail2ban rightly bans it. Ignore
    the admin namespace while it runs, and until fail2ban has read every line it left
    (fail2ban reads the journal a moment behind): a line read after the ignore ends
    would lock the lab's admin out."""
    hosts.run_in(ns, "fail2ban-client", "set", "sshd", "addignoreip", ip)
    try:
        yield
    finally:
        count = f"grep -c 'Ignore {ip} by ip' /var/log/fail2ban.log || true"
        seen, still_since, deadline = None, time.monotonic(), time.monotonic() + limit
        while time.monotonic() < deadline:
            now = hosts.run_in(ns, "sh", "-c", count).stdout.strip()
            if now != seen:
                seen, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                break
            time.sleep(0.5)
        hosts.run_in(ns, "fail2ban-client", "set", "sshd", "delignoreip", ip)
        hosts.run_in(ns, "fail2ban-client", "set", "sshd", "unbanip", ip)


def run(project_dir: Path, stack: str, state_dir: Path, score: bool, out: Console) -> int:
    lab.require_root()
    d = lab.load_lab(project_dir, stack, state_dir)
    if not lab.is_up(d, state_dir):
        raise lab.LabError(f"lab {stack} is not up (agentctl lab up)")
    t0 = time.monotonic()
    rc = run_suites(project_dir, stack, state_dir)
    out.print(f"role suites: {'passed' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    if score:
        table = Table(title="scores")
        for col in ("host", "lynis hardening index", "lynis", "ssh-audit"):
            table.add_column(col)
        admin_ip = next(n.ip for n in topology.nodes(d) if n.kind == "admin")
        names = lab.host_names(d)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:  # each host runs lynis on its own
            lynis = dict(zip(names, pool.map(lambda n: lynis_index(topology.host_netns(n)), names)))
        for name in names:
            ns = topology.host_netns(name)
            index, note = lynis[name]
            with fail2ban_ignoring(ns, admin_ip):
                audit_rc, audit_note, audit_ok = ssh_audit(lab.host_ip(d, name))
            table.add_row(name, str(index) if index is not None else "?", note,
                          f"{'' if audit_ok else 'FAILED '}exit {audit_rc}: {audit_note}")
            rc = rc or (0 if audit_ok else 1)
        out.print(table)
    return rc
