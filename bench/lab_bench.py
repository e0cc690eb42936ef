"""Lab benchmark: `lab up` cold (image built from scratch) and warm (cached image),
`lab escape`, `lab verify`, `lab down`, on this machine. Writes bench/results/lab.md.

Run as root: python3 bench/lab_bench.py [--skip-cold]. The cold run uses a private
cache folder, so the shared cache is left as it is. Targets (issue 5, 2 cores):
warm up < 45 s, cold up < 180 s, verify < 60 s."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "lab.md"


def timed(args: list[str], env: dict, timeout: float = 900) -> tuple[float, int, str]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        rc, tail = -1, [f"timed out after {timeout:.0f} s"]
    return time.monotonic() - t0, rc, tail[0] if tail else ""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-cold", action="store_true", help="only the warm-cache runs")
    p.add_argument("--verify-timeout", type=float, default=300)
    args = p.parse_args()
    state = Path(tempfile.mkdtemp(prefix="agentctl-lab-bench-"))
    env = dict(os.environ, AGENTCTL_LAB_STATE=str(state))
    rows: list[tuple[str, float, int, str, str]] = []

    def step(name: str, cmd: list[str], target: str = "", timeout: float = 900, extra_env: dict | None = None):
        secs, rc, tail = timed(cmd, {**env, **(extra_env or {})}, timeout)
        rows.append((name, secs, rc, target, tail))
        print(f"{name}: {secs:.1f} s (exit {rc}) {tail}", flush=True)

    timed(["down"], env)
    if not args.skip_cold:
        cold_cache = tempfile.mkdtemp(prefix="agentctl-lab-cache-")
        step("lab up, cold (image build)", ["up"], "< 180 s", extra_env={"AGENTCTL_LAB_CACHE": cold_cache})
        step("lab down", ["down"])
        subprocess.run(["rm", "-rf", cold_cache])
    step("lab up, warm (image cached)", ["up"])  # may build the shared cache the first time
    step("lab down", ["down"])
    step("lab up, warm (image cached)", ["up"], "< 45 s")
    step("lab up again (already up)", ["up"])
    step("lab escape", ["escape"])
    step("lab verify", ["verify"], "< 60 s", timeout=args.verify_timeout)
    step("lab down", ["down"])

    lines = ["# Lab benchmark", "",
             f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
             "Produced by `python3 bench/lab_bench.py`.", "",
             "| step | seconds | exit | target | last line |", "| --- | ---: | ---: | --- | --- |"]
    lines += [f"| {n} | {s:.1f} | {rc} | {t} | {tail.replace('|', '/')[:90]} |" for n, s, rc, t, tail in rows]
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")
    subprocess.run(["rm", "-rf", str(state)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
