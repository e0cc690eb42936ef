"""The lab end to end, booted once, through the staging pipeline (`agentctl stage ...
--stack lab`) with the lab's own commands checked on the same lab:

  a `lab up` killed mid-boot -> `stage up` recovers and converges, while a second
  `stage run` on the stack is refused -> no route out, the machine untouched -> a second
  up is a no-op, status reports up -> `lab escape` holds, `lab verify` passes ->
  `stage verify --report` passes with a schema-valid JUnit report -> a hole opened on
  purpose is caught by `lab escape`, `lab verify` and `stage run --keep-on-failure`
  (which names the vector in its JUnit report and leaves the lab up) -> the hole closed,
  `agentctl stage run --stack lab` passes (up: already up; verify; down) and its down
  leaves nothing: no namespace, mount or process, the machine's network as before.

That a *failing* `stage run` still tears down is the CLI's control flow, checked with a
stand-in driver in tests/test_stage_cli.py: on one boot, only one run can tear down.
Needs root, systemd-nspawn and mmdebstrap; the module holds the machine-wide lab lock
(/run/agentctl-lab.lock, the one flock(1) takes) from start to end."""
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agentctl.lab import hosts, lab, netns, state, topology
from agentctl.stackfile import load
from tests.labrun import ROOT, killed_up, lab_cli, needs_lab, root_network

pytestmark = needs_lab
SCHEMA = Path(__file__).parent / "data" / "junit.xsd"


