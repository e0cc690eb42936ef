"""`agentctl plan` through the real CLI, one process per run (Pulumi's runtime is global)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from agentctl.plan import OPTION_KEYS, SECRET_PLACEHOLDER, clean, runtime_config
from agentctl.secrets import ca_key_parameter_name, ssm_parameter_name
from tests.test_stacks_harness import ROOT, make_project


def agentctl(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from agentctl.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stack,component,count", [("example-aws", "agentctl:aws:Deployment", 63),
                                                    ("example-hcloud", "agentctl:hcloud:Deployment", 11)])
def test_plan_json_lists_every_resource(stack, component, count):
    proc = agentctl("plan", "--stack", stack, "--json")
    assert proc.returncode == 0, proc.stderr
    resources = json.loads(proc.stdout)
    assert len(resources) == count
    assert all(set(r) == {"type", "name", "inputs", "options"} for r in resources)
    assert all(set(r["options"]) == set(OPTION_KEYS) for r in resources)
    assert [r["type"] for r in resources if r["name"] == "agentctl"] == [component]
    # camelCase inputs, as the engine receives them
    assert any("userData" in r["inputs"] or "userDataBase64" in r["inputs"] for r in resources)
    assert "PRIVATE KEY" not in proc.stdout and "placeholder0000" not in proc.stdout


def test_plan_preview_and_no_ca_written_into_the_project(tmp_path):
    project = make_project(tmp_path, "example-hcloud")
    proc = agentctl("plan", "--stack", "example-hcloud", "--project-dir", str(project))
    assert proc.returncode == 0, proc.stderr
    assert "agentctl-proxy-secrets" in proc.stdout and "hcloud:index:Server" in proc.stdout
    assert "Outputs:" in proc.stdout and "ssh -J admin@203.0.113.10 admin@10.0.2.11" in proc.stdout
    assert not (project / ".agentctl").exists(), "plan must not create a CA in the user's project"


def _tree(stdout: str) -> list[str]:
    return stdout.split("\nOutputs:")[0].splitlines()


@pytest.mark.parametrize("stack", ["example-aws", "example-hcloud"])
def test_plan_reads_like_pulumi_preview_at_80_columns(stack):
    """A tree by parent with every resource's name whole, key inputs, secrets as [secret],
    replace notes, and a summary line; no tree line wider than 80 columns."""
    proc = agentctl("plan", "--stack", stack)
    json_proc = agentctl("plan", "--stack", stack, "--json")
    assert proc.returncode == 0 and json_proc.returncode == 0, proc.stderr + json_proc.stderr
    resources = json.loads(json_proc.stdout)
    tree = _tree(proc.stdout)
    assert max(len(line) for line in tree) <= 80, max(tree, key=len)
    words = {w for line in tree for w in line.split()}
    assert {r["name"] for r in resources} <= words, "every resource is named, whole"
    component = next(i for i, line in enumerate(tree) if line.rstrip().endswith(" agentctl"))
    assert "└─ agentctl:" in tree[component] and all("├─" in l or "└─" in l for l in tree[component + 1:] if "+" in l[:5])
    assert f"+ {len(resources) + 1} to create" in proc.stdout
    assert "PRIVATE KEY" not in proc.stdout and "placeholder0000" not in proc.stdout
    hosts = [r["name"] for r in resources if r["type"] in ("aws:ec2/instance:Instance", "hcloud:index/server:Server")]
    for host in hosts:
        at = next(i for i, line in enumerate(tree) if line.endswith(" " + host))
        notes = " ".join(line.split("» ", 1)[1] for line in tree[at + 1:at + 5] if "» " in line)
        assert "deleted before its replacement" in notes, (host, notes)


def test_plan_marks_secrets_and_replace_triggers(tmp_path):
    proc = agentctl("plan", "--stack", "example-aws")
    tree = _tree(proc.stdout)
    assert any("value=[secret]" in line for line in tree)
    assert any("replaced when its user-data changes" in line for line in tree)


def test_plan_json_options_show_what_a_replace_would_do():
    resources = {r["name"]: r for r in json.loads(agentctl("plan", "--stack", "example-aws", "--json").stdout)}
    proxy = resources["agentctl-proxy"]["options"]
    assert proxy["parent"] == "agentctl" and proxy["deleteBeforeReplace"] is True and proxy["provider"] is None
    assert "agentctl-proxy-eip" in proxy["dependsOn"] and proxy["ignoreChanges"] == ["ami"]
    assert resources["agentctl"]["options"]["parent"] is None


def _imds_inputs(tmp_path, edit) -> dict:
    project = make_project(tmp_path, "example-aws", edit)
    proc = agentctl("plan", "--stack", "example-aws", "--project-dir", str(project), "--json")
    assert proc.returncode == 0, proc.stderr
    (imds,) = [r for r in json.loads(proc.stdout) if r["type"] == "pulumi-python:dynamic/agentctl:AgentImds"]
    return imds["inputs"]


def test_agent_imds_gets_the_stacks_aws_credentials(tmp_path):
    """pulumi-aws's own settings (profile, role chain, keys), not boto3's default chain."""
    role = {"roleArn": "arn:aws:iam::210987654321:role/deployer", "sessionName": "agentctl"}
    inputs = _imds_inputs(tmp_path / "a", lambda c: c.update({"aws:profile": "prod", "aws:assumeRoles": [role]}))
    assert inputs["credentials"] == {"profile": "prod", "assumeRoles": [role]}
    # Keys make the whole setting a secret (state encrypts it; plans never show it).
    keyed = _imds_inputs(tmp_path / "b", lambda c: c.update({"aws:accessKey": "AKIAIOSFODNN7EXAMPLE",
                                                             "aws:secretKey": {"secure": "v1:x"}}))
    assert keyed["credentials"] == SECRET_PLACEHOLDER
    assert "credentials" not in _imds_inputs(tmp_path / "c", lambda c: None)


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
    assert set(secret_keys) == {"agentctl:anthropicKey", "agentctl:githubPat", "agentctl:telegramBotToken", "agentctl:tailscaleAuthKey"}
    assert config["agentctl:githubPat"] == SECRET_PLACEHOLDER


def test_clean_redacts_secrets_and_provider():
    from agentctl.pulumi_private import SECRET_SIG, SECRET_SIG_KEY

    secret = {SECRET_SIG_KEY: SECRET_SIG, "value": "hunter2"}
    assert clean({"a": secret, "__provider": "pickled", "n": 80.0, "l": [1.5]}) == {
        "a": SECRET_PLACEHOLDER, "__provider": "[dynamic provider]", "n": 80, "l": [1.5]}


SECRET = {"secure": "v1:placeholder0000000000000000000000000000000000"}


def _secret(name, *, config=None, source=None):
    origin = {"from": {"config": config}} if config else {"source": source}
    return {"name": name, **origin, "inject": {"header": "Authorization"},
            "rules": [{"host": "api.github.com", "methods": ["GET"]}]}


def _agent_proxy_with_secret_ca_key(c):
    """The audit's case: an agent named `proxy` (the proxy renamed) with a secret `ca-key`."""
    c["agentctl:proxy"]["name"] = "gateway"
    c["agentctl:agents"].append({"name": "proxy", "runtime": {"command": {"exec": "/usr/bin/true"}},
                                 "egress": {"secrets": [_secret("ca-key", config="caKeyLookalike")]}})
    c["agentctl:caKeyLookalike"] = SECRET


