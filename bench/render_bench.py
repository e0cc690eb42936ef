"""Benchmark: render a 50-agent stack (target: under 2 s). Reports the ratio against a
1-agent render measured in the same run, so the figure is about scaling, not the
machine. Writes bench/results/render.md."""
from __future__ import annotations

import statistics
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


def main() -> None:
    one, ten, fifty = timed(1), timed(10), timed(50)
    lines = ["# Render benchmark", "", f"Median of 5 runs, warm template cache, {time.strftime('%Y-%m-%d')}.", "",
             "| agents | seconds | per host (ms) | ratio to 1 agent |", "|---|---|---|---|"]
    for n, t in ((1, one), (10, ten), (50, fifty)):
        lines.append(f"| {n} | {t:.3f} | {1000 * t / (n + 1):.1f} | {t / one:.1f}x |")
    lines += ["", f"Target: 50 agents under 2 s -> {'met' if fifty < 2 else 'NOT met'} ({fifty:.2f} s)."]
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / "render.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
