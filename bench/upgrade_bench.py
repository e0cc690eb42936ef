"""snapshot-upgrade benchmark in the lab: an accepted upgrade (1.0.0 -> 1.1.0) and a
rollback (--rollback of that upgrade), step by step, against a plain `lab up` (warm
image cache) plus one `lab verify`, measured in the same run. Writes
bench/results/upgrade.md.

Run as root, under the lab lock: flock /run/agentctl-lab.lock python3 bench/upgrade_bench.py [--repeats N]
Targets (issue 10): accepted upgrade < 2x (lab up + verify); rollback < that again."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "upgrade.md"
ACCEPT, ROLLBACK = "accepted upgrade 1.0.0 -> 1.1.0", "rollback of that upgrade"


def run(args: list[str], env: dict, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return time.monotonic() - t0, proc


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3, help="upgrade + rollback cycles (and verify runs) to measure")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: expected 1 or more")
    state = Path(tempfile.mkdtemp(prefix="agentctl-upgrade-bench-"))
    project = Path(tempfile.mkdtemp(prefix="agentctl-upgrade-bench-project-"))
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml"):
        shutil.copy(ROOT / name, project / name)
    for name in ("roles", "proxy", "templates", "stacks"):
        (project / name).symlink_to(ROOT / name)
    env = dict(os.environ, AGENTCTL_LAB_STATE=str(state))
    pd = ["--project-dir", str(project)]
    runs = {ACCEPT: [], ROLLBACK: []}  # per cycle: (seconds, the --json result)
    try:
        up_s, up = run(["lab", "up", *pd, "--state-dir", str(state)], env)
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            return 1
        verify_s = [run(["lab", "verify", *pd, "--state-dir", str(state)], env)[0] for _ in range(args.repeats)]
        for i in range(args.repeats):
            for label, extra in ((ACCEPT, ["--to", "1.1.0"]), (ROLLBACK, ["--rollback"])):
                took, proc = run(["snapshot-upgrade", "--stack", "lab", "--host", "scout", "--yes", "--json", *pd,
                                  "--state-dir", str(state), *extra], env)
                last = proc.stdout.strip().splitlines()[-1:] or ["{}"]
                result = json.loads(last[0])
                runs[label].append((took, result))
                print(f"{label} #{i + 1}: {took:.1f} s, {result.get('outcome', f'exit {proc.returncode}')}", flush=True)
    finally:
        subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", "down", "--state-dir", str(state)], cwd=ROOT,
                       env=env, capture_output=True)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)
    base = up_s + statistics.median(verify_s)
    lines = [f"# snapshot-upgrade benchmark ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}. "
             f"`python3 bench/upgrade_bench.py --repeats {args.repeats}` under the lab lock: one lab, "
             f"{args.repeats} verify runs, then {args.repeats} cycles of an accepted upgrade and its rollback. "
             "Seconds are medians, with the range.", "",
             "| what | seconds (median) | range | outcomes |", "|---|---:|---|---|",
             f"| lab up (warm cache) | {up_s:.1f} | one run | |",
             f"| lab verify (every host) | {statistics.median(verify_s):.1f} | {_range(verify_s)} | |"]
    for label, cycle in runs.items():
        outcomes = ", ".join(sorted({r.get("outcome", "none") for _, r in cycle}))
        lines.append(f"| {label} | {statistics.median([t for t, _ in cycle]):.1f} | {_range([t for t, _ in cycle])} "
                     f"| {outcomes} |")
        for name in [st["name"] for st in (cycle[0][1].get("steps") or [])]:
            took = [st["seconds"] for _, r in cycle for st in r.get("steps", []) if st["name"] == name]
            lines.append(f"|   {name} | {statistics.median(took):.1f} | {_range(took)} | |")
    accept = statistics.median([t for t, _ in runs[ACCEPT]])
    back = statistics.median([t for t, _ in runs[ROLLBACK]])
    lines += ["", f"Baseline (lab up + median verify): {base:.1f} s. Accepted upgrade: {accept:.1f} s = "
                  f"{accept / base:.2f}x (target < 2x). Rollback: {back:.1f} s = {back / base:.2f}x (target < 2x).", ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def _range(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


if __name__ == "__main__":
    sys.exit(main())
