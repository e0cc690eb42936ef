"""Pure parts of the deployment model: addressing and secret references."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agentctl.stackfile import from_config, load

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]


def _deployment(cidr: str, n_agents: int):
    agent = BASE["agentctl:agents"][0]
    agents = [dict(agent, name=f"agent{i}") for i in range(n_agents)]
    return from_config({**BASE, "agentctl:network": {"cidr": cidr}, "agentctl:agents": agents}, "t")


@settings(max_examples=40, deadline=None)
@given(second=st.integers(0, 255), prefix=st.sampled_from([16, 20, 22]), n=st.integers(1, 200))
def test_addresses_are_unique_and_inside_their_subnets(second, prefix, n):
    net = ipaddress.ip_network(f"10.{second}.0.0/{prefix}", strict=False)
    d = _deployment(str(net), n)
    ips = [ipaddress.ip_address(d.agent_ip(a)) for a in d.agents]
    assert len(set(ips)) == n
    assert all(ip in d.agent_subnet for ip in ips)
    assert ipaddress.ip_address(d.proxy_ip) in d.proxy_subnet
    assert not d.proxy_subnet.overlaps(d.agent_subnet)
    assert d.proxy_subnet.subnet_of(net) and d.agent_subnet.subnet_of(net)
    # AWS reserves the first four and the last address of a subnet.
    assert all(4 <= int(ip) - int(d.agent_subnet.network_address) < 255 for ip in ips)


def test_secret_refs_lists_every_pulumi_secret():
    d = load(ROOT, "example-hcloud")
    assert [(p, r.config) for p, r in d.secret_refs()] == [
        ("agents[0].egress.secrets[0].from", "anthropicKey"), ("agents[0].egress.secrets[1].from", "githubPat"),
        ("agents[0].egress.secrets[2].from", "telegramBotToken"),
        ("tailscale.authKey", "tailscaleAuthKey")]


def _agents(*numbers):
    agent = BASE["agentctl:agents"][0]
    return [dict(agent, name=f"agent{i}", **({"hostNumber": n} if n else {})) for i, n in enumerate(numbers)]


def test_pinned_host_numbers_survive_removing_an_agent():
    """Unpinned, removing the first agent renumbers the rest (the cloud replaces them);
    pinned, every other agent keeps its address."""
    three = from_config({**BASE, "agentctl:agents": _agents(20, 21, 22)}, "t")
    two = from_config({**BASE, "agentctl:agents": _agents(20, 21, 22)[1:]}, "t")
    assert {a.name: three.agent_ip(a) for a in three.agents[1:]} == {a.name: two.agent_ip(a) for a in two.agents}
    unpinned = from_config({**BASE, "agentctl:agents": _agents(None, None)}, "t")
    assert [unpinned.agent_ip(a).rsplit(".", 1)[1] for a in unpinned.agents] == ["11", "12"]
