"""Hetzner validation against the live API when HCLOUD_TOKEN is set, and the built-in
list offline: server types and locations (agentctl/hcloud_catalog.py) and SSH keys named
by name or fingerprint (agentctl:hcloudSshKeys). The real hcloud client talks to a fake
Hetzner API on loopback (tests/fake_hcloud.py); the commands run through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from agentctl import hcloud_catalog
from agentctl.stackfile import load
from agentctl_stacks.policy import ssh_md5_fingerprint
from tests.fake_hcloud import FakeHcloud
from tests.test_stacks_harness import ROOT, make_project

DEPRECATED = {"announced": "2025-10-16T00:00:00+00:00", "unavailable_after": "2026-01-01T00:00:00+00:00"}
OTHER_FP = "0f:0e:0d:0c:0b:0a:09:08:07:06:05:04:03:02:01:00"


@pytest.fixture(scope="module")
def api():
    with FakeHcloud() as fake:
        fake.add_location("fsn1", "eu-central")
        fake.add_location("ash", "us-east")
        fake.add_server_type("cx23", {"fsn1": None})
        fake.add_server_type("cx33", {"fsn1": DEPRECATED})       # still listed, deprecated there
        fake.add_server_type("ccx13", {"fsn1": None, "ash": None})
        public = yaml.safe_load((ROOT / "Pulumi.example-hcloud.yaml").read_text())["config"]["agentctl:adminSshKeys"][0]
        fake.add_ssh_key("laptop", ssh_md5_fingerprint(public), public)
        yield fake


def agentctl(project, *args, env=None):
    return subprocess.run([sys.executable, "-c", "from agentctl.cli import main; main()", *args,
                           "--project-dir", str(project)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def live(api):
    return {"HCLOUD_TOKEN": "test-token", "HCLOUD_ENDPOINT": api.endpoint}


def _sizes(size):
    def edit(c):
        c["agentctl:proxy"]["size"] = size
    return edit


def test_the_live_catalogue_is_what_the_api_says(api):
    cat = hcloud_catalog.live_catalogue("test-token", api.endpoint)
    assert cat.source == "the Hetzner API"
    assert cat.server_types == {"cx23": ("fsn1",), "cx33": (), "ccx13": ("fsn1", "ash")}
    assert cat.locations == {"fsn1": "eu-central", "ash": "us-east"}
    assert ("GET", "/v1/server_types?page=1&per_page=50") in api.requests


@pytest.mark.parametrize("size,words", [
    ("cx33", "'cx33' is not sold in fsn1 (only in no location) (checked against the Hetzner API)"),
    ("cax11", "'cax11' is not a Hetzner server type (checked against the Hetzner API)")])
def test_with_a_token_types_are_checked_against_the_api(tmp_path, api, size, words):
    """cax11 is in the built-in list (sold in fsn1) but this project's API does not list
    it; cx33 is listed but deprecated in fsn1: both refused, saying where it looked."""
    project = make_project(tmp_path, "example-hcloud", _sizes(size))
    out = agentctl(project, "render", "--stack", "example-hcloud", "--out", str(tmp_path / "out"), env=live(api))
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("agentctl: ")
    assert "Pulumi.example-hcloud.yaml: agentctl:proxy.size: " in line
    assert words in line and "cx23" in line and "Traceback" not in line
    assert not (tmp_path / "out").exists()


def test_offline_the_built_in_list_is_used_and_named(tmp_path):
    project = make_project(tmp_path, "example-hcloud", _sizes("cx22"))
    out = agentctl(project, "render", "--stack", "example-hcloud", "--out", str(tmp_path / "out"),
                   env={"HCLOUD_TOKEN": ""})
    assert out.returncode == 2
    assert "'cx22' was retired by Hetzner (checked against agentctl's built-in list (set HCLOUD_TOKEN" in out.stderr


def test_an_unset_size_checks_its_default_against_the_api(api):
    d = load(ROOT, "example-hcloud")
    d = d.model_copy(update={"region": "ash", "proxy": d.proxy.model_copy(update={"size": None}),
                             "agents": [a.model_copy(update={"size": None}) for a in d.agents]})
    cat = hcloud_catalog.live_catalogue("test-token", api.endpoint)
    assert hcloud_catalog.problems(d, cat) == []  # ccx13, the default outside the EU, is sold in ash
    gone = hcloud_catalog.Catalogue({"cx23": ("ash",)}, cat.locations, cat.source)
    ((path, what, _), *_) = hcloud_catalog.problems(d, gone)
    assert path == "proxy.size" and what.startswith("is unset, and its default 'ccx13': ")


def _named_keys(*refs):
    def edit(c):
        c["agentctl:hcloudSshKeys"] = list(refs)
    return edit


def test_named_ssh_keys_are_looked_up_with_a_token(tmp_path, api):
    fingerprint = api.ssh_keys[0]["fingerprint"]
    project = make_project(tmp_path, "example-hcloud", _named_keys("laptop", OTHER_FP))
    out = agentctl(project, "plan", "--stack", "example-hcloud", env=live(api))
    assert out.returncode == 2
    assert "\n" not in out.stderr.strip()
    assert out.stderr.strip().endswith(
        f"Pulumi.example-hcloud.yaml: agentctl:hcloudSshKeys[1]: no SSH key with fingerprint {OTHER_FP!r} "
        "in the Hetzner project (checked against the Hetzner API); expected the name or fingerprint of a key "
        "`hcloud ssh-key list` shows, or leave it out and let agentctl create the admin keys")
    ok = make_project(tmp_path / "ok", "example-hcloud", _named_keys("laptop", fingerprint))
    assert agentctl(ok, "plan", "--stack", "example-hcloud", env=live(api)).returncode == 0


def test_named_ssh_keys_offline_are_used_not_created_and_plan_says_so(tmp_path):
    project = make_project(tmp_path, "example-hcloud", _named_keys("laptop"))
    text = agentctl(project, "plan", "--stack", "example-hcloud", env={"HCLOUD_TOKEN": ""})
    assert text.returncode == 0, text.stderr
    assert "SSH keys by name or fingerprint (laptop): not checked offline: `pulumi up` looks each one up" in text.stdout
    out = agentctl(project, "plan", "--stack", "example-hcloud", "--json", env={"HCLOUD_TOKEN": ""})
    resources = json.loads(out.stdout)
    assert not [r for r in resources if r["type"] == "hcloud:index/sshKey:SshKey"], "nothing created"
    servers = [r for r in resources if r["type"] == "hcloud:index/server:Server"]
    assert servers and all(r["inputs"]["sshKeys"] == ["0"] for r in servers)  # the offline placeholder id


def test_named_ssh_keys_on_aws_are_refused(tmp_path):
    project = make_project(tmp_path, "example-aws", _named_keys("laptop"))
    out = agentctl(project, "render", "--stack", "example-aws", "--out", str(tmp_path / "out"))
    assert out.returncode == 2
    assert "agentctl:hcloudSshKeys: names Hetzner SSH keys, but this stack runs on AWS" in out.stderr


def test_an_api_that_cannot_be_reached_leaves_the_built_in_list_and_says_so(tmp_path):
    project = make_project(tmp_path, "example-hcloud", _sizes("cx22"))
    out = agentctl(project, "render", "--stack", "example-hcloud", "--out", str(tmp_path / "out"),
                   env={"HCLOUD_TOKEN": "t", "HCLOUD_ENDPOINT": "http://127.0.0.1:9/v1"})
    assert out.returncode == 2
    assert "'cx22' was retired by Hetzner (checked against agentctl's built-in list (the Hetzner API could not be " \
           "reached))" in out.stderr