def _same_secret_twice(c):
    c["agentctl:agents"][0]["egress"]["secrets"].append(_secret("github-pat", config="githubPat"))


def _ssm_source(name, region=None):
    def edit(c):
        source = {"type": "aws_ssm", "name": name, **({"region": region} if region else {})}
        c["agentctl:agents"][0]["egress"]["secrets"].append(_secret("extra", source=source))
    return edit


@pytest.mark.parametrize("stack,edit,key_path,words", [
    ("example-aws", _same_secret_twice, "agentctl:agents[0].egress.secrets[3].name",
     "is the name of agentctl:agents[0].egress.secrets[1] too"),
    ("example-hcloud", _same_secret_twice, "agentctl:agents[0].egress.secrets[3].name",
     "is the name of agentctl:agents[0].egress.secrets[1] too"),
    ("example-aws", _ssm_source("/other-team/prod/github-pat"), "agentctl:agents[0].egress.secrets[3].source.name",
     "instance role cannot read it"),
    ("example-aws", _ssm_source("/agentctl/example-aws-2/x"), "agentctl:agents[0].egress.secrets[3].source.name",
     "outside this deployment's parameter path"),
    ("example-aws", _ssm_source("/agentctl/example-aws/scout/x", region="eu-west-1"),
     "agentctl:agents[0].egress.secrets[3].source.region", "us-east-1"),
    ("example-aws", _ssm_source(ca_key_parameter_name("agentctl", "example-aws")),
     "agentctl:agents[0].egress.secrets[3].source.name", "CA key"),
])
def test_secrets_that_would_collide_or_be_unreadable_exit_2(tmp_path, stack, edit, key_path, words):
    """Refused before any resource is declared: one line, the key path, exit 2."""
    project = make_project(tmp_path, stack, edit)
    proc = agentctl("plan", "--stack", stack, "--project-dir", str(project), "--json")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and key_path in lines[0] and words in lines[0] and "Traceback" not in proc.stderr


