"""The whole lab, end to end: a `lab up` killed mid-boot -> `lab up` recovers -> no
route out -> escape holds -> verify passes -> a hole opened on purpose is caught by
both -> down leaves nothing. Needs root, systemd-nspawn and mmdebstrap; the first run
builds the image (about 90 s), later runs reuse the week's cache."""
import json
import time
from pathlib import Path

import pytest

from agentctl.lab import hosts, netns, state, topology
from agentctl.stackfile import load
from tests.labrun import ROOT, killed_up, lab_cli, needs_lab, root_network

pytestmark = needs_lab


@pytest.fixture(scope="module")
def labenv(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("labstate")
    before = root_network()
    cli = lab_cli(state_dir)
    crashed = killed_up(state_dir)
    left_behind = state.load(state_dir)
    t0 = time.monotonic()
    up = cli("up")
    yield {"cli": cli, "up": up, "up_seconds": time.monotonic() - t0, "state_dir": state_dir,
           "before": before, "deployment": load(ROOT, "lab"), "crashed": crashed,
           "left_behind": left_behind}
    cli("down")  # whatever happened


def test_up_after_a_killed_up_recovers(labenv):
    """A `lab up` killed mid-boot leaves containers, mounts and namespaces; the next
    `lab up` clears them and converges."""
    assert labenv["crashed"], "the first `lab up` finished before it could be killed"
    assert "cleaning up what an earlier run left" in labenv["up"].stderr, labenv["up"].stderr[-2000:]
    assert state.live_processes(labenv["left_behind"]) == {}, "the killed run's processes still run"


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
