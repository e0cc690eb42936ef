"""The Hetzner program, asserted on what it registers (under mocks). Each invariant
holds on the example stack (and on variants of its config) and fails on every program
broken in one facet of it."""
from __future__ import annotations

import base64
import binascii
import gzip
import ipaddress

import pytest
import yaml

from agentctl import hcloud_catalog
from agentctl.ca import ensure_ca
from agentctl.stackfile import load
from agentctl_stacks import policy, proxy_secrets
from tests.test_stacks_harness import Ctx, Plan, evaluate_variants, make_project, named, of_type

pytestmark = pytest.mark.slow  # the Hetzner invariants harness: one evaluation per break, 9 s wall, 8.5 s of CPU measured (fast tier: ./dev test -m "not lab and not slow"), as test_stacks_aws

STACK = "example-hcloud"
N = "agentctl"
SERVER = "hcloud:index/server:Server"
SUBNET = "hcloud:index/networkSubnet:NetworkSubnet"
PUSH = "pulumi-python:dynamic/agentctl:ProxySecrets"
MOCK_PUBLIC_IP = "203.0.113.10"  # what the mocks answer for the Primary IP
# The proxy's egress on Hetzner, written out (not derived from the code under test).
EGRESS = [("tcp", "80"), ("tcp", "443"), ("udp", "53"), ("tcp", "53"), ("udp", "123")]
TAILSCALE_EGRESS = [("udp", "41641"), ("udp", "3478")]




def servers(rs):
    return {r["name"]: r["inputs"] for r in of_type(rs, SERVER)}


def host_of(server_name: str) -> str:
    return server_name.removeprefix(f"{N}-agent-").removeprefix(f"{N}-")


# --- invariants ------------------------------------------------------------------------

def check_firewall_in_ssh_from_admin_cidrs_only(p, ctx):
    (fw,) = of_type(p.resources, "hcloud:index/firewall:Firewall")
    inbound = [r for r in fw["inputs"]["rules"] if r["direction"] != "out"]
    assert inbound == [{"description": "break-glass SSH from admin CIDRs", "direction": "in",
                        "port": "22", "protocol": "tcp", "sourceIps": ["203.0.113.0/24"]}]


def check_firewall_out_only_the_proxys_upstreams(p, ctx):
    """With no `out` rule Hetzner lets everything out: the list must exist and be exact."""
    (fw,) = of_type(p.resources, "hcloud:index/firewall:Firewall")
    out = [r for r in fw["inputs"]["rules"] if r["direction"] == "out"]
    expected = EGRESS + (TAILSCALE_EGRESS if ctx.deployment.tailscale else [])
    assert sorted((r["protocol"], r["port"]) for r in out) == sorted(expected)
    for r in out:
        assert r["destinationIps"] == ["0.0.0.0/0"] and "sourceIps" not in r, r


def check_firewall_applied_at_creation(p, ctx):
    rs = p.resources
    ids = {tuple(s["firewallIds"]) for s in servers(rs).values()}
    assert len(ids) == 1, f"every server must carry the same firewall at creation: {ids}"
    (only,) = ids
    assert len(only) == 1 and isinstance(only[0], int), only
    assert not of_type(rs, "hcloud:index/firewallAttachment:FirewallAttachment")
    assert len(servers(rs)) == 1 + len(ctx.deployment.agents)


def check_network_and_subnets_follow_the_stack_config(p, ctx):
    d, rs = ctx.deployment, p.resources
    assert named(rs, f"{N}-network")["inputs"]["ipRange"] == d.network.cidr
    subnets = {r["name"]: r["inputs"] for r in of_type(rs, SUBNET)}
    assert {k: v["ipRange"] for k, v in subnets.items()} == {f"{N}-proxy-subnet": str(d.proxy_subnet),
                                                             f"{N}-agent-subnet": str(d.agent_subnet)}
    network_ids = {s["networkId"] for s in subnets.values()} | {
        n["networkId"] for s in servers(rs).values() for n in s["networks"]}
    assert len(network_ids) == 1, network_ids
    for name, s in servers(rs).items():
        (net,) = s["networks"]
        home = d.proxy_subnet if name == f"{N}-proxy" else d.agent_subnet
        assert ipaddress.ip_address(net["ip"]) in home, (name, net["ip"], home)


