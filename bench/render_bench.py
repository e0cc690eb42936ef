"""Benchmark: render a 50-agent stack (target: under 2 s). In-process render_hosts
(with the ratio against a 1-agent render measured in the same run, so the figure is
about scaling, not the machine), and the `agentctl render` command end to end (a new
Python process: imports, config load, render, size checks, atomic write), plus
`agentctl --help` (startup alone). Writes bench/results/render.md."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from agentctl.ca import new_ca
from agentctl.render import render_hosts
from agentctl.stackfile import from_config

ROOT = Path(__file__).resolve().parent.parent


def deployment(n: int):
    config = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
    agent = config["agentctl:agents"][0]
    config["agentctl:agents"] = [dict(agent, name=f"agent{i:03d}") for i in range(n)]
    return from_config(config, "bench")


def timed(n: int, repeat: int = 5) -> float:
    d, pem = deployment(n), new_ca("bench")[1].decode()
    render_hosts(d, pem, stack="bench")  # warm the template cache, as a second render would be
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        render_hosts(d, pem, stack="bench")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _cli(*args: str, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def end_to_end(n: int, repeat: int = 5) -> tuple[float, float]:
    """Median seconds of `agentctl render` for an n-agent stack, and of `agentctl --help`."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
        doc = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
        agent = doc["config"]["agentctl:agents"][0]
        doc["config"]["agentctl:agents"] = [dict(agent, name=f"agent{i:03d}") for i in range(n)]
        (project / "Pulumi.bench.yaml").write_text(yaml.safe_dump(doc))
        args = ("render", "--stack", "bench", "--out", "out")
        _cli(*args, cwd=project)  # first run makes the stack's CA; later runs replace the output
        render = statistics.median(_cli(*args, cwd=project) for _ in range(repeat))
        helps = statistics.median(_cli("--help", cwd=project) for _ in range(repeat))
    return render, helps


def main() -> None:
    one, ten, fifty = timed(1), timed(10), timed(50)
    cli_fifty, cli_help = end_to_end(50)
    load = os.getloadavg()[0]
    lines = ["# Render benchmark", "", f"Median of 5 runs, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
             f"load average {load:.1f} at the end (other work on the machine).", "",
             "In process (`render_hosts`, warm template cache):", "",
             "| agents | seconds | per host (ms) | ratio to 1 agent |", "|---|---|---|---|"]
    for n, t in ((1, one), (10, ten), (50, fifty)):
        lines.append(f"| {n} | {t:.3f} | {1000 * t / (n + 1):.1f} | {t / one:.1f}x |")
    lines += ["", "End to end (a new `python -m agentctl.cli` process each run):", "",
              "| command | seconds |", "|---|---|",
              f"| `agentctl render` (50 agents, lab stack) | {cli_fifty:.2f} |",
              f"| `agentctl --help` (startup only) | {cli_help:.2f} |", "",
              f"Target: 50 agents under 2 s -> in process {'met' if fifty < 2 else 'NOT met'} ({fifty:.2f} s), "
              f"end to end {'met' if cli_fifty < 2 else 'NOT met'} ({cli_fifty:.2f} s)."]
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "render.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
