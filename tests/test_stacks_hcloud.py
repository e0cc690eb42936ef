"""The Hetzner program, asserted on what it registers (under mocks). Each invariant
holds on the example stack and fails on a program broken in that respect."""
from __future__ import annotations

import pytest

from tests.test_stacks_harness import evaluate_variants, make_project, named, of_type

STACK = "example-hcloud"
N = "agentctl"
SERVER = "hcloud:index/server:Server"
PUSH = "pulumi-python:dynamic/agentctl:ProxySecrets"


def servers(rs):
    return {r["name"]: r["inputs"] for r in of_type(rs, SERVER)}


def firewall_id(rs):
    # The mocks number hcloud resources in registration order; find the firewall's
    # number through the servers that reference it, and check it is an integer.
    (fw,) = of_type(rs, "hcloud:index/firewall:Firewall")
    ids = {tuple(s["firewallIds"]) for s in servers(rs).values()}
    return fw, ids


def check_firewall_ssh_from_admin_cidrs_only(rs):
    (fw,) = of_type(rs, "hcloud:index/firewall:Firewall")
    assert fw["inputs"]["rules"] == [{"description": "break-glass SSH from admin CIDRs", "direction": "in",
                                      "port": "22", "protocol": "tcp", "sourceIps": ["203.0.113.0/24"]}]


def check_firewall_applied_at_creation(rs):
    _, ids = firewall_id(rs)
    assert len(ids) == 1, f"every server must carry the same firewall at creation: {ids}"
    (only,) = ids
    assert len(only) == 1 and isinstance(only[0], int), only
    assert not of_type(rs, "hcloud:index/firewallAttachment:FirewallAttachment")
    assert len(servers(rs)) == 3


def check_agents_have_no_public_address(rs):
    agents = {k: v for k, v in servers(rs).items() if k.startswith(f"{N}-agent-")}
    assert set(agents) == {f"{N}-agent-scout", f"{N}-agent-scribe"}
    for name, s in agents.items():
        assert s["publicNets"] == [{"ipv4Enabled": False, "ipv6Enabled": False}], name
    assert [n["ip"] for s in agents.values() for n in s["networks"]] == ["10.0.2.11", "10.0.2.12"]


def check_proxy_keeps_primary_ip(rs):
    proxy = servers(rs)[f"{N}-proxy"]
    (net,) = proxy["publicNets"]
    assert net["ipv4Enabled"] is True and isinstance(net["ipv4"], int) and net["ipv6Enabled"] is False
    assert named(rs, f"{N}-proxy-ip")["inputs"]["autoDelete"] is False
    assert proxy["networks"][0]["ip"] == "10.0.1.10"


def check_servers_have_ssh_keys(rs):
    # Without one, Hetzner mails a root password.
    for name, s in servers(rs).items():
        assert s.get("sshKeys"), name


def check_secrets_pushed_not_in_user_data(rs):
    push = named(rs, f"{N}-proxy-secrets")
    assert push["type"] == PUSH and push["inputs"]["files"] == "[secret]"
    assert push["inputs"]["user"] == "admin" and push["inputs"]["host"]
    for name, s in servers(rs).items():
        assert "PRIVATE KEY" not in s["userData"], name


CHECKS = {f.__name__.removeprefix("check_"): f for f in [
    check_firewall_ssh_from_admin_cidrs_only, check_firewall_applied_at_creation,
    check_agents_have_no_public_address, check_proxy_keeps_primary_ip, check_servers_have_ssh_keys,
    check_secrets_pushed_not_in_user_data]}

BREAKS = {
    "firewall_ssh_from_admin_cidrs_only":
        "orig = policy.hcloud_firewall_rules\n"
        "policy.hcloud_firewall_rules = lambda d: orig(d) + [{'direction': 'in', 'protocol': 'tcp', 'port': '443',"
        " 'source_ips': ['0.0.0.0/0']}]",
    "firewall_applied_at_creation": "override(pulumi_hcloud, 'Server', '-agent-scribe', firewall_ids=[])",
    "agents_have_no_public_address":
        "policy.agent_public_nets = lambda: [{'ipv4_enabled': False, 'ipv6_enabled': True}]",
    "proxy_keeps_primary_ip": "override(pulumi_hcloud, 'PrimaryIp', '-proxy-ip', auto_delete=True)",
    "servers_have_ssh_keys": "override(pulumi_hcloud, 'Server', '-agent-', ssh_keys=[])",
    "secrets_pushed_not_in_user_data":
        "orig = agentctl.render.render_hosts\n"
        "def leaky(*a, **kw):\n"
        "    return [type(h)(**{**h.__dict__, 'user_data': h.user_data + '\\n# BEGIN PRIVATE KEY'}) for h in orig(*a, **kw)]\n"
        "agentctl.render.render_hosts = leaky",
}


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("hcloud"), STACK)
    jobs = {"baseline": {"dir": str(project), "stack": STACK, "patch": ""}}
    jobs.update({name: {"dir": str(project), "stack": STACK, "patch": p} for name, p in BREAKS.items()})
    return evaluate_variants(jobs)


def test_every_invariant_has_a_break():
    assert set(BREAKS) == set(CHECKS)


@pytest.mark.parametrize("invariant", sorted(CHECKS))
def test_invariant_holds(plans, invariant):
    CHECKS[invariant](plans["baseline"])


@pytest.mark.parametrize("invariant", sorted(BREAKS))
def test_invariant_fails_on_broken_program(plans, invariant):
    with pytest.raises(AssertionError):
        CHECKS[invariant](plans[invariant])


def test_component_type_and_child_names(plans):
    assert named(plans["baseline"], N)["type"] == "agentctl:hcloud:Deployment"
    assert all(r["name"] == N or r["name"].startswith(f"{N}-") for r in plans["baseline"])
