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

pytestmark = pytest.mark.slow  # one evaluation per step and cloud: 5.5 s wall, 7.4 s of CPU measured (fast tier: ./dev test -m "not lab and not slow")

N = "agentctl"


def _add_agent(c):
    extra = copy.deepcopy(c["agentctl:agents"][-1])
    extra["name"] = "third"
    c["agentctl:agents"].append(extra)


def _remove_last_agent(c):
    c["agentctl:agents"].pop()


def _edit_rule(c):
    c["agentctl:agents"][0]["egress"]["rules"][0]["paths"] = ["/repos/acme/other/*"]


def _version(c, version):
    # scout runs Hermes pinned by version, the pin `agentctl snapshot-upgrade` moves
    c["agentctl:agents"][0]["runtime"]["hermes"]["version"] = version


def _base(c):
    _version(c, "0.19.0")


def _new_runtime_version(c):
    _version(c, "0.20.0")


STEPS = {"first-up": None, "add-agent": _add_agent, "remove-agent": _remove_last_agent, "edit-rule": _edit_rule,
         "runtime-version": _new_runtime_version}
ROTATED = "[secret-rotated]"


@pytest.fixture(scope="module")
def life(tmp_path_factory):
    jobs = {}
    for stack in ("example-hcloud", "example-aws"):
        ca = None
        for step, edit in STEPS.items():
            if stack == "example-aws" and step == "remove-agent":
                continue  # its only agent: a deployment has at least one
            project = make_project(tmp_path_factory.mktemp(f"{stack}-{step}"), stack,
                                   lambda c, edit=edit: (_base(c), edit and edit(c)))
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
        # Every secret gets another value (what `pulumi config set --secret` does).
        jobs[f"{stack}/rotate-secret"] = {"dir": base, "stack": stack,
                                          "patch": f"agentctl.plan.SECRET_PLACEHOLDER = {ROTATED!r}"}
        # The new version, and the operator asks for scout to be rebuilt with it.
        jobs[f"{stack}/rebuild"] = dict(jobs[f"{stack}/runtime-version"],
                                        patch="os.environ['AGENTCTL_REBUILD'] = 'scout'")
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
    """Adding/removing an agent or editing a rule changes the proxy's policy, which is
    not in its user-data: the proxy server's inputs stay the same (nothing to replace),
    and the push's manifest is the same files, so it re-pushes (contents differ) and
    reloads. Nothing is ignored on the proxy, so a change to its user-data replaces it
    with that user-data (on main: userData ignored + a replacement trigger, so a
    replacement booted with the user-data in state)."""
    first = _by_name(life["example-hcloud/first-up"])
    for step in ("add-agent", "remove-agent", "edit-rule"):
        now = _by_name(life[f"example-hcloud/{step}"])
        proxy, before = now[f"{N}-proxy"], first[f"{N}-proxy"]
        assert proxy["options"]["ignoreChanges"] == [] and proxy["options"]["replacementTrigger"] is False, step
        assert proxy["inputs"]["userData"] == before["inputs"]["userData"], f"{step}: the policy is not in it"
        assert _without_mock_ids(proxy["inputs"]) == _without_mock_ids(before["inputs"]), step
        pushed = [m["path"] for m in now[f"{N}-proxy-secrets"]["inputs"]["manifest"]]
        assert "/etc/agentctl-proxy/config.yaml" in pushed, step
    added = set(_by_name(life["example-hcloud/add-agent"])) - set(first)
    assert added == {f"{N}-agent-third"}
    removed = set(first) - set(_by_name(life["example-hcloud/remove-agent"]))
    assert removed == {f"{N}-agent-scribe"}


def test_aws_policy_changes_update_a_parameter_not_the_proxy(life):
    """The proxy's policy is its SSM parameter, which its policy-pull reloads: adding an
    agent or editing a rule updates that parameter in place, and the proxy instance's
    inputs (its user-data above all, user_data_replace_on_change) stay the same, so it is
    not in the replace set. (On main the policy was in the user-data: replaced.)"""
    first = _by_name(life["example-aws/first-up"])
    for step in ("add-agent", "edit-rule"):
        now = _by_name(life[f"example-aws/{step}"])
        proxy, before = now[f"{N}-proxy"], first[f"{N}-proxy"]
        assert proxy["inputs"]["userDataBase64"] == before["inputs"]["userDataBase64"], step
        # (dependsOn gains the new agent's secret parameters: ordering only, no provider call)
        assert proxy["inputs"] == before["inputs"], step
        assert {**proxy["options"], "dependsOn": None} == {**before["options"], "dependsOn": None}, step
        config = now[f"{N}-proxy-config"]
        assert config["inputs"]["insecureValue"] != first[f"{N}-proxy-config"]["inputs"]["insecureValue"], step
        assert config["inputs"]["name"] == "/agentctl/example-aws/_proxy/config"
        assert f"{N}-proxy-config" in proxy["options"]["dependsOn"], "first boot reads it"
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


