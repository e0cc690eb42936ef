"""`agentctl plan` through the real CLI, one process per run (Pulumi's runtime is global)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from agentctl.plan import SECRET_PLACEHOLDER, clean, runtime_config
from tests.test_stacks_harness import ROOT, make_project


def agentctl(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from agentctl.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stack,component,count", [("example-aws", "agentctl:aws:Deployment", 57),
                                                    ("example-hcloud", "agentctl:hcloud:Deployment", 11)])
def test_plan_json_lists_every_resource(stack, component, count):
    proc = agentctl("plan", "--stack", stack, "--json")
    assert proc.returncode == 0, proc.stderr
    resources = json.loads(proc.stdout)
    assert len(resources) == count
    assert all(set(r) == {"type", "name", "inputs"} for r in resources)
    assert [r["type"] for r in resources if r["name"] == "agentctl"] == [component]
    # camelCase inputs, as the engine receives them
    assert any("userData" in r["inputs"] or "userDataBase64" in r["inputs"] for r in resources)
    assert "PRIVATE KEY" not in proc.stdout and "placeholder0000" not in proc.stdout


def test_plan_table_and_no_ca_written_into_the_project(tmp_path):
    project = make_project(tmp_path, "example-hcloud")
    proc = agentctl("plan", "--stack", "example-hcloud", "--project-dir", str(project))
    assert proc.returncode == 0, proc.stderr
    assert "agentctl-proxy-secrets" in proc.stdout and "hcloud:index/server:Server" in proc.stdout
    assert not (project / ".agentctl").exists(), "plan must not create a CA in the user's project"


@pytest.mark.parametrize("edit,key_path", [
    (lambda c: c["agentctl:network"].update(cidr="10.0.0.0/26"), "agentctl:network.cidr"),
    (lambda c: c.update({"agentctl:region": "mars1"}), "agentctl:region"),
    (lambda c: c["agentctl:network"].pop("adminCidrs"), "agentctl:network.adminCidrs"),
    (lambda c: c.pop("agentctl:githubPat"), "agentctl:agents[0].egress.secrets[0].from.config"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, edit, key_path):
    project = make_project(tmp_path, "example-hcloud", edit)
    proc = agentctl("plan", "--stack", "example-hcloud", "--project-dir", str(project), "--json")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key_path in lines[0] and "Traceback" not in proc.stderr


def test_lab_stack_is_not_a_pulumi_stack():
    proc = agentctl("plan", "--stack", "lab")
    assert proc.returncode == 2
    assert "agentctl lab up" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_aws_region_must_match_provider_region(tmp_path):
    project = make_project(tmp_path, "example-aws", lambda c: c.update({"aws:region": "eu-west-1"}))
    proc = agentctl("plan", "--stack", "example-aws", "--project-dir", str(project))
    assert proc.returncode == 2 and "aws:region" in proc.stderr


def test_runtime_config_is_what_the_engine_passes():
    doc = yaml.safe_load((ROOT / "Pulumi.example-hcloud.yaml").read_text())["config"]
    config, secret_keys = runtime_config(doc)
    assert all(isinstance(v, str) for v in config.values())
    assert json.loads(config["agentctl:network"]) == doc["agentctl:network"]
    assert set(secret_keys) == {"agentctl:githubPat", "agentctl:tailscaleAuthKey"}
    assert config["agentctl:githubPat"] == SECRET_PLACEHOLDER


def test_clean_redacts_secrets_and_provider():
    from pulumi.runtime import rpc

    secret = {rpc._special_sig_key: rpc._special_secret_sig, "value": "hunter2"}
    assert clean({"a": secret, "__provider": "pickled", "n": 80.0, "l": [1.5]}) == {
        "a": SECRET_PLACEHOLDER, "__provider": "[dynamic provider]", "n": 80, "l": [1.5]}