def check_agents_have_no_public_address(p, ctx):
    d = ctx.deployment
    agents = {k: v for k, v in servers(p.resources).items() if k.startswith(f"{N}-agent-")}
    assert set(agents) == {f"{N}-agent-{a.name}" for a in d.agents}
    for name, s in agents.items():
        assert s["publicNets"] == [{"ipv4Enabled": False, "ipv6Enabled": False}], name
    assert [n["ip"] for s in agents.values() for n in s["networks"]] == [d.agent_ip(a) for a in d.agents]


def check_proxy_keeps_primary_ip(p, ctx):
    proxy = servers(p.resources)[f"{N}-proxy"]
    (net,) = proxy["publicNets"]
    assert net["ipv4Enabled"] is True and isinstance(net["ipv4"], int) and net["ipv6Enabled"] is False
    assert named(p.resources, f"{N}-proxy-ip")["inputs"]["autoDelete"] is False
    assert proxy["networks"][0]["ip"] == ctx.deployment.proxy_ip


def check_servers_have_ssh_keys(p, ctx):
    # Without one, Hetzner mails a root password.
    for name, s in servers(p.resources).items():
        assert s.get("sshKeys"), name


def check_secrets_pushed_not_in_user_data(p, ctx):
    push = named(p.resources, f"{N}-proxy-secrets")
    assert push["type"] == PUSH and push["inputs"]["files"] == "[secret]"
    assert push["inputs"]["user"] == "admin" and push["inputs"]["host"] == MOCK_PUBLIC_IP
    expected = [{"path": "/etc/agentctl-proxy/secrets/scout/anthropic-key", "owner": "agentctl-proxy", "mode": "0600"},
                {"path": "/etc/agentctl-proxy/secrets/scout/github-pat", "owner": "agentctl-proxy", "mode": "0600"},
                {"path": "/etc/agentctl-proxy/secrets/scout/bot-token", "owner": "agentctl-proxy", "mode": "0600"},
                {"path": "/etc/agentctl-proxy/ca.key", "owner": "agentctl-proxy", "mode": "0600"},
                # the policy: root's, readable by the proxy's group (as user-data writes it)
                {"path": "/etc/agentctl-proxy/config.yaml", "owner": "root:agentctl-proxy", "mode": "0640"}]
    if ctx.deployment.tailscale:
        # agentctl-tailscale-up.path waits for exactly this file (agentctl.secrets.TAILSCALE_AUTHKEY_PATH).
        expected.append({"path": "/etc/agentctl/tailscale-authkey", "owner": "root", "mode": "0600"})
    assert push["inputs"]["manifest"] == expected
    for name, s in servers(p.resources).items():
        text = _plain_user_data(s["userData"])
        assert "PRIVATE KEY" not in text and "tskey-" not in text, name


def _plain_user_data(user_data: str) -> str:
    """What cloud-init reads: user-data over Hetzner's 32 KiB goes as base64 of gzip
    (agentctl.userdata.hcloud_encode), where a leaked key would not show as text."""
    try:
        return gzip.decompress(base64.b64decode(user_data, validate=True)).decode()
    except (binascii.Error, OSError, ValueError):
        return user_data


def check_user_data_is_the_hosts_rendered_user_data(p, ctx):
    for name, s in servers(p.resources).items():
        assert s["userData"] == p.rendered[host_of(name)], f"{name} does not get its own rendered user-data"


def check_stack_outputs(p, ctx):
    d = ctx.deployment
    assert p.outputs == {
        "proxyPublicIp": MOCK_PUBLIC_IP,
        "proxyPrivateIp": d.proxy_ip,
        "agentPrivateIps": {a.name: d.agent_ip(a) for a in d.agents},
        "caFingerprintSha256": ctx.ca_fingerprint,
        "proxyHostKey": None,  # pinned at apply time; the mocks never push
        "ssh": {d.proxy.name: f"ssh admin@{MOCK_PUBLIC_IP}",
                **{a.name: f"ssh -J admin@{MOCK_PUBLIC_IP} admin@{d.agent_ip(a)}" for a in d.agents}},
    }


def check_servers_are_deleted_before_their_replacement(p, ctx):
    """A server holds a fixed network address (the proxy also its Primary IP): a
    replacement created first cannot get them."""
    for server in of_type(p.resources, SERVER):
        assert server["options"]["deleteBeforeReplace"] is True, server["name"]


