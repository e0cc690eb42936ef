"""The whole lab, end to end: up -> no route out -> escape holds -> a hole opened on
purpose is caught -> down leaves nothing. Needs root, systemd-nspawn and mmdebstrap;
the first run builds the image (about 90 s), later runs reuse the week's cache."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentctl.lab import hosts, netns, state, topology
from agentctl.stackfile import load

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.lab, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (namespaces, mounts, nspawn)"),
    pytest.mark.skipif(not (shutil.which("systemd-nspawn") and shutil.which("mmdebstrap")),
                       reason="systemd-nspawn and mmdebstrap are needed"),
]


def root_network() -> tuple[str, str]:
    """The machine's own routes and nftables rules: the lab must never change them."""
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return routes, rules


@pytest.fixture(scope="module")
def labenv(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("labstate")
    env = dict(os.environ, AGENTCTL_LAB_STATE=str(state_dir))
    before = root_network()

    def cli(*args, check=None):
        proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", *args, "--state-dir", str(state_dir)]
                              if args[0] != "ssh" else [sys.executable, "-m", "agentctl.cli", "lab", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if check is not None:
            assert proc.returncode == check, proc.stdout + proc.stderr
        return proc

    t0 = time.monotonic()
    up = cli("up")
    yield {"cli": cli, "up": up, "up_seconds": time.monotonic() - t0, "state_dir": state_dir,
           "before": before, "deployment": load(ROOT, "lab")}
    cli("down")  # whatever happened


def test_up_converges_every_host(labenv):
    up = labenv["up"]
    assert up.returncode == 0, up.stdout + up.stderr
    assert "proxy" in up.stdout and "scout" in up.stdout and "done" in up.stdout


def test_no_lab_namespace_routes_out_and_the_machine_is_untouched(labenv):
    d = labenv["deployment"]
    assert set(topology.namespaces(d)) <= set(netns.lab_namespaces_present())
    assert netns.routes_out_of_lab(d) == []
    for ns in topology.namespaces(d):
        assert not [r for r in netns.routes(ns) if r.get("dst") == "default"], ns
    assert root_network() == labenv["before"]


def test_second_up_is_a_no_op(labenv):
    t0 = time.monotonic()
    again = labenv["cli"]("up", check=0)
    assert "already up" in again.stdout and time.monotonic() - t0 < 15


def test_status_reports_up(labenv):
    st = labenv["cli"]("status", check=0)
    assert "lab lab: up" in st.stdout and "routes only lab prefixes" in st.stdout


def test_escape_holds(labenv):
    proc = labenv["cli"]("escape", "--json")
    results = json.loads(proc.stdout)
    failed = [r for r in results if not r["ok"]]
    assert proc.returncode == 0 and not failed, json.dumps(failed, indent=1)
    allowed = next(r for r in results if r["id"] == "allowed")
    assert "upstream saw the injected credential" in allowed["evidence"]


def test_verify_passes_on_every_host(labenv):
    proc = labenv["cli"]("verify")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.stdout.count(" passed") >= 2 and " failed" not in proc.stdout


def test_an_opened_hole_makes_escape_fail(labenv):
    """Both layers opened on purpose (the switch's security group and the agent's ufw):
    escape must notice, or it could never fail."""
    d = labenv["deployment"]
    netns.add_switch_rule(f"ip saddr {d.agent_subnet} ip daddr {topology.INTERNET_V4} accept")
    hosts.run_in(topology.host_netns(d.agents[0].name), "ufw", "disable")
    proc = labenv["cli"]("escape", "--json")
    results = {r["id"]: r for r in json.loads(proc.stdout)}
    assert proc.returncode == 1
    assert not results["ip-evil"]["ok"] and not results["ip-api"]["ok"]


def test_verify_fails_on_the_opened_hole(labenv):
    """The role suite notices the agent's disabled firewall: verify can fail."""
    proc = labenv["cli"]("verify")
    assert proc.returncode != 0
    assert "test_ufw_active_default_deny_both_ways" in proc.stdout


def test_down_leaves_nothing(labenv):
    st = state.load(labenv["state_dir"])
    pids = [int(p) for p in st.processes]
    down = labenv["cli"]("down", check=0)
    assert "left behind" not in down.stdout
    assert netns.lab_namespaces_present() == []
    assert state.lab_mounts(labenv["state_dir"]) == []
    assert all(state.start_time(p) is None or _zombie(p) for p in pids)
    assert root_network() == labenv["before"]


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