@pytest.fixture(scope="module")
def lab_lock():
    """The lock every lab user on this machine takes (flock(1) takes the same one)."""
    fd = os.open("/run/agentctl-lab.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    os.close(fd)


@pytest.fixture(scope="module")
def env(lab_lock, tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("stagestate")
    e = dict(os.environ, AGENTCTL_LAB_STATE=str(state_dir))
    e.pop("GITHUB_STEP_SUMMARY", None)
    before = root_network()
    cli = lab_cli(state_dir)

    def stage(*args, timeout=900):
        return subprocess.run([sys.executable, "-m", "agentctl.cli", "stage", *args, "--stack", "lab"],
                              cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)

    crashed = killed_up(state_dir)
    left_behind = state.load(state_dir)
    first = subprocess.Popen([sys.executable, "-m", "agentctl.cli", "stage", "up", "--stack", "lab"], cwd=ROOT,
                             env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = state_dir / "stage.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        time.sleep(0.2)
    second = stage("run")   # while the first holds the stack
    up_out, _ = first.communicate(timeout=900)
    yield {"stage": stage, "cli": cli, "state_dir": state_dir, "up": (first.returncode, up_out), "second": second,
           "d": load(ROOT, "lab"), "before": before, "crashed": crashed, "left_behind": left_behind}
    cli("down")   # whatever happened


def test_a_concurrent_run_is_refused(env):
    second = env["second"]
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (f"agentctl: stage: stack lab is in use by another stage run (pid "
                                     f"{second.stderr.split('pid ')[1].split(',')[0]}, lock {env['state_dir'] / 'stage.lock'}); "
                                     "wait for it, or let its CI job finish")


def test_up_after_a_killed_up_recovers(env):
    """A `lab up` killed mid-boot leaves containers, mounts and namespaces; the next
    up clears them and converges."""
    assert env["crashed"], "the first `lab up` finished before it could be killed"
    assert "cleaning up what an earlier run left" in env["up"][1], env["up"][1][-2000:]
    assert state.live_processes(env["left_behind"]) == {}, "the killed run's processes still run"


def test_up_converges_every_host(env):
    rc, out = env["up"]
    assert rc == 0, out[-3000:]
    assert "ok  proxy: cloud-init done, service active" in out and "ok  scout: cloud-init done" in out


def test_no_lab_namespace_routes_out_and_the_machine_is_untouched(env):
    d = env["d"]
    assert set(topology.namespaces(d)) <= set(netns.lab_namespaces_present())
    assert netns.routes_out_of_lab(d) == []
    for ns in topology.namespaces(d):
        assert not [r for r in netns.routes(ns) if r.get("dst") == "default"], ns
    assert root_network() == env["before"]


def test_second_up_is_a_no_op(env):
    t0 = time.monotonic()
    again = env["cli"]("up", check=0)
    assert "already up" in again.stdout and time.monotonic() - t0 < 15


def test_status_reports_up(env):
    st = env["cli"]("status", check=0)
    assert "lab lab: up" in st.stdout and "routes only lab prefixes" in st.stdout


def test_escape_holds(env):
    proc = env["cli"]("escape", "--json")
    results = json.loads(proc.stdout)
    failed = [r for r in results if not r["ok"]]
    assert proc.returncode == 0 and not failed, json.dumps(failed, indent=1)
    allowed = next(r for r in results if r["id"] == "allowed")
    assert "upstream saw the injected credential" in allowed["evidence"]


def test_verify_passes_on_every_host(env):
    proc = env["cli"]("verify")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # pytest's summary per host ("N passed", never "N failed"); waiver reasons are prose
    assert len(re.findall(r"^\d+ passed", proc.stdout, re.M)) >= 2, proc.stdout[-3000:]
    assert not re.search(r"\b\d+ failed\b", proc.stdout), proc.stdout[-6000:]


def test_stage_verify_passes_with_a_valid_report(env, tmp_path):
    xmlschema = pytest.importorskip("xmlschema")
    proc = env["stage"]("verify", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(tmp_path / "junit.xml"))
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"role suite: proxy", "role suite: scout", "escape: scout", "scores", "idempotence"}
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert int(suites["role suite: scout"].get("tests")) > 50
    assert suites["escape: scout"].find("testcase[@name='ip-evil: https by IP, no proxy']") is not None
    assert [c.get("name") for c in suites["idempotence"]] == ["proxy: converge again changes nothing",
                                                               "scout: converge again changes nothing"]
    summary = (tmp_path / "summary.md").read_text()
    assert "(lab): passed" in summary and "| scout | agent | 10.77.2.11 | up |" in summary
    assert [c.get("name") for c in suites["scores"]] == [
        "proxy: lynis hardening index", "proxy: ssh-audit finds nothing but the classic-kex warnings",
        "scout: lynis hardening index", "scout: ssh-audit finds nothing but the classic-kex warnings"]
    assert "### Scores" in summary and re.search(r"\| scout \| \d+ \| [^|]+ \| exit \d+: 0 fail", summary), summary


def _hole(d) -> str:
    return f"ip saddr {d.agent_subnet} ip daddr {topology.INTERNET_V4} accept"


def test_an_opened_hole_makes_escape_fail(env):
    """Both layers opened on purpose (the switch's security group and the agent's ufw):
    escape must notice, or it could never fail."""
    d = env["d"]
    netns.add_switch_rule(_hole(d))
    hosts.run_in(topology.host_netns(d.agents[0].name), "ufw", "disable")
    proc = env["cli"]("escape", "--json")
    results = {r["id"]: r for r in json.loads(proc.stdout)}
    assert proc.returncode == 1
    assert not results["ip-evil"]["ok"] and not results["ip-api"]["ok"]


def test_verify_fails_on_the_opened_hole(env):
    """The role suite notices the agent's disabled firewall: verify can fail."""
    proc = env["cli"]("verify")
    assert proc.returncode != 0
    assert "test_ufw_active_default_deny_both_ways" in proc.stdout


def test_a_hole_fails_stage_run_and_keep_on_failure_leaves_the_lab_up(env, tmp_path):
    d = env["d"]
    proc = env["stage"]("run", "--keep-on-failure", "--report", str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "kept up" in proc.stdout and lab.is_up(d, env["state_dir"])
    root = ET.parse(tmp_path / "junit.xml").getroot()
    escaped = root.find("testsuite[@name='escape: scout']/testcase[@name='ip-evil: https by IP, no proxy']/failure")
    assert escaped is not None and escaped.get("message").startswith("ESCAPED"), ET.tostring(root)[:2000]
    ufw = root.find("testsuite[@name='role suite: scout']/testcase[@name='test_ufw_active_default_deny_both_ways']/failure")
    assert ufw is not None
    assert "**ESCAPED**" in (tmp_path / "summary.md").read_text()


def _close_hole(d) -> None:
    chain = netns.netns_exec(topology.SWITCH_NS, "nft", "-a", "list", "chain", "inet", topology.NFT_TABLE,
                             "forward").stdout
    handles = [m.group(1) for line in chain.splitlines()
               if (m := re.fullmatch(re.escape(_hole(d)) + r" # handle (\d+)", line.strip()))]
    assert len(handles) == 1, chain
    netns.netns_exec(topology.SWITCH_NS, "nft", "delete", "rule", "inet", topology.NFT_TABLE, "forward",
                     "handle", handles[0])
    enabled = hosts.run_in(topology.host_netns(d.agents[0].name), "ufw", "--force", "enable")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr


def test_stage_run_passes_and_down_leaves_nothing(env, tmp_path):
    """`agentctl stage run --stack lab`, the pipeline as CI runs it, on the lab with the
    hole closed: up (already up), verify, down; then nothing of the lab is left."""
    d = env["d"]
    _close_hole(d)
    st = state.load(env["state_dir"])
    pids = [int(p) for p in st.processes]
    proc = env["stage"]("run", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "ok  lab already up and converged" in proc.stdout
    assert "stage lab: passed" in proc.stdout and "stage lab: down, nothing left behind" in proc.stdout
    assert ET.parse(tmp_path / "junit.xml").getroot().get("failures") == "0"
    assert netns.lab_namespaces_present() == [] and not lab.is_up(d, env["state_dir"])
    assert state.lab_mounts(env["state_dir"]) == []
    assert all(state.start_time(p) is None or _zombie(p) for p in pids)
    assert root_network() == env["before"]


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
