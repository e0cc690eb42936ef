"""snapshot-upgrade benchmark in the lab: an accepted upgrade (1.0.0 -> 1.1.0) and a
rollback (--rollback of that upgrade), step by step, against a plain `lab up` (warm
image cache) plus one `lab verify`, measured in the same run. Writes
bench/results/upgrade.md.

Run as root, under the lab lock: flock /run/agentctl-lab.lock python3 bench/upgrade_bench.py
Targets (issue 10): accepted upgrade < 2x (lab up + verify); rollback < that again."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "upgrade.md"


def run(args: list[str], env: dict, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return time.monotonic() - t0, proc


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="agentctl-upgrade-bench-"))
    project = Path(tempfile.mkdtemp(prefix="agentctl-upgrade-bench-project-"))
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml"):
        shutil.copy(ROOT / name, project / name)
    for name in ("roles", "proxy", "templates", "stacks"):
        (project / name).symlink_to(ROOT / name)
    env = dict(os.environ, AGENTCTL_LAB_STATE=str(state))
    pd = ["--project-dir", str(project)]
    rows: list[tuple[str, float, str]] = []
    try:
        up_s, up = run(["lab", "up", *pd, "--state-dir", str(state)], env)
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            return 1
        verify_s, _ = run(["lab", "verify", *pd, "--state-dir", str(state)], env)
        base = up_s + verify_s
        rows += [("lab up (warm cache)", up_s, ""), ("lab verify (every host)", verify_s, "")]
        results = {}
        for label, extra in (("accepted upgrade 1.0.0 -> 1.1.0", ["--to", "1.1.0"]),
                             ("rollback of that upgrade", ["--rollback"])):
            took, proc = run(["snapshot-upgrade", "--stack", "lab", "--host", "scout", "--yes", "--json", *pd,
                              "--state-dir", str(state), *extra], env)
            last = proc.stdout.strip().splitlines()[-1:] or ["{}"]
            result = json.loads(last[0])
            results[label] = (took, result)
            rows.append((label, took, result.get("outcome", f"exit {proc.returncode}")))
            for step in result.get("steps", []):
                rows.append((f"  {step['name']}", step["seconds"], step["status"]))
    finally:
        subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", "down", "--state-dir", str(state)], cwd=ROOT,
                       env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)
    up_took = results["accepted upgrade 1.0.0 -> 1.1.0"][0]
    back_took = results["rollback of that upgrade"][0]
    lines = [f"# snapshot-upgrade benchmark ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}. "
             "`python3 bench/upgrade_bench.py` under the lab lock.", "",
             "| what | seconds | outcome |", "|---|---:|---|"]
    lines += [f"| {w} | {s:.1f} | {o} |" for w, s, o in rows]
    lines += ["", f"Baseline (lab up + verify): {base:.1f} s. Accepted upgrade: {up_took:.1f} s = "
                  f"{up_took / base:.2f}x (target < 2x). Rollback: {back_took:.1f} s = {back_took / base:.2f}x "
                  "(target < 2x).", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
