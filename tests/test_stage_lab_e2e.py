"""`agentctl stage` on the lab, end to end, one lab boot: a concurrent run is refused
while `stage up` runs; `stage verify` passes with a schema-valid report; a hole opened
on purpose makes verify fail and the JUnit report name the escaped vector; with
--keep-on-failure `stage run` leaves the lab up; without it, `stage run` tears it down.
The machine-wide lab lock (/run/agentctl-lab.lock) is held for the whole module."""
import fcntl
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agentctl.lab import hosts, lab, netns, topology
from agentctl.stackfile import load
from tests.labrun import ROOT, needs_lab

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

    def stage(*args, timeout=900):
        return subprocess.run([sys.executable, "-m", "agentctl.cli", "stage", *args, "--stack", "lab"],
                              cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)

    first = subprocess.Popen([sys.executable, "-m", "agentctl.cli", "stage", "up", "--stack", "lab"], cwd=ROOT,
                             env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = state_dir / "stage.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        time.sleep(0.2)
    second = stage("run")   # while the first holds the stack
    up_out, _ = first.communicate(timeout=900)
    yield {"stage": stage, "state_dir": state_dir, "up": (first.returncode, up_out), "second": second,
           "d": load(ROOT, "lab")}
    subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", "down", "--state-dir", str(state_dir)],
                   cwd=ROOT, env=e, capture_output=True, timeout=300)


def test_a_concurrent_run_is_refused(env):
    second = env["second"]
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (f"agentctl: stage: stack lab is in use by another stage run (pid "
                                     f"{second.stderr.split('pid ')[1].split(',')[0]}, lock {env['state_dir'] / 'stage.lock'}); "
                                     "wait for it, or let its CI job finish")


def test_up_converges(env):
    rc, out = env["up"]
    assert rc == 0, out[-3000:]
    assert "ok  proxy: cloud-init done, service active" in out and "ok  scout: cloud-init done" in out


def test_verify_passes_with_a_valid_report(env, tmp_path):
    xmlschema = pytest.importorskip("xmlschema")
    proc = env["stage"]("verify", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(tmp_path / "junit.xml"))
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"role suite: proxy", "role suite: scout", "escape: scout", "idempotence"}
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert int(suites["role suite: scout"].get("tests")) > 50
    assert suites["escape: scout"].find("testcase[@name='ip-evil: https by IP, no proxy']") is not None
    assert [c.get("name") for c in suites["idempotence"]] == ["proxy: converge again changes nothing",
                                                               "scout: converge again changes nothing"]
    summary = (tmp_path / "summary.md").read_text()
    assert "(lab): passed" in summary and "| scout | agent | 10.77.2.11 | up |" in summary


def _open_hole(d):
    """Both layers opened on purpose, as tests/test_lab_e2e.py does: the switch's
    security group and the agent's ufw."""
    netns.add_switch_rule(f"ip saddr {d.agent_subnet} ip daddr {topology.INTERNET_V4} accept")
    hosts.run_in(topology.host_netns(d.agents[0].name), "ufw", "disable")


def test_a_hole_fails_verify_and_keep_on_failure_leaves_the_lab_up(env, tmp_path):
    d = env["d"]
    _open_hole(d)
    proc = env["stage"]("run", "--keep-on-failure", "--report", str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "kept up" in proc.stdout and lab.is_up(d, env["state_dir"])
    root = ET.parse(tmp_path / "junit.xml").getroot()
    escaped = root.find("testsuite[@name='escape: scout']/testcase[@name='ip-evil: https by IP, no proxy']/failure")
    assert escaped is not None and escaped.get("message").startswith("ESCAPED"), ET.tostring(root)[:2000]
    ufw = root.find("testsuite[@name='role suite: scout']/testcase[@name='test_ufw_active_default_deny_both_ways']/failure")
    assert ufw is not None
    assert "**ESCAPED**" in (tmp_path / "summary.md").read_text()


def test_run_tears_down_even_when_verify_fails(env, tmp_path):
    d = env["d"]
    assert lab.is_up(d, env["state_dir"])   # the hole from the test before is still open
    proc = env["stage"]("run", "--report", str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "stage lab: down, nothing left behind" in proc.stdout
    assert netns.lab_namespaces_present() == [] and not lab.is_up(d, env["state_dir"])
    assert ET.parse(tmp_path / "junit.xml").getroot().get("failures") != "0"