@pytest.mark.parametrize("stack,key", [("example-aws", "userDataBase64"), ("example-hcloud", "userData")])
def test_a_new_runtime_version_neither_replaces_nor_restarts_an_agent(life, stack, key):
    """snapshot-upgrade moves the version on the running host and records it in the
    stack file; the next `pulumi up` must leave the host alone. Its user-data does change
    (a new host gets the new version at first boot), and the engine ignores that input
    on the existing one; only an explicit AGENTCTL_REBUILD=scout applies it (replace,
    delete first). On main the changed user-data replaced the host."""
    first, now = _by_name(life[f"{stack}/first-up"]), _by_name(life[f"{stack}/runtime-version"])
    scout, before = now[f"{N}-agent-scout"], first[f"{N}-agent-scout"]
    assert scout["inputs"][key] != before["inputs"][key], "the new version is in its user-data"
    assert key in scout["options"]["ignoreChanges"], "and the engine keeps the old one"
    assert not scout["options"]["replaceOnChanges"] and scout["options"]["replacementTrigger"] is False
    assert _without_mock_ids(scout["inputs"]) | {key: None} == _without_mock_ids(before["inputs"]) | {key: None}
    rebuilt = _by_name(life[f"{stack}/rebuild"])[f"{N}-agent-scout"]
    assert key not in rebuilt["options"]["ignoreChanges"] and rebuilt["options"]["deleteBeforeReplace"] is True
    others = [n for n, r in now.items() if "agent-" in n and r["type"] == scout["type"] and n != f"{N}-agent-scout"]
    assert all(key in _by_name(life[f"{stack}/rebuild"])[n]["options"]["ignoreChanges"] for n in others)


@pytest.mark.parametrize("stack,holders", [
    # (the CA key's parameter is a secret too; only its redaction label moved here)
    ("example-aws", {f"{N}-secret-scout-github-pat", f"{N}-secret-scout-anthropic-key", f"{N}-secret-scout-bot-token",
                     f"{N}-ca-key"}),
    ("example-hcloud", {f"{N}-proxy-secrets"})])
def test_rotating_a_secret_updates_only_what_holds_it(life, stack, holders):
    """A secret's new value reaches the SSM parameter (AWS; the proxy reads it again
    after its cache TTL) or the push to the proxy (Hetzner; written, then reload): no
    host's inputs hold a secret, so none is replaced or restarted."""
    import json

    first, now = _by_name(life[f"{stack}/first-up"]), _by_name(life[f"{stack}/rotate-secret"])
    assert {n for n, r in now.items() if ROTATED in json.dumps(r["inputs"])} == holders
    assert set(now) == set(first)
    for name, r in now.items():
        if r["type"] in ("aws:ec2/instance:Instance", "hcloud:index/server:Server"):
            assert _without_mock_ids(r["inputs"]) == _without_mock_ids(first[name]["inputs"]), name


@pytest.mark.parametrize("stack", ["example-aws", "example-hcloud"])
def test_destroy_is_declared_to_run_to_the_end(life, stack):
    """What `pulumi destroy` acts on: nothing protected (a protected resource stops it),
    every resource under the component (deleted before it), agents after (so deleted
    before) the proxy they depend on, and on AWS the DNS firewall association without
    mutation protection (ENABLED makes AWS refuse the disassociation, RSLVR-02307).
    What outlives it on purpose: KMS keys wait 30 days (a key deleted at once would lose
    every encrypted parameter's backups for good)."""
    resources = _by_name(life[f"{stack}/first-up"])
    assert not [n for n, r in resources.items() if r["options"]["protect"]]
    top = {n for n, r in resources.items() if r["options"]["parent"] is None}
    assert top == {N}, top
    for name, r in resources.items():
        if "-agent-" in name and r["type"] in ("aws:ec2/instance:Instance", "hcloud:index/server:Server"):
            assert f"{N}-proxy" in r["options"]["dependsOn"], name
    if stack == "example-aws":
        assert resources[f"{N}-dns-firewall-assoc"]["inputs"]["mutationProtection"] == "DISABLED"
        keys = [r for r in resources.values() if r["type"] == "aws:kms/key:Key"]
        assert keys and all(k["inputs"]["deletionWindowInDays"] == 30 for k in keys)
    else:
        assert f"{N}-proxy" in resources[f"{N}-proxy-secrets"]["options"]["dependsOn"]
