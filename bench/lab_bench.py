"""Lab benchmark: `lab up` cold (image built from scratch) and warm (cached image),
`lab escape`, `lab verify`, `lab down`, on this machine. Writes bench/results/lab.md
(`--stack lab-hermes`: bench/results/lab-hermes.md, with what a message costs, from
bench/hermes_lab.py).

`--hosts vm`: the same lab on QEMU VMs (bench/results/lab-vm.md): the VM image built
cold and warm, `lab up --hosts vm`, `verify --score`, `escape`, `down`, with the container
lab's warm `up` in the same run as the baseline.

Run as root: python3 bench/lab_bench.py [--skip-cold] [--stack lab-hermes] [--hosts vm].
The cold run uses a private cache folder, so the shared cache is left as it is. Targets
(2 cores): warm up < 45 s, cold up < 180 s, verify < 60 s; the Hermes lab: warm up < 90 s,
what the proxy adds per model call < 50 ms; VMs under TCG: warm up < 240 s, the whole
up/verify --score/escape/down cycle < 600 s."""
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
RESULTS = ROOT / "bench" / "results"


def timed(args: list[str], env: dict, timeout: float = 900) -> tuple[float, int, str, str]:
    """Seconds, exit code, last line, and the whole output of one `agentctl lab` command."""
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, output = -1, f"timed out after {timeout:.0f} s"
    tail = output.strip().splitlines()[-1:]
    return time.monotonic() - t0, rc, tail[0] if tail else "", output


