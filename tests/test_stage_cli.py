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


class StandIn:
    """A stage driver that records what `stage run` asks of it (the lab's and the
    clouds' drivers have the same five methods)."""

    cloud = "stand-in"

    def __init__(self, tmp_path, verify_fails=False, verify_raises=False, up_fails=False):
        self.stack, self.lock_path, self.calls = "staging-x", tmp_path / "stage.lock", []
        self.verify_fails, self.verify_raises, self.up_fails = verify_fails, verify_raises, up_fails

    def up(self, progress):
        from agentctl.stage.results import Check, Suite
        self.calls.append("up")
        return Suite("converge", [Check("host: converged", not self.up_fails, "converge")])

    def hosts(self):
        return []

    def verify(self, work_dir, progress):
        from agentctl.stage.results import Check, StageResult, Suite
        self.calls.append("verify")
        if self.verify_raises:
            raise RuntimeError("the probe broke")
        return StageResult(self.stack, self.cloud, suites=[Suite("escape: scout", [
            Check("ip-evil: https by IP, no proxy", not self.verify_fails, "escape.scout", message="ESCAPED")])])

    def down(self, progress):
        self.calls.append("down")
        return []


@pytest.mark.parametrize("case, flags, calls, code", [
    ({}, [], ["up", "verify", "down"], 0),
    ({"verify_fails": True}, [], ["up", "verify", "down"], 1),
    ({"verify_raises": True}, [], ["up", "verify", "down"], None),
    ({"up_fails": True}, [], ["up", "down"], 1),
    ({"verify_fails": True}, ["--keep-on-failure"], ["up", "verify"], 1),
    ({"up_fails": True}, ["--keep-on-failure"], ["up"], 1),
])
def test_run_tears_down_unless_kept(monkeypatch, tmp_path, case, flags, calls, code):
    """`stage run`'s control flow, the same for every driver: down runs after a failed
    check, an error, or a failed up; --keep-on-failure keeps a failed stack only."""
    from typer.testing import CliRunner

    from agentctl.stage import cli as stage_cli
    drv = StandIn(tmp_path, **case)
    monkeypatch.setattr(stage_cli, "driver", lambda *a: drv)
    res = CliRunner().invoke(stage_cli.app, ["run", "--stack", "staging-x", *flags])
    assert drv.calls == calls, res.output
    if code is None:
        assert isinstance(res.exception, RuntimeError)
    else:
        assert res.exit_code == code, res.output
    assert ("kept up" in res.output) == ("--keep-on-failure" in flags)


def test_reap_selects_by_the_staging_tag_only(monkeypatch):
    """`stage reap` against a workspace standing in for the Automation API's: an old
    stack named like a staging stack but untagged is left alone; an old tagged one is
    destroyed whatever its name; a young tagged one waits."""
    from datetime import datetime, timedelta, timezone

    from pulumi import automation as auto
    from typer.testing import CliRunner

    from agentctl.stage import cli as stage_cli
    from agentctl.stage import pulumi as stage_pulumi
    now = datetime.now(timezone.utc)

    class Workspace:
        work_dir = str(ROOT)

        def list_stacks(self):
            return [auto.StackSummary("staging-pr-1", False, False, now - timedelta(days=2)),
                    auto.StackSummary("feature-x", False, False, now - timedelta(days=2)),
                    auto.StackSummary("staging-pr-2", False, False, now - timedelta(hours=1))]

        def list_tags(self, name):
            return {"pulumi:project": "agentctl", **({"agentctl-staging": "true"} if name != "staging-pr-1" else {})}

    destroyed = []
    monkeypatch.setattr(stage_pulumi, "require_cli", lambda: None)
    monkeypatch.setattr(stage_pulumi, "workspace", lambda _d: Workspace())
    monkeypatch.setattr(stage_pulumi, "destroy", lambda ws, name, out: destroyed.append(name) or True)
    res = CliRunner().invoke(stage_cli.app, ["reap", "--older-than", "6h"])
    assert res.exit_code == 0, res.output
    assert destroyed == ["feature-x"]
