"""Shared by the lab end-to-end tests: run `agentctl lab ...` as a user would, and
read the machine's own network state (which the lab must never change)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agentctl.lab import state

ROOT = Path(__file__).resolve().parent.parent

needs_lab = [
    pytest.mark.lab, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, nspawn)"),
    pytest.mark.skipif(not (shutil.which("systemd-nspawn") and shutil.which("mmdebstrap")),
                       reason="systemd-nspawn and mmdebstrap are needed"),
]


UBUNTU_RELEASE = "http://archive.ubuntu.com/ubuntu/dists/noble/Release"


def ubuntu_archive_answers() -> bool:
    """An Ubuntu lab image is built from Ubuntu's archive: its tests run when it answers."""
    try:
        with urllib.request.urlopen(UBUNTU_RELEASE, timeout=10) as resp:
            return resp.status == 200 and b"Codename: noble" in resp.read(2048)
    except OSError:
        return False


def root_network() -> tuple[str, str]:
    """The machine's own routes and nftables rules: the lab must never change them."""
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return routes, rules


def lab_argv(state_dir: Path, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "agentctl.cli", "lab", *args]
    return argv if args[0] == "ssh" else argv + ["--state-dir", str(state_dir)]


def lab_cli(state_dir: Path, timeout: float = 900):
    env = dict(os.environ, AGENTCTL_LAB_STATE=str(state_dir))

    def cli(*args: str, check: int | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(lab_argv(state_dir, *args), cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check is not None:
            assert proc.returncode == check, proc.stdout + proc.stderr
        return proc

    return cli


def killed_up(state_dir: Path, timeout: float = 900) -> bool:
    """Start `lab up` and SIGKILL it once its hosts are booting, as a crash would: the
    lab is left half made (namespaces, mounts, running containers). True if it was
    killed mid-boot (it had not finished by itself)."""
    proc = subprocess.Popen(lab_argv(state_dir, "up"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p["what"].startswith("host ") for p in state.load(state_dir).processes.values()):
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
    return False


def escape_failures(cli) -> tuple[int, list[dict]]:
    """`lab escape --json`: its exit code and every attempt that did not hold."""
    proc = cli("escape", "--json")
    return proc.returncode, [r for r in json.loads(proc.stdout) if not r["ok"]]


def booted_lab(state_dir: Path, *up_args: str, timeout: float = 900):
    """A module fixture's body: `lab up` with up_args, the lab's handles, `lab down` after."""
    before = root_network()
    cli = lab_cli(state_dir, timeout)
    up = cli("up", *up_args)
    yield {"cli": cli, "up": up, "state_dir": state_dir, "before": before}
    cli("down")