def score_rows(output: str, hosts: list[str]) -> list[str]:
    """`lab verify --score`'s table as Markdown rows: each host's lynis hardening index
    (target >= 85) and ssh-audit's verdict (no fail). Read from the first line of each
    host's row; rich wraps the long notes onto further lines, which are left out."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 4 and cells[0] in hosts:
            rows.append(f"| {cells[0]} | {cells[1]} | {'yes' if cells[1].isdigit() and int(cells[1]) >= 85 else 'NO'} "
                        f"| {cells[3].replace('|', '/')} |")
    return rows


def message_costs(stack: str, state: Path) -> list[str]:
    """Table rows: message to answer, and what the proxy adds per model call."""
    import hermes_lab  # beside this script
    from agentctl.stackfile import load

    d = load(ROOT, stack)
    m = hermes_lab.message_to_answer(d, state)
    c = hermes_lab.per_call(d, stack, state)
    added = (c["proxied"] - c["direct"]) * 1000
    rows = [f"| message to answer, median of {m['n']} (min-max) | {m['median']:.2f} s ({m['min']:.2f}-{m['max']:.2f}) | |",
            f"| model calls per message, median | {m['calls']:g} | |",
            f"| POST /v1/messages straight to the fake (proxy host), median of {c['n']} | {c['direct'] * 1000:.1f} ms | baseline |",
            f"| the same through the proxy (agent host), median of {c['n']} | {c['proxied'] * 1000:.1f} ms "
            f"({c['proxied'] / c['direct']:.2f}x) | |",
            f"| added by the proxy per model call | {added:.1f} ms | < 50 ms |"]
    for r in rows:
        print(r, flush=True)
    return rows


def _table(args, rows) -> list[str]:
    flags = (f" --stack {args.stack}" if args.stack != "lab" else "") + (" --hosts vm" if args.hosts == "vm" else "")
    lines = ["# Lab benchmark" + (" (hosts as QEMU VMs)" if args.hosts == "vm" else ""), "",
             f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
             f"Produced by `python3 bench/lab_bench.py{flags}`.", "",
             "| step | seconds | exit | target | last line |", "| --- | ---: | ---: | --- | --- |"]
    return lines + [f"| {n} | {s:.1f} | {rc} | {t} | {tail.replace('|', '/')[:90]} |" for n, s, rc, t, tail in rows]


def vm_cycle(args, state: Path, env: dict, rows: list, step, out: Path) -> int:
    """The VM rows, against the container lab's warm `up` measured in the same run."""
    step("container lab up, warm (baseline)", ["up"])
    step("lab down", ["down"])
    if not args.skip_cold:
        cold_cache = tempfile.mkdtemp(prefix="agentctl-lab-cache-")
        step("VM lab up, cold (VM image build)", ["up", "--hosts", "vm"], extra_env={"AGENTCTL_LAB_CACHE": cold_cache},
             timeout=1800)
        step("lab down", ["down"])
        subprocess.run(["rm", "-rf", cold_cache])
    step("VM lab up, warm (may build the shared VM image once)", ["up", "--hosts", "vm"], timeout=1800)
    step("lab down", ["down"])
    first = len(rows)
    step("VM lab up, warm", ["up", "--hosts", "vm"], "< 240 s", timeout=1800)
    output = step("VM lab verify --score", ["verify", "--score"], timeout=1800)
    scores = score_rows(output, ["proxy", "scout"])  # Pulumi.lab.yaml's hosts
    step("VM lab escape", ["escape"])
    step("lab down", ["down"])
    cycle = sum(r[1] for r in rows[first:])
    base = next(r[1] for r in rows if r[0].startswith("container lab up"))
    rows.append(("whole VM cycle (up, verify --score, escape, down)", cycle, 0, "< 600 s", ""))
    rows.append(("warm VM up / warm container up", rows[first][1] / base, 0, "", "ratio, not seconds"))
    lines = _table(args, rows) + ["", "Scores from `verify --score` in this run:", "",
                                  "| host | lynis hardening index | >= 85 | ssh-audit |", "| --- | ---: | --- | --- |",
                                  *(scores or ["| (no score rows in the output) | | NO | |"])]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    subprocess.run(["rm", "-rf", str(state)])
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-cold", action="store_true", help="only the warm-cache runs")
    p.add_argument("--verify-timeout", type=float, default=300)
    p.add_argument("--stack", default="lab", help="lab or lab-hermes (the real Hermes)")
    p.add_argument("--hosts", default="container", choices=["container", "vm"])
    args = p.parse_args()
    hermes = args.stack == "lab-hermes"
    out = RESULTS / f"{args.stack}{'-vm' if args.hosts == 'vm' else ''}.md"
    stack = ["--stack", args.stack]
    state = Path(tempfile.mkdtemp(prefix="agentctl-lab-bench-"))
    env = dict(os.environ, AGENTCTL_LAB_STATE=str(state))
    rows: list[tuple[str, float, int, str, str]] = []

    def step(name: str, cmd: list[str], target: str = "", timeout: float = 900, extra_env: dict | None = None):
        secs, rc, tail, output = timed(cmd, {**env, **(extra_env or {})}, timeout)
        rows.append((name, secs, rc, target, tail))
        print(f"{name}: {secs:.1f} s (exit {rc}) {tail}", flush=True)
        return output

    timed(["down"], env)
    if args.hosts == "vm":
        return vm_cycle(args, state, env, rows, step, out)
    if not args.skip_cold:
        cold_cache = tempfile.mkdtemp(prefix="agentctl-lab-cache-")
        step("lab up, cold (image build" + (", Hermes' wheels fetched)" if hermes else ")"), ["up", *stack],
             "< 180 s" if not hermes else "", extra_env={"AGENTCTL_LAB_CACHE": cold_cache})
        step("lab down", ["down"])
        subprocess.run(["rm", "-rf", cold_cache])
    step("lab up, warm (image cached)", ["up", *stack])  # may build the shared cache the first time
    step("lab down", ["down"])
    step("lab up, warm (image cached)", ["up", *stack], "< 90 s" if hermes else "< 45 s")
    step("lab up again (already up)", ["up", *stack])
    step("lab escape", ["escape", *stack])
    step("lab verify", ["verify", *stack], "< 60 s", timeout=args.verify_timeout)
    costs = message_costs(args.stack, state) if hermes else []
    step("lab down", ["down"])

    lines = _table(args, rows)
    if costs:
        lines += ["", "What a message costs (bench/hermes_lab.py; the fake model answers at once):", "",
                  "| measure | value | target |", "| --- | ---: | --- |", *costs]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    subprocess.run(["rm", "-rf", str(state)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