def check_proxy_policy_is_pushed_not_rebuilt(p, ctx):
    """Adding an agent or editing a rule changes only the proxy's policy file, which is
    not in its user-data: it is pushed and reloaded (SIGHUP; started on first boot), the
    proxy is not rebuilt. Any other change to its user-data replaces it with that
    user-data: nothing ignored (a replacement would inherit an ignored input's old value)."""
    proxy = named(p.resources, f"{N}-proxy")
    assert proxy["options"]["ignoreChanges"] == [] and proxy["options"]["replacementTrigger"] is False
    user_data = hcloud_user_data_text(proxy["inputs"]["userData"])
    assert "/etc/agentctl-proxy/config.yaml" not in [f["path"] for f in yaml.safe_load(user_data)["write_files"]]
    push = named(p.resources, f"{N}-proxy-secrets")["inputs"]
    assert "/etc/agentctl-proxy/config.yaml" in [m["path"] for m in push["manifest"]]
    assert push.get("after") == "systemctl reload-or-restart agentctl-proxy.service"


def check_server_types_are_sold_where_they_run(p, ctx):
    for server in of_type(p.resources, SERVER):
        offered = hcloud_catalog.SERVER_TYPES.get(server["inputs"]["serverType"], ())
        assert server["inputs"]["location"] in offered, (server["name"], server["inputs"]["serverType"])


CHECKS = {f.__name__.removeprefix("check_"): f for f in [
    check_firewall_in_ssh_from_admin_cidrs_only, check_firewall_out_only_the_proxys_upstreams,
    check_firewall_applied_at_creation, check_network_and_subnets_follow_the_stack_config,
    check_agents_have_no_public_address, check_proxy_keeps_primary_ip, check_servers_have_ssh_keys,
    check_secrets_pushed_not_in_user_data, check_user_data_is_the_hosts_rendered_user_data, check_stack_outputs,
    check_servers_are_deleted_before_their_replacement, check_proxy_policy_is_pushed_not_rebuilt,
    check_server_types_are_sold_where_they_run]}

LEAKY_RENDER = ("orig = agentctl.render.render_hosts\n"
                "def leaky(*a, **kw):\n"
                "    return [type(h)(**{**h.__dict__, 'user_data': h.user_data + '\\n# BEGIN PRIVATE KEY'}) for h in orig(*a, **kw)]\n"
                "agentctl.render.render_hosts = leaky")


def _edit_files(edit: str) -> str:
    return ("orig_files = hcloud_deployment.HcloudDeployment.secret_files\n"
            f"hcloud_deployment.HcloudDeployment.secret_files = lambda self: {edit}\n")


