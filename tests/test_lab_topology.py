"""The lab's network plan: names, addresses, routes and the switch rules (pure)."""
import ipaddress
from pathlib import Path

import pytest

from agentctl.lab import topology
from agentctl.stackfile import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab():
    return load(ROOT, "lab")


def test_nodes_names_and_addresses(lab):
    by_name = {n.name: n for n in topology.nodes(lab)}
    assert by_name["proxy"].ip == lab.proxy_ip == "10.77.1.10"
    assert by_name["proxy"].netns == "agentctl-h-proxy"
    assert by_name["scout"].ip == "10.77.2.11" and by_name["scout"].gateway == "10.77.2.1"
    assert by_name["admin"].netns == topology.ADMIN_NS and by_name["admin"].ip == "10.77.0.2"
    assert by_name["net-api"].ip == "198.18.0.10" and by_name["net-evil"].ip == "198.18.0.66"


def test_every_namespace_has_the_lab_prefix_and_short_interface_names(lab):
    for ns in topology.namespaces(lab):
        assert ns.startswith(topology.PREFIX)
    names = [n.switch_if for n in topology.nodes(lab)]
    assert len(set(names)) == len(names) and all(len(n) <= 15 for n in names)


def test_internet_servers_from_dns_records(lab):
    servers = {s.role: s for s in topology.internet_servers(lab)}
    assert servers["upstream"].names == ("api.lab.test", "deb.lab.test", "llm.lab.test", "pypi.lab.test")
    assert servers["evil"].names == ("evil.lab.test",)
    # rebind.lab.test points at the metadata address: not a lab internet server
    assert all("rebind.lab.test" not in s.names for s in servers.values())


@pytest.mark.parametrize("dst,inside", [
    ("default", False), ("0.0.0.0/0", False), ("192.0.2.0/24", False), ("10.0.0.0/8", False),
    ("169.254.169.254", False), ("10.77.1.10", True), ("10.77.0.0/16", True), ("198.18.0.0/24", True),
    ("198.18.1.0/24", False), ("fe80::/64", True), ("fd00:198:18::/64", True), ("::/0", False),
    ("2001:db8::/32", False), ("ff00::/8", True), ("garbage", False)])
def test_route_is_inside_lab(lab, dst, inside):
    assert topology.route_is_inside_lab(lab, dst) is inside


def test_node_routes_stay_inside_the_lab(lab):
    for node in topology.nodes(lab):
        for route in topology.node_routes(lab, node):
            dst = route.split()[0]
            assert topology.route_is_inside_lab(lab, dst), route
            assert not dst.startswith("default")


def test_switch_ruleset_drops_by_default_and_grants_only_the_security_groups(lab):
    text = topology.switch_ruleset(lab)
    assert "type filter hook forward priority filter; policy drop;" in text
    assert "type filter hook input priority filter; policy drop;" in text
    rules = [line.strip() for line in text.splitlines() if line.strip().endswith("accept")]
    assert rules == [
        "ct state established,related accept",
        "ip saddr 10.77.2.0/24 ip daddr 10.77.1.10 tcp dport { 53, 80, 443, 8080 } accept",
        "ip saddr 10.77.2.0/24 ip daddr 10.77.1.10 udp dport { 53, 123 } accept",
        "ip saddr 10.77.1.10 ip daddr 198.18.0.0/24 tcp dport { 53, 80, 443 } accept",
        "ip saddr 10.77.1.10 ip daddr 198.18.0.0/24 udp dport 53 accept",
        "ip saddr 10.77.0.2 ip daddr { 10.77.1.10, 10.77.2.11 } tcp dport 22 accept",
        "ip saddr 10.77.1.10 ip daddr 10.77.2.0/24 tcp dport 22 accept",
        "ct state established,related accept",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
    ]
    # nothing may reach the agents' subnet but SSH; no grant leads from an agent to the internet
    for rule in rules:
        if "saddr 10.77.2.0/24" in rule:
            assert "daddr 10.77.1.10" in rule
    assert text.rstrip().endswith("}")
    assert text.count("counter name dropped drop") == 3  # invalid, forward, input


def test_extra_rules_go_before_the_final_drop(lab):
    text = topology.switch_ruleset(lab, ["ip saddr 10.77.2.0/24 ip daddr 198.18.0.0/24 accept"])
    forward = text.split("chain input")[0]
    assert forward.index("198.18.0.0/24 accept") < forward.rindex("counter name dropped drop")


def test_listen_ports_follow_the_stack(lab):
    custom = lab.model_copy(update={"proxy": lab.proxy.model_copy(
        update={"listen": lab.proxy.listen.model_copy(update={"tunnel": 3128})})})
    assert "tcp dport { 53, 80, 443, 3128 }" in topology.switch_ruleset(custom)


def test_all_lab_addresses_are_outside_the_machines_network(lab):
    for node in topology.nodes(lab):
        addr = ipaddress.ip_address(node.ip)
        assert any(addr in p for p in topology.lab_prefixes(lab) if p.version == 4)


def test_the_hermes_lab_plays_the_model_and_the_chat_with_their_fakes_at_their_real_names():
    d = load(ROOT, "lab-hermes")
    servers = {s.role: s for s in topology.internet_servers(d)}
    assert servers["model"].names == ("api.anthropic.com",) and servers["chat"].names == ("api.telegram.org",)
    assert "pypi.lab.test" in servers["upstream"].names
    nodes = [n.name for n in topology.nodes(d) if n.kind == "internet"]
    assert len(set(nodes)) == len(nodes) and {"net-model", "net-chat"} <= set(nodes)


def test_a_fake_sharing_its_address_is_refused_in_the_users_words(tmp_path):
    """The fake answers every name at its address as that API: another name there would
    be served by the wrong server. Exit 2, one line naming the file and key."""
    import shutil
    import subprocess
    import sys

    text = (ROOT / "Pulumi.lab-hermes.yaml").read_text().replace(
        "{name: api.telegram.org, type: A, value: 198.18.0.12}", "{name: api.telegram.org, type: A, value: 198.18.0.11}")
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "Pulumi.lab-hermes.yaml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "lab", "status", "--stack", "lab-hermes",
                           "--project-dir", str(tmp_path), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["agentctl: Pulumi.lab-hermes.yaml: agentctl:proxy.dnsRecords: api.anthropic.com, api.telegram.org "
                     "share 198.18.0.11; expected each of api.anthropic.com, api.telegram.org at an address of its own"]
    assert not (tmp_path / "state").exists()
