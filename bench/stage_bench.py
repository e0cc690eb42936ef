"""Stage benchmark: `agentctl stage run --stack lab` end to end against the sum of the
steps it runs done by hand in the same session: `lab up` + `lab verify --score` +
`lab escape` + `lab down` (stage verify reports the lynis and ssh-audit scores too). Stage also runs converge-again idempotence (the role suites'
idempotence test, again), which the hand-run steps do not: reported on its own line,
so the pipeline's own overhead is (stage - idempotence) / baseline - 1.
Target (issue 11): under 10%. Writes bench/results/stage.md.

Run as root, with the lab lock: flock /run/agentctl-lab.lock python3 bench/stage_bench.py"""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "stage.md"


def timed(args: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    return time.monotonic() - t0, proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    env = dict(os.environ, AGENTCTL_LAB_STATE=tempfile.mkdtemp(prefix="agentctl-stage-bench-"))
    env.pop("GITHUB_STEP_SUMMARY", None)
    timed(["lab", "down"], env)
    rows, base = [], 0.0
    for step in (["lab", "up"], ["lab", "verify", "--score"], ["lab", "escape"], ["lab", "down"]):
        s, rc, _ = timed(step, env)
        base += s
        rows.append((" ".join(step), s, rc))
    s, rc, text = timed(["stage", "run", "--stack", "lab"], env)
    idem = next((float(m) for m in re.findall(r"converge again \(idempotence\) \(([\d.]+) s\)", text)), 0.0)
    overhead = (s - idem) / base - 1
    lines = [
        "# stage benchmark", "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, warm image cache. `python3 bench/stage_bench.py`.", "",
        "| step | seconds | exit |", "|---|---|---|",
        *[f"| `agentctl {n}` | {t:.1f} | {c} |" for n, t, c in rows],
        f"| **sum of the steps by hand (baseline)** | **{base:.1f}** | |",
        f"| `agentctl stage run --stack lab` | {s:.1f} | {rc} |",
        f"| of which converge-again idempotence (not in the baseline) | {idem:.1f} | |", "",
        f"Pipeline overhead, idempotence left out: **{overhead:+.1%}** of the baseline "
        f"(target: under +10%); with it: {s / base - 1:+.1%}.", "",
    ]
    failed = [ln.strip() for ln in text.splitlines() if "FAILED" in ln or "left behind" in ln]
    if rc != 0:   # a failed run is no measurement of the pipeline: say what failed
        lines += ["`stage run` did not pass:", "", *[f"    {ln}" for ln in failed[:20]], ""]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if rc == 0 and all(c == 0 for _, _, c in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