BREAKS = {
    "firewall_in_ssh_from_admin_cidrs_only": [
        "orig = policy.hcloud_firewall_rules\n"
        "policy.hcloud_firewall_rules = lambda d: orig(d) + [{'direction': 'in', 'protocol': 'tcp', 'port': '443',"
        " 'source_ips': ['0.0.0.0/0']}]",
    ],
    "firewall_out_only_the_proxys_upstreams": [
        "policy.hcloud_proxy_egress = lambda d: []",  # the original defect: no out rule, egress open
        "orig = policy.hcloud_firewall_rules\n"
        "policy.hcloud_firewall_rules = lambda d: orig(d) + [{'direction': 'out', 'protocol': 'tcp', 'port': 'any',"
        " 'destination_ips': ['0.0.0.0/0']}]",
        "policy.TAILSCALE_PORTS = ()",
        "orig = policy.hcloud_firewall_rules\n"
        "policy.hcloud_firewall_rules = lambda d: [{**r, 'destination_ips': ['0.0.0.0/0', '::/0']}"
        " if r['direction'] == 'out' else r for r in orig(d)]",
    ],
    "firewall_applied_at_creation": ["override(pulumi_hcloud, 'Server', '-agent-scribe', firewall_ids=[])"],
    "network_and_subnets_follow_the_stack_config": [
        "override(pulumi_hcloud, 'NetworkSubnet', '-agent-subnet', ip_range='10.9.0.0/24')",
        "override(pulumi_hcloud, 'NetworkSubnet', '-proxy-subnet', ip_range='10.0.2.0/24')",
        "override(pulumi_hcloud, 'Network', '-network', ip_range='10.0.0.0/8')",
    ],
    "agents_have_no_public_address": [
        "policy.agent_public_nets = lambda: [{'ipv4_enabled': False, 'ipv6_enabled': True}]",
        "policy.agent_public_nets = lambda: [{'ipv4_enabled': True, 'ipv6_enabled': False}]",
    ],
    "proxy_keeps_primary_ip": ["override(pulumi_hcloud, 'PrimaryIp', '-proxy-ip', auto_delete=True)"],
    "servers_have_ssh_keys": ["override(pulumi_hcloud, 'Server', '-agent-', ssh_keys=[])"],
    "secrets_pushed_not_in_user_data": [
        LEAKY_RENDER,
        # The original defect: the Tailscale auth key is never pushed.
        _edit_files("[f for f in orig_files(self) if 'tailscale' not in f['path']]"),
        _edit_files("[{**f, 'mode': '0644'} if f['path'].endswith('ca.key') else f for f in orig_files(self)]"),
        _edit_files("[{**f, 'owner': 'agentctl-proxy'} for f in orig_files(self)]"),
        _edit_files("orig_files(self)[1:]"),
    ],
    "user_data_is_the_hosts_rendered_user_data": [
        "override(pulumi_hcloud, 'Server', '-agent-', user_data='#cloud-config\\n')",
        "override(pulumi_hcloud, 'Server', '-proxy', user_data='#cloud-config\\n')",
    ],
    "stack_outputs": [
        "orig = hcloud_deployment.HcloudDeployment.outputs\n"
        "hcloud_deployment.HcloudDeployment.outputs = lambda self: {**orig(self), 'agentPrivateIps': {}}",
        "orig_export = pulumi.export\n"
        "pulumi.export = lambda k, v: None if k == 'caFingerprintSha256' else orig_export(k, v)",
    ],
    "servers_are_deleted_before_their_replacement": [
        "override(pulumi_hcloud, 'Server', '-agent-scribe', opts=pulumi.ResourceOptions())",
        "override(pulumi_hcloud, 'Server', '-proxy', opts=pulumi.ResourceOptions())",
    ],
    "proxy_policy_is_pushed_not_rebuilt": [
        # The original defect: the policy only in user-data, so any change rebuilds the proxy.
        _edit_files("[f for f in orig_files(self) if not f['path'].endswith('config.yaml')]"),
        "hcloud_deployment.RELOAD_PROXY = None",
        # the landed design before: userData ignored, a replacement trigger beside it
        "override(pulumi_hcloud, 'Server', '-proxy', opts=pulumi.ResourceOptions(ignore_changes=['userData']))",
    ],
    "server_types_are_sold_where_they_run": [
        "override(pulumi_hcloud, 'Server', '-agent-scout', server_type='cx22')",  # retired
        "override(pulumi_hcloud, 'Server', '-proxy', location='ash')",  # cx23 is EU only
    ],
}
BROKEN = [f"{inv}/{i}" for inv, patches in sorted(BREAKS.items()) for i in range(len(patches))]


def _no_tailscale(config):
    config.pop("agentctl:tailscale")
    config.pop("agentctl:tailscaleAuthKey")


def _wide_network(config):
    config["agentctl:network"]["cidr"] = "10.20.0.0/16"


VARIANTS = {"baseline": None, "no-tailscale": _no_tailscale, "wide-network": _wide_network}


def _context(project) -> Ctx:
    # A CA in the project: plan uses it (so its fingerprint is known) and the harness
    # renders every host's expected user-data with it.
    return Ctx(load(project, STACK), ensure_ca(project, STACK).fingerprint_sha256)


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    return {name: make_project(tmp_path_factory.mktemp(name), STACK, edit) for name, edit in VARIANTS.items()}


@pytest.fixture(scope="module")
def ctxs(projects):
    return {name: _context(project) for name, project in projects.items()}


@pytest.fixture(scope="module")
def plans(projects, ctxs):
    jobs = {name: {"dir": str(project), "stack": STACK, "patch": ""} for name, project in projects.items()}
    for key in BROKEN:
        inv, i = key.split("/")
        jobs[key] = {"dir": str(projects["baseline"]), "stack": STACK, "patch": BREAKS[inv][int(i)]}
    return {k: Plan(v["resources"], v["outputs"], v["rendered"])
            for k, v in evaluate_variants(jobs, with_outputs=True).items()}


def test_every_invariant_has_a_break():
    assert set(BREAKS) == set(CHECKS) and all(BREAKS.values())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("invariant", sorted(CHECKS))
