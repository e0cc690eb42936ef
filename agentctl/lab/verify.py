"""`agentctl lab verify`: the role suites against the lab hosts, from the admin
namespace (the only place the switch lets SSH come from), and with --score the
figures of tools no one here wrote: lynis inside each host, ssh-audit from outside."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agentctl.lab import hosts, lab, topology

LYNIS_TIMEOUT = 300


def verify_argv(project_dir: Path, stack: str, state_dir: Path) -> list[str]:
    d = lab.load_lab(project_dir, stack)
    specs = [f"{name}=paramiko://admin@{lab.host_ip(d, name)}" for name in lab.host_names(d)]
    argv = ["ip", "netns", "exec", topology.ADMIN_NS, sys.executable, "-m", "agentctl.cli", "verify",
            "--stack", stack, "--project-dir", str(Path(project_dir).resolve())]
    for spec in specs:
        argv += ["--host", spec]
    return argv + ["--ssh-key", str(lab.ssh_key(state_dir))]


def lynis_index(ns: str) -> tuple[int | None, str]:
    """lynis's hardening index, run inside the host (as a cloud user would run it)."""
    proc = hosts.run_in(ns, "lynis", "audit", "system", "--quick", "--no-colors", "--no-log",
                        timeout=LYNIS_TIMEOUT)
    m = re.search(r"Hardening index\s*:\s*(\d+)", proc.stdout)
    warnings = re.search(r"Warnings \((\d+)\)", proc.stdout)
    return (int(m.group(1)) if m else None), (f"{warnings.group(1)} warnings" if warnings else proc.stderr[-200:])


def ssh_audit(ip: str) -> tuple[int, str]:
    """ssh-audit's exit code (0 = nothing to fix) and its fail/warn counts."""
    proc = subprocess.run(["ip", "netns", "exec", topology.ADMIN_NS, "ssh-audit", "-j", ip],
                          capture_output=True, text=True, timeout=120)
    fails = warns = 0
    try:
        data = json.loads(proc.stdout)
        recs = data.get("recommendations", {})
        for level in ("critical", "warning"):
            for items in (recs.get(level) or {}).values():
                n = sum(len(v) for v in items.values()) if isinstance(items, dict) else len(items)
                if level == "critical":
                    fails += n
                else:
                    warns += n
    except (json.JSONDecodeError, AttributeError):
        return proc.returncode, (proc.stdout or proc.stderr).strip()[-200:]
    return proc.returncode, f"{fails} critical, {warns} warnings"


def run(project_dir: Path, stack: str, state_dir: Path, score: bool, out: Console) -> int:
    lab.require_root()
    d = lab.load_lab(project_dir, stack)
    if not lab.is_up(d, state_dir):
        raise lab.LabError(f"lab {stack} is not up (agentctl lab up)")
    t0 = time.monotonic()
    rc = subprocess.run(verify_argv(project_dir, stack, state_dir)).returncode
    out.print(f"role suites: {'passed' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.1f} s")
    if score:
        table = Table(title="scores")
        for col in ("host", "lynis hardening index", "lynis", "ssh-audit"):
            table.add_column(col)
        for name in lab.host_names(d):
            index, note = lynis_index(topology.host_netns(name))
            audit_rc, audit_note = ssh_audit(lab.host_ip(d, name))
            # ssh-audit's probing looks like an attack, and fail2ban rightly bans it:
            # lift that ban for the admin namespace so the lab stays reachable.
            admin_ip = next(n.ip for n in topology.nodes(d) if n.kind == "admin")
            hosts.run_in(topology.host_netns(name), "fail2ban-client", "set", "sshd", "unbanip", admin_ip)
            table.add_row(name, str(index) if index is not None else "?", note,
                          f"exit {audit_rc}: {audit_note}")
        out.print(table)
    return rc
