"""`agentctl snapshot-upgrade` end to end in the lab, one lab boot for every scenario.

The lab agent is the package agentctl-lab-agent, pinned at 1.0.0 in Pulumi.lab.yaml,
served by the lab's package index (1.1.0 good, 1.2.0 fails its health check) and
installed through the proxy. In order, on a copy of the project (the record step
edits the stack file):

1. bad input: unknown host, the proxy host, a version the index lacks, --keep 0, a
   changed host key: exit 2, one line, nothing snapshotted;
2. an upgrade whose --check fails: rolled back to 1.0.0, the agent's pre-upgrade file
   still there, the stack file unchanged;
3. an upgrade to the broken 1.2.0, SIGKILLed inside the upgrade step: a concurrent run
   is refused while it runs, a new run after the kill is told to --resume, --resume
   finishes it (rolled back, 1.0.0);
4. an accepted upgrade to 1.1.0 with --keep 2: 1.1.0 running, the stack file updated,
   the oldest snapshot pruned, the upgrade grant in the proxy audit and closed after
   (the agent's request to the index is denied).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.labrun import ROOT, lab_cli, needs_lab

pytestmark = needs_lab
HOST = "scout"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml"):
        shutil.copy(ROOT / name, project / name)
    for name in ("roles", "proxy", "templates", "stacks"):
        (project / name).symlink_to(ROOT / name)
    state_dir = tmp_path_factory.mktemp("labstate")
    cli = lab_cli(state_dir)
    up = cli("up", "--project-dir", str(project))
    assert up.returncode == 0, up.stdout + up.stderr
    yield {"project": project, "state_dir": state_dir, "cli": cli}
    cli("down")


def upgrade_argv(lab, *args: str) -> list[str]:
    return [sys.executable, "-m", "agentctl.cli", "snapshot-upgrade", "--stack", "lab", "--project-dir",
            str(lab["project"]), "--state-dir", str(lab["state_dir"]), "--yes", "--json", *args]


def upgrade(lab, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    proc = subprocess.run(upgrade_argv(lab, *args), cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    # every run that got past its input prints its result line; say why when it did not
    assert result is not None or proc.returncode == 2, f"exit {proc.returncode}, no --json line:\n{proc.stderr[-3000:]}"
    return proc, result


def on(lab, host: str, command: str) -> str:
    proc = lab["cli"]("ssh", host, "--project-dir", str(lab["project"]), command)
    return proc.stdout.strip()


def snapshots(lab) -> list[str]:
    folder = lab["state_dir"] / "snapshots" / HOST
    return sorted(p.name for p in folder.iterdir() if (p / "tags.json").is_file()) if folder.is_dir() else []


def installed(lab) -> str:
    return on(lab, HOST, "sudo -n /usr/local/sbin/agentctl-runtime-install --installed")


def stack_version(lab) -> str:
    text = (lab["project"] / "Pulumi.lab.yaml").read_text()
    return text.split("name: agentctl-lab-agent", 1)[1].split("version:", 1)[1].split()[0]


@pytest.mark.parametrize("args,message", [
    (["--host", "nosuch", "--to", "1.1.0"], "--host: nosuch: is not a host of stack lab"),
    (["--host", "proxy", "--to", "1.1.0"], "--host: proxy: is the proxy host"),
    (["--host", HOST, "--to", "9.9.9"], "--to: 9.9.9: agentctl-lab-agent 9.9.9 is not at"),
    (["--host", HOST, "--to", "1.1.0", "--keep", "0"], "--keep: 0: keeps no snapshot"),
])
def test_bad_input_exits_2_with_one_line_and_snapshots_nothing(lab, args, message):
    proc, _ = upgrade(lab, *args)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("agentctl:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshots(lab) == []


def test_a_changed_host_key_is_refused(lab):
    pinned = lab["state_dir"] / "known_hosts"
    original = pinned.read_text()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab["state_dir"] / "k")],
                           capture_output=True)
    assert other.returncode == 0
    fake = (lab["state_dir"] / "k.pub").read_text().split()[:2]
    pinned.write_text("".join(f"{HOST} {' '.join(fake)}\n" if ln.startswith(f"{HOST} ssh-ed25519") else ln + "\n"
                              for ln in original.splitlines()))
    try:
        proc, _ = upgrade(lab, "--host", HOST, "--to", "1.1.0")
    finally:
        pinned.write_text(original)
    assert proc.returncode == 2 and "host key of" in proc.stderr and "changed" in proc.stderr, proc.stderr
    assert snapshots(lab) == []


def test_a_host_that_does_not_answer_is_bad_input(lab):
    """sshd stopped on the agent host: preflight cannot reach it as admin, so nothing is
    snapshotted and the operator is told what is wrong in one line."""
    from agentctl.lab import hosts, topology
    ns = topology.host_netns(HOST)
    assert hosts.run_in(ns, "systemctl", "stop", "ssh.service").returncode == 0
    try:
        proc, _ = upgrade(lab, "--host", HOST, "--to", "1.1.0")
    finally:
        assert hosts.run_in(ns, "systemctl", "start", "ssh.service").returncode == 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("agentctl:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "is unreachable" in errors[0] and errors[0].endswith("expected a host that answers SSH"), errors
    assert snapshots(lab) == []


def test_a_failing_check_rolls_back_and_keeps_the_agents_data(lab):
    on(lab, HOST, "sudo -n -u agentuser sh -c 'echo written-before > /home/agentuser/before-upgrade.txt'")
    assert installed(lab) == "1.0.0"
    proc, result = upgrade(lab, "--host", HOST, "--to", "1.1.0", "--check", "test -e /nonexistent-marker")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert result["outcome"] == "rolled-back" and result["from"] == "1.0.0" and result["to"] == "1.1.0", \
        proc.stderr[-3000:]
    assert [s["name"] for s in result["steps"]] == ["preflight", "snapshot", "upgrade", "acceptance", "rollback",
                                                    "rollback-acceptance"]
    assert "rolled-back" in proc.stderr.splitlines()[-1]
    assert installed(lab) == "1.0.0"
    assert on(lab, HOST, "sudo -n cat /home/agentuser/before-upgrade.txt") == "written-before"
    assert stack_version(lab) == "1.0.0"
    assert len(snapshots(lab)) == 1


def _journal_phase(lab) -> tuple[str, str] | None:
    folder = lab["project"] / ".agentctl" / "lab" / "upgrades" / HOST
    for path in sorted(folder.glob("*.json"), reverse=True):
        data = json.loads(path.read_text())
        if data.get("outcome") is None and data["steps"]:
            return data["steps"][-1]["name"], data["steps"][-1]["status"]
    return None


def test_a_run_killed_in_the_upgrade_step_is_finished_by_resume(lab):
    proc = subprocess.Popen(upgrade_argv(lab, "--host", HOST, "--to", "1.2.0"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while _journal_phase(lab) != ("upgrade", "started"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        second, _ = upgrade(lab, "--host", HOST, "--to", "1.1.0")
        assert second.returncode == 2 and "another snapshot-upgrade of scout is running" in second.stderr
        time.sleep(3)  # inside the step: the grant is open, pip may be running
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    again, _ = upgrade(lab, "--host", HOST, "--to", "1.1.0")
    assert again.returncode == 2 and "unfinished upgrade" in again.stderr and "--resume" in again.stderr
    resumed, result = upgrade(lab, "--host", HOST, "--resume")
    # 1.2.0 installs and starts but fails its health check: resumed, then rolled back
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr
    assert result["outcome"] == "rolled-back" and "runtime health" in resumed.stderr, resumed.stderr[-3000:]
    assert installed(lab) == "1.0.0"
    assert json.loads(on(lab, HOST, "curl -fsS http://127.0.0.1:8790/health"))["version"] == "1.0.0"
    assert len(snapshots(lab)) == 2
    grants = on(lab, "proxy", "sudo -n cat /etc/agentctl-proxy/upgrade-grants.json")
    assert json.loads(grants)["grants"] == []


def test_an_accepted_upgrade_is_recorded_pruned_and_its_grant_closed(lab):
    oldest = snapshots(lab)[0]
    proc, result = upgrade(lab, "--host", HOST, "--to", "1.1.0", "--keep", "2",
                           "--check", "sudo -n test -s /home/agentuser/before-upgrade.txt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["outcome"] == "upgraded" and result["to"] == "1.1.0", proc.stderr[-3000:]
    assert [s["name"] for s in result["steps"]] == ["preflight", "snapshot", "upgrade", "acceptance", "record",
                                                    "retention"]
    assert installed(lab) == "1.1.0"
    assert json.loads(on(lab, HOST, "curl -fsS http://127.0.0.1:8790/health"))["version"] == "1.1.0"
    assert stack_version(lab) == "1.1.0"
    # the file changed in that one value only
    assert (lab["project"] / "Pulumi.lab.yaml").read_text() == \
        (ROOT / "Pulumi.lab.yaml").read_text().replace("version: 1.0.0", "version: 1.1.0")
    left = snapshots(lab)
    assert len(left) == 2 and oldest not in left
    # the grant: in the audit under its own name, and closed now
    audit = on(lab, "proxy", "sudo -n grep -h pypi.lab.test /var/log/agentctl-proxy/audit.jsonl")
    rules = {json.loads(ln).get("rule") for ln in audit.splitlines() if ln.startswith("{")}
    assert "scout/upgrade[0]" in rules
    on(lab, HOST, "curl -s -m 10 -o /dev/null --proxy http://10.77.1.10:8080 "
                  "https://pypi.lab.test/simple/agentctl-lab-agent/; true")
    last = [json.loads(ln) for ln in on(lab, "proxy", "sudo -n grep -h pypi.lab.test "
                                                      "/var/log/agentctl-proxy/audit.jsonl").splitlines()
            if ln.startswith("{")][-1]
    assert last["action"] == "deny" and last["agent"] == HOST, last