def test_agent_named_proxy_never_shares_the_ca_keys_parameter(tmp_path):
    """The audit's case. While the CA key's path is one an agent can produce, plan must
    refuse the collision (exit 2, the key path); once it is not, both parameters exist."""
    project = make_project(tmp_path, "example-aws", _agent_proxy_with_secret_ca_key)
    proc = agentctl("plan", "--stack", "example-aws", "--project-dir", str(project), "--json")
    ca_key = ca_key_parameter_name("agentctl", "example-aws")
    if ca_key == ssm_parameter_name("agentctl", "example-aws", "proxy", "ca-key"):
        assert proc.returncode == 2 and proc.stdout == ""
        (line,) = proc.stderr.strip().splitlines()
        assert "agentctl:agents[1].egress.secrets[0].name" in line and "CA key" in line
    else:
        assert proc.returncode == 0, proc.stderr
        names = [r["inputs"]["name"] for r in json.loads(proc.stdout) if r["type"] == "aws:ssm/parameter:Parameter"]
        assert len(names) == len(set(names)) and ca_key in names
        assert ssm_parameter_name("agentctl", "example-aws", "proxy", "ca-key") in names


def test_ssm_source_under_the_deployment_path_is_accepted(tmp_path):
    project = make_project(tmp_path, "example-aws", _ssm_source("/agentctl/example-aws/shared/github-pat", "us-east-1"))
    proc = agentctl("plan", "--stack", "example-aws", "--project-dir", str(project), "--json")
    assert proc.returncode == 0, proc.stderr
    # Read at runtime by the proxy, not declared: the stack manages only `from:` secrets.
    assert "/agentctl/example-aws/shared/github-pat" not in {
        r["inputs"].get("name") for r in json.loads(proc.stdout) if r["type"] == "aws:ssm/parameter:Parameter"}


def test_ca_key_parameter_is_a_name_no_agent_can_have():
    import re

    from agentctl.model import HOSTNAME
    from agentctl.secrets import ca_key_parameter_name, ssm_prefix

    segment = ca_key_parameter_name("p", "s").removeprefix(ssm_prefix("p", "s")).split("/")[0]
    assert not re.fullmatch(HOSTNAME, segment), f"an agent named {segment!r} would share the CA key's path"


def test_plan_help_says_json_carries_each_resources_options():
    """`plan --help` tells what --json prints, options included (issue 17: `options` per resource)."""
    out = agentctl("plan", "--help", "--project-dir", str(ROOT))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for word in ("options", "deleteBeforeReplace", "ignoreChanges", "dependsOn", "protect"):
        assert word in text, word
