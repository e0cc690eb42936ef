"""The stack file loader: every bad input is one line naming file, key path, problem
and expectation; the example stacks load."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agentctl.errors import ConfigError
from agentctl.stackfile import from_config, load

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
AWS = yaml.safe_load((ROOT / "Pulumi.example-aws.yaml").read_text())["config"]


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_example_stacks_load(stack):
    d = load(ROOT, stack)
    assert d.agents and d.proxy.name not in {a.name for a in d.agents}


def _agent(c):
    return c["agentctl:agents"][0]


CASES = [
    ("rule without host", lambda c: _agent(c)["egress"]["rules"][0].pop("host"),
     "agentctl:agents[0].egress.rules[0].host", "required"),
    ("duplicate host", lambda c: c["agentctl:agents"].append(copy.deepcopy(_agent(c))),
     "agentctl:agents[1].name", "used twice"),
    ("agent named like the proxy", lambda c: _agent(c).update(name="proxy"), "agentctl:agents[0].name", "used twice"),
    ("unknown top-level key", lambda c: c.update({"agentctl:colour": "red"}), "agentctl:colour", "unknown key"),
    ("unknown nested key", lambda c: _agent(c).update(colour="red"), "agentctl:agents[0].colour", "unknown key"),
    ("wrong type", lambda c: c["agentctl:watchdog"].update(intervalMinutes="often"),
     "agentctl:watchdog.intervalMinutes", "integer"),
    ("bad glob", lambda c: _agent(c)["egress"]["rules"][0].update(host="*github.com"),
     "agentctl:agents[0].egress.rules[0].host", "not allowed"),
    ("unknown method", lambda c: _agent(c)["egress"]["rules"][0].update(methods=["STEAL"]),
     "agentctl:agents[0].egress.rules[0].methods", "unknown HTTP method"),
    ("relative path", lambda c: _agent(c)["egress"]["rules"][0].update(paths=["repos/*"]),
     "agentctl:agents[0].egress.rules[0].paths", "must start with '/'"),
    ("unknown source type", lambda c: _agent(c)["egress"]["secrets"][0].update(source={"type": "vault", "path": "/x"}),
     "agentctl:agents[0].egress.secrets[0].source", "'env', 'file', 'aws_ssm'"),
    ("missing field", lambda c: c.pop("agentctl:adminSshKeys"), "agentctl:adminSshKeys", "required"),
    ("bad cloud", lambda c: c.update({"agentctl:cloud": "gcp"}), "agentctl:cloud", "'gcp' is not allowed"),
    ("bad ssh key", lambda c: c.update({"agentctl:adminSshKeys": ["hunter2"]}), "agentctl:adminSshKeys", "public key"),
    ("small network", lambda c: c.update({"agentctl:network": {"cidr": "10.0.0.0/26"}}), "agentctl:network.cidr",
     "too small"),
    ("bad reboot time", lambda c: c.update({"agentctl:maintenance": {"rebootTime": "25:00"}}),
     "agentctl:maintenance.rebootTime", "pattern"),
    ("two runtimes", lambda c: _agent(c)["runtime"].update(hermes={"version": "v1"}), "agentctl:agents[0].runtime",
     "exactly one"),
    ("unpinned hermes", lambda c: _agent(c).update(runtime={"hermes": {}}), "agentctl:agents[0].runtime.hermes",
     "pin Hermes"),
]


@pytest.mark.parametrize("mutate,key_path,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_key(mutate, key_path, words):
    config = copy.deepcopy(BASE)
    mutate(config)
    with pytest.raises(ConfigError) as err:
        from_config(config, "Pulumi.t.yaml")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"Pulumi.t.yaml: {key_path}: "), line
    assert words in line, line
    assert err.value.exit_code == 2


def test_secret_in_plain_text_is_refused():
    config = copy.deepcopy(AWS)
    config["agentctl:githubPat"] = "ghp_plaintext_value"
    with pytest.raises(ConfigError) as err:
        from_config(config, "Pulumi.t.yaml")
    assert "agentctl:githubPat: is plain text" in str(err.value)
    assert "ghp_plaintext_value" not in str(err.value)


def test_secret_reference_must_exist():
    config = copy.deepcopy(AWS)
    del config["agentctl:githubPat"]
    with pytest.raises(ConfigError, match=r"agentctl:agents\[0\]\.egress\.secrets\[1\]\.from\.config: names 'githubPat'"):
        from_config(config, "Pulumi.t.yaml")


def test_secure_values_are_tracked_not_read():
    d = from_config(AWS, "Pulumi.t.yaml")
    assert d.secure_keys == {"githubPat", "anthropicKey"}
    assert "placeholder" not in d.model_dump_json()


def test_yaml_error_and_missing_file(tmp_path):
    (tmp_path / "Pulumi.broken.yaml").write_text("config:\n  agentctl:cloud: [lab\n")
    with pytest.raises(ConfigError, match=r"Pulumi.broken.yaml: is not valid YAML \(line \d+"):
        load(tmp_path, "broken")
    with pytest.raises(ConfigError, match="no such stack file"):
        load(tmp_path, "absent")
    (tmp_path / "Pulumi.empty.yaml").write_text("encryptionsalt: x\n")
    with pytest.raises(ConfigError, match=r"config: is missing"):
        load(tmp_path, "empty")
