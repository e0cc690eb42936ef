"""`agentctl stage` on bad input and on a machine that lacks what a stack needs:
exit 2, one line that says what, and nothing created. Real processes, the real CLI."""
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentctl.stage.lock import StackBusy, stack_lock
from tests.labrun import ROOT

# No cloud credentials from this machine's files or an instance role, and no CI.
CLEAN = {k: v for k, v in os.environ.items()
         if not k.startswith(("AWS_", "HCLOUD_", "GITHUB_", "PULUMI_"))} | {
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def stage(*args, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentctl.cli", "stage", *args], cwd=cwd,
                          env=CLEAN | (env or {}), capture_output=True, text=True, timeout=120)


def one_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["up", "verify", "down", "run"])
def test_unknown_stack(command, tmp_path):
    line = one_line(stage(command, "--stack", "nope", "--state-dir", str(tmp_path / "state")))
    assert line == "agentctl: Pulumi.nope.yaml: no such stack file; expected Pulumi.nope.yaml in ."
    assert not (tmp_path / "state").exists()


def test_no_stack_and_no_ci(tmp_path):
    line = one_line(stage("run", "--state-dir", str(tmp_path / "state")))
    assert "--stack: not given, and no CI environment to derive it from" in line


def test_the_stack_comes_from_the_pull_request(tmp_path):
    line = one_line(stage("up", env={"GITHUB_REF": "refs/pull/123/merge"}))
    assert "Pulumi.staging-pr-123.yaml: no such stack file" in line


def test_aws_stack_without_credentials():
    line = one_line(stage("run", "--stack", "example-aws"))
    assert "Pulumi.example-aws.yaml: agentctl:cloud: is 'aws', but boto3 finds no AWS credentials" in line
    assert not (ROOT / ".agentctl" / "stage" / "example-aws.lock").exists()


def test_hcloud_stack_without_a_token():
    line = one_line(stage("up", "--stack", "example-hcloud"))
    assert "is 'hcloud', but neither HCLOUD_TOKEN nor the stack's hcloud:token config is set" in line


@pytest.mark.parametrize("stack, env", [
    ("example-aws", {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}),
    # A token makes validation ask the Hetzner API (agentctl/hcloud_catalog.py): here a
    # closed loopback port, so nothing leaves the machine and the built-in list answers.
    ("example-hcloud", {"HCLOUD_TOKEN": "not-a-token", "HCLOUD_ENDPOINT": "http://127.0.0.1:9/v1"}),
])
def test_cloud_stack_without_the_pulumi_cli(stack, env, tmp_path):
    """Credentials there, the CLI not: refused before anything is created. PATH keeps
    only python, so a machine that has pulumi runs this test the same way."""
    line = one_line(stage("run", "--stack", stack, env=env | {"PATH": str(Path(sys.executable).parent)}))
    assert line.startswith("agentctl: pulumi: the Pulumi CLI is not installed"), line
    assert "not-a-secret" not in line and "not-a-token" not in line
    assert not (ROOT / ".agentctl" / "stage" / f"{stack}.lock").exists()


def test_lab_stack_without_the_lab_tools(tmp_path):
    line = one_line(stage("run", "--stack", "lab", "--state-dir", str(tmp_path / "state"),
                          env={"PATH": str(Path(sys.executable).parent)}))
    assert ("agentctl: Pulumi.lab.yaml: agentctl:cloud: is 'lab', but this machine lacks the lab's tools: "
            "systemd-nspawn, mmdebstrap, nft, ip") in line
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("flag, value, says", [
    ("--older-than", "6x", "--older-than: 6x: '6x' is not a duration"),
    ("--older-than", "0h", "is not a duration"),
    ("--prefix", "-", "--prefix: -: would match stacks that are not staging stacks"),
])
def test_reap_bad_flags(flag, value, says):
    assert says in one_line(stage("reap", flag, value))


def test_reap_without_the_pulumi_cli():
    line = one_line(stage("reap", "--older-than", "6h", env={"PATH": str(Path(sys.executable).parent)}))
    assert line.startswith("agentctl: pulumi: the Pulumi CLI is not installed")


def test_lock_refuses_a_second_holder(tmp_path):
    """The per-stack lock: a second holder (another process's open file, as flock
    sees it) is refused with one line naming the first's pid."""
    lock = tmp_path / "state" / "stage.lock"
    with stack_lock(lock, "lab"):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(StackBusy, match=rf"stack lab is in use by another stage run \(pid {os.getpid()}"):
            with stack_lock(lock, "lab"):
                pass
    with stack_lock(lock, "lab"):   # released on exit
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab stack's preflight needs root")
def test_concurrent_stage_command_is_refused(tmp_path):
    """Another process holds the lab stack's lock: `stage run` exits 2 with one line
    before it touches the lab (the lab is never booted here)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    fd = os.open(state_dir / "stage.lock", os.O_RDWR | os.O_CREAT, 0o600)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        line = one_line(stage("run", "--stack", "lab", "--state-dir", str(state_dir)))
    finally:
        os.close(fd)
    assert line == (f"agentctl: stage: stack lab is in use by another stage run (pid 4242, lock "
                    f"{state_dir / 'stage.lock'}); wait for it, or let its CI job finish")
    assert sorted(p.name for p in state_dir.iterdir()) == ["stage.lock"]
