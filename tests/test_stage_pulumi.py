"""agentctl.stage.pulumi: what the cloud path decides without the Pulumi CLI (the
credentials check, the no-change rule, where instance ids come from), and the
Automation API itself against Pulumi's local file backend where the CLI exists."""
import shutil
from pulumi.automation.events import OpType

import pytest

from agentctl.stackfile import load
from agentctl.stage import pulumi as sp
from tests.labrun import ROOT

NO_AWS = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def test_aws_credentials(monkeypatch):
    d = load(ROOT, "example-aws")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(k, raising=False)
    for k, v in NO_AWS.items():
        monkeypatch.setenv(k, v)
    assert "boto3 finds no AWS credentials" in sp.credentials_problem(d, ROOT / "Pulumi.example-aws.yaml", {})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    assert sp.credentials_problem(d, ROOT / "Pulumi.example-aws.yaml", {}) is None


def test_hcloud_token_from_env_or_config(tmp_path):
    d = load(ROOT, "example-hcloud")
    src = ROOT / "Pulumi.example-hcloud.yaml"
    assert "neither HCLOUD_TOKEN" in sp.credentials_problem(d, src, {})
    assert sp.credentials_problem(d, src, {"HCLOUD_TOKEN": "t"}) is None
    with_config = tmp_path / "Pulumi.s.yaml"
    with_config.write_text(src.read_text().replace("config:\n", "config:\n  hcloud:token:\n    secure: AAAB\n", 1))
    assert sp.credentials_problem(d, with_config, {}) is None


@pytest.mark.parametrize("summary, pending", [
    ({"same": 40}, {}),
    ({}, {}),
    (None, {}),
    ({"same": 38, "update": 2}, {"update": 2}),
    ({OpType.SAME: 3, OpType.REPLACE: 1}, {"replace": 1}),   # the engine's own keys
    ({"create": 0, "same": 3}, {}),
])
def test_second_preview_must_show_no_changes(summary, pending):
    assert sp.changes(summary) == pending


def test_instance_ids_from_the_ssh_output():
    outputs = {"ssh": {"proxy": "aws ec2-instance-connect ssh --connection-type eice --os-user admin "
                                "--instance-id i-0abc123", "scout": "no id here"}}
    assert sp.instance_ids(outputs) == {"proxy": "i-0abc123"}
    assert sp.instance_ids({}) == {}


@pytest.mark.skipif(shutil.which("pulumi") is None, reason="the Pulumi CLI is not installed on this machine "
                    "(the Automation API drives it); the code path that needs it is agentctl/stage/pulumi.py")
def test_automation_api_lists_stacks_on_the_local_file_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path}")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "staging-test")
    from pulumi import automation as auto
    ws = sp.workspace(ROOT)
    auto.create_or_select_stack(stack_name="staging-pr-1", work_dir=str(ROOT))
    try:
        assert "staging-pr-1" in [s.name for s in sp.list_stacks(ws)]
    finally:
        ws.remove_stack("staging-pr-1")
