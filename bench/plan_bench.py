"""Benchmark `agentctl plan` for 1, 10 and 50 agents (AWS and Hetzner example stacks,
agents cloned from the first one), each run in its own process as a user runs it.

    python bench/plan_bench.py [--out bench/results/plan.md] [--repeat 3]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (1, 10, 50)
STACKS = ("example-aws", "example-hcloud")


def write_stack(folder: Path, stack: str, agents: int) -> None:
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    template = doc["config"]["agentctl:agents"][0]
    doc["config"]["agentctl:agents"] = [{**copy.deepcopy(template), "name": f"agent{i:03d}"} for i in range(agents)]
    (folder / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


# The baseline: the same command importing the provider packages whole, as `pulumi up` does
# (agentctl/provider_imports.py is what plan does instead).
WHOLE_PACKAGES = "import agentctl.provider_imports as p; p.install = lambda *a, **k: None; "


def time_plan(folder: Path, stack: str, prelude: str = "") -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", prelude + "from agentctl.cli import main; main()", "plan",
                           "--stack", stack, "--json", "--project-dir", str(folder)], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/plan.md")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    rows = []
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "Pulumi.yaml", folder)
        for stack in STACKS:
            times = {}
            for n in COUNTS:
                write_stack(folder, stack, n)
                times[n] = statistics.median(time_plan(folder, stack) for _ in range(opts.repeat))
            # Per-agent cost between 1 and 10 agents vs between 10 and 50: ~1.0 means linear.
            low, high = (times[10] - times[1]) / 9, (times[50] - times[10]) / 40
            rows.append((stack, times, low, high))
        write_stack(folder, "example-aws", 1)
        whole = statistics.median(time_plan(folder, "example-aws", WHOLE_PACKAGES) for _ in range(opts.repeat))
    load_after = os.getloadavg()
    loads = "/".join(f"{x:.2f}" for x in load_before), "/".join(f"{x:.2f}" for x in load_after)
    lines = ["# `agentctl plan` benchmark", "",
             f"Median of {opts.repeat} runs, each a fresh `agentctl plan --json` process (imports included).",
             f"Run {started:%Y-%m-%d %H:%M} UTC. Machine: {platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, {platform.system()}; shared with other work: load average "
             f"(1/5/15 min) {loads[0]} before, {loads[1]} after.", "",
             "| stack | 1 agent (s) | 10 agents (s) | 50 agents (s) | s/agent 1→10 | s/agent 10→50 | growth ratio |",
             "|---|---|---|---|---|---|---|"]
    for stack, t, low, high in rows:
        # Below timing noise (a few ms per agent) the ratio means nothing: say so.
        ratio = f"{high / low:.2f}" if low > 0.01 else "n/a (per-agent cost below noise)"
        lines.append(f"| {stack} | {t[1]:.2f} | {t[10]:.2f} | {t[50]:.2f} | {low:.3f} | {high:.3f} | {ratio} |")
    aws_one = rows[0][1][1]
    lines += ["", f"Baseline, same run: example-aws, 1 agent, importing the provider packages whole (as `pulumi up` "
              f"does): {whole:.2f} s; `plan` loads only the resource modules the program uses "
              f"(agentctl/provider_imports.py): {aws_one:.2f} s = {aws_one / whole:.2f}x."]
    lines += ["", "Targets (issue 4): 1 agent under 3 s, 50 agents under 15 s, growing linearly "
              "(growth ratio = per-agent cost 10→50 over per-agent cost 1→10; near 1 is linear)."]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
