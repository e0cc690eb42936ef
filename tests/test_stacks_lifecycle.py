"""A deployment's life under Pulumi's mocks: the changes a user makes, and what the
program declares at each step compared with the step before (what a real `pulumi up`
would create, update, replace, or leave alone). docs/cloud.md has the table."""
from __future__ import annotations

import copy
import shutil

import pytest

from agentctl.ca import ensure_ca
from agentctl_stacks.policy import ssh_md5_fingerprint
from tests.test_stacks_harness import evaluate_variants, make_project, named

N = "agentctl"


def _add_agent(c):
    extra = copy.deepcopy(c["agentctl:agents"][-1])
    extra["name"] = "third"
    c["agentctl:agents"].append(extra)


def _remove_last_agent(c):
    c["agentctl:agents"].pop()


def _edit_rule(c):
    c["agentctl:agents"][0]["egress"]["rules"][0]["paths"] = ["/repos/acme/other/*"]


STEPS = {"first-up": None, "add-agent": _add_agent, "remove-agent": _remove_last_agent, "edit-rule": _edit_rule}


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    jobs = {}
    for stack in ("example-hcloud", "example-aws"):
        ca = None
        for step, edit in STEPS.items():
            if stack == "example-aws" and step == "remove-agent":
                continue  # its only agent: a deployment has at least one
            project = make_project(tmp_path_factory.mktemp(f"{stack}-{step}"), stack, edit)
            # One deployment over time: one CA (kept with the stack, as the docs say).
            if ca is None:
                ensure_ca(project, stack)
                ca = project / ".agentctl"
            elif not (project / ".agentctl").exists():
                shutil.copytree(ca, project / ".agentctl")
            jobs[f"{stack}/{step}"] = {"dir": str(project), "stack": stack, "patch": ""}
        base = jobs[f"{stack}/first-up"]["dir"]
        jobs[f"{stack}/new-image"] = {"dir": base, "stack": stack,
                                      "patch": "agentctl.plan.PLACEHOLDER_AMI = 'ami-0newnewnewnewnew0'"}
    key = make_project(tmp_path_factory.mktemp("key"), "example-hcloud")
    import yaml
    public = yaml.safe_load((key / "Pulumi.example-hcloud.yaml").read_text())["config"]["agentctl:adminSshKeys"][0]
    for label, owner in (("uploaded", {}), ("ours", {"agentctl-stack": "example-hcloud"})):
        jobs[f"key/{label}"] = {"dir": str(key), "stack": "example-hcloud", "patch": (
            f"agentctl.plan.MOCK_HCLOUD_SSH_KEYS.append({{'id': 4242, 'name': 'laptop', 'publicKey': {public!r}, "
            f"'fingerprint': {ssh_md5_fingerprint(public)!r}, 'labels': {owner!r}}})")}
    return evaluate_variants(jobs)


def _without_mock_ids(inputs):
    """A server's inputs but its user-data, with the ids of other resources left out:
    under mocks ids are handed out in the order resources happen to register, which
    differs from run to run (those resources are compared by their own inputs)."""
    out = {k: v for k, v in inputs.items() if k not in ("userData", "firewallIds", "sshKeys")}
    if "publicNets" in out:
        out["publicNets"] = [{k: v for k, v in net.items() if k != "ipv4"} for net in out["publicNets"]]
    if "networks" in out:
        out["networks"] = [{k: v for k, v in net.items() if k != "networkId"} for net in out["networks"]]
    return out


def _by_name(resources):
    return {r["name"]: r for r in resources}


def test_hetzner_policy_changes_push_instead_of_rebuilding_the_proxy(life):
    """Adding/removing an agent or editing a rule changes the proxy's user-data (its
    policy), which the server ignores; the replacement trigger (everything else) stays;
    the push's manifest is the same files, so it re-pushes (contents differ) and reloads."""
    first = _by_name(life["example-hcloud/first-up"])
    for step in ("add-agent", "remove-agent", "edit-rule"):
        now = _by_name(life[f"example-hcloud/{step}"])
        proxy, before = now[f"{N}-proxy"], first[f"{N}-proxy"]
        assert proxy["options"]["ignoreChanges"] == ["userData"], step
        assert proxy["options"]["replacementTrigger"] == before["options"]["replacementTrigger"], step
        assert proxy["inputs"]["userData"] != before["inputs"]["userData"], f"{step}: the policy did change"
        assert _without_mock_ids(proxy["inputs"]) == _without_mock_ids(before["inputs"]), step
    added = set(_by_name(life["example-hcloud/add-agent"])) - set(first)
    assert added == {f"{N}-agent-third"}
    removed = set(first) - set(_by_name(life["example-hcloud/remove-agent"]))
    assert removed == {f"{N}-agent-scribe"}


def test_aws_policy_changes_replace_the_proxy_delete_first(life):
    first = _by_name(life["example-aws/first-up"])
    for step in ("add-agent", "edit-rule"):
        proxy = _by_name(life[f"example-aws/{step}"])[f"{N}-proxy"]
        assert proxy["inputs"]["userDataBase64"] != first[f"{N}-proxy"]["inputs"]["userDataBase64"], step
        assert proxy["inputs"]["userDataReplaceOnChange"] is True and proxy["options"]["deleteBeforeReplace"] is True
    added = set(_by_name(life["example-aws/add-agent"])) - set(first)
    assert {f"{N}-agent-third", f"{N}-agent-third-imds"} <= added
    # The agent's user-data does not hold the others' grants: scout is left alone.
    assert _by_name(life["example-aws/add-agent"])[f"{N}-agent-scout"]["inputs"] == first[f"{N}-agent-scout"]["inputs"]


def test_a_new_image_replaces_nothing(life):
    first, now = _by_name(life["example-aws/first-up"]), _by_name(life["example-aws/new-image"])
    for name in (f"{N}-proxy", f"{N}-agent-scout"):
        assert now[name]["inputs"]["ami"] == "ami-0newnewnewnewnew0" != first[name]["inputs"]["ami"]
        assert "ami" in now[name]["options"]["ignoreChanges"], "the engine keeps the old image"


def test_an_uploaded_admin_key_is_used_not_created_again(life):
    uploaded, ours = _by_name(life["key/uploaded"]), _by_name(life["key/ours"])
    assert f"{N}-admin-key-0" not in uploaded
    assert all(r["inputs"]["sshKeys"] == ["4242"] for r in uploaded.values() if r["type"] == "hcloud:index/server:Server")
    # A key this stack created (its label) stays its own resource: nothing flips on the next up.
    assert f"{N}-admin-key-0" in ours
    assert named(life["key/ours"], f"{N}-proxy")["inputs"]["sshKeys"] != ["4242"]