def test_invariant_holds(plans, ctxs, variant, invariant):
    CHECKS[invariant](plans[variant], ctxs[variant])


@pytest.mark.parametrize("broken", BROKEN)
def test_invariant_fails_on_broken_program(plans, ctxs, broken):
    with pytest.raises(AssertionError):
        CHECKS[broken.split("/")[0]](plans[broken], ctxs["baseline"])


def test_variants_differ_where_the_config_does(plans):
    """The variants are not the baseline in disguise: the checks above saw other inputs."""
    def rules(name):
        (fw,) = of_type(plans[name].resources, "hcloud:index/firewall:Firewall")
        return {(r["protocol"], r["port"]) for r in fw["inputs"]["rules"] if r["direction"] == "out"}

    assert rules("baseline") - rules("no-tailscale") == set(TAILSCALE_EGRESS)
    assert named(plans["wide-network"].resources, f"{N}-agent-subnet")["inputs"]["ipRange"] == "10.20.2.0/24"


def test_component_type_and_child_names(plans):
    assert named(plans["baseline"].resources, N)["type"] == "agentctl:hcloud:Deployment"
    assert all(r["name"] == N or r["name"].startswith(f"{N}-") for r in plans["baseline"].resources)


# --- the push provider: what it writes is what the (visible) manifest says ---------------

def _props(manifest, files):
    return {"host": "203.0.113.10", "serverId": "1", "user": "admin", "port": 22, "manifest": manifest,
            "files": files, "after": None}


def test_provider_pushes_the_manifest_with_the_secret_contents(monkeypatch):
    seen = {}

    def fake_push(host, files, **kw):
        seen.update(host=host, files=files, kw=kw)
        return "SHA256:pinned"

    monkeypatch.setattr(proxy_secrets.secrets_push, "push_files", fake_push)
    manifest = [{"path": "/etc/agentctl-proxy/ca.key", "owner": "agentctl-proxy", "mode": "0600"},
                {"path": "/etc/agentctl/tailscale-authkey", "owner": "root", "mode": "0600"}]
    files = [{"path": "/etc/agentctl/tailscale-authkey", "content": "tskey-auth-s3cret"},
             {"path": "/etc/agentctl-proxy/ca.key", "content": "-----BEGIN PRIVATE KEY-----"}]
    outs = proxy_secrets.ProxySecretsProvider().create(_props(manifest, files)).outs
    pushed = [(f.path, f.owner, f.mode, f.content) for f in seen["files"]]
    assert pushed == [("/etc/agentctl-proxy/ca.key", "agentctl-proxy", 0o600, b"-----BEGIN PRIVATE KEY-----"),
                      ("/etc/agentctl/tailscale-authkey", "root", 0o600, b"tskey-auth-s3cret")]
    assert outs["paths"] == sorted(m["path"] for m in manifest) and outs["hostKey"] == "SHA256:pinned"
    assert "tskey-auth-s3cret" not in repr(seen["files"]) + repr(outs["paths"])


def test_provider_refuses_when_manifest_and_contents_disagree(monkeypatch):
    monkeypatch.setattr(proxy_secrets.secrets_push, "push_files", lambda *a, **kw: pytest.fail("pushed"))
    manifest = [{"path": "/etc/agentctl-proxy/ca.key", "owner": "agentctl-proxy", "mode": "0600"}]
    with pytest.raises(proxy_secrets.secrets_push.SecretPushError, match="disagree"):
        proxy_secrets.ProxySecretsProvider().create(_props(manifest, []))


def test_a_changed_mode_or_secret_is_pushed_again():
    manifest = [{"path": "/x", "owner": "agentctl-proxy", "mode": "0600"}]
    old = _props(manifest, [{"path": "/x", "content": "a"}])
    olds = {**old, "digests": proxy_secrets._digests(old)}
    provider = proxy_secrets.ProxySecretsProvider()
    assert not provider.diff("id", olds, old).changes
    assert provider.diff("id", olds, _props(manifest, [{"path": "/x", "content": "b"}])).changes
    assert provider.diff("id", olds, _props([{**manifest[0], "mode": "0644"}], old["files"])).changes


def hcloud_user_data_text(value: str) -> str:
    """A server's user-data as cloud-init reads it (plain, or base64 of gzip)."""
    import base64
    import gzip

    return value if value.startswith("#cloud-config") else gzip.decompress(base64.b64decode(value)).decode()
