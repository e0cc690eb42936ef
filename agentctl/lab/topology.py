"""The lab's network plan, as pure data: which namespaces, which addresses, which
routes, and the switch's nftables ruleset. Nothing here touches the machine, so every
rule that keeps lab traffic inside the lab is a plain unit test.

Shape: one switch namespace routes between point-to-point links, one link per lab
node (a host, the admin namespace, each lab internet server). Each node holds an
address in its /24 and the switch answers ARP for the whole subnet (proxy_arp), so
every packet between two nodes, even two agents in the same subnet, crosses the
switch's forward chain (the security groups).
No lab namespace has a link to the machine's own namespace, and no route but the
lab's prefixes: there is nowhere for a packet to leave.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from agentctl.model import Deployment
from agentctl.firewall import management_subnet

PREFIX = "agentctl-"
SWITCH_NS = f"{PREFIX}switch"
ADMIN_NS = f"{PREFIX}admin"
NFT_TABLE = "agentctl_lab"

# The lab "internet": RFC 2544 benchmarking space, which no real network routes, and
# a ULA /64 for the IPv6 escape vector. They exist only inside lab namespaces.
INTERNET_V4 = ipaddress.ip_network("198.18.0.0/24")
INTERNET_V6 = ipaddress.ip_network("fd00:198:18::/64")
SWITCH_LINK_LOCAL = "fe80::1"

Kind = Literal["host", "admin", "internet"]
NODE_PREFIX = 24  # every lab subnet (admin, proxy, agents, internet) is a /24


@dataclass(frozen=True)
class Node:
    name: str              # lab-unique: the host name, "admin", or "net-<role>"
    kind: Kind
    netns: str
    ip: str
    gateway: str           # the switch's address on this link
    switch_if: str         # the link's end in the switch namespace (<= 15 chars)
    ip6: str | None = None

    @property
    def if_name(self) -> str:
        return "eth0"


# Services the lab plays with a scripted fake of the real API (agentctl/lab/assets),
# named by the host the real client is built for: Hermes' anthropic provider refuses
# any other model host, and its Telegram adapter talks to the Bot API's name.
FAKES = {"api.anthropic.com": "model", "api.telegram.org": "chat"}
Role = Literal["upstream", "evil", "model", "chat"]


class SharedFakeAddress(ValueError):
    """A fake service's name shares its lab address with another name."""


@dataclass(frozen=True)
class Internet:
    """A lab internet server: name, address, and what it serves."""

    role: Role
    ip: str
    ip6: str | None
    names: tuple[str, ...]


def internet_servers(deployment: Deployment) -> list[Internet]:
    """Lab internet servers, from the stack's DNS records: every name that resolves
    into the lab internet is served by the server at that address; `evil*` names are
    the rogue server (rogue DNS, DoH, HTTPS that must stay unreachable); a name in
    FAKES is that service's fake, alone at its address."""
    by_ip: dict[str, list[str]] = {}
    for rec in deployment.proxy.dns_records:
        if rec.type == "A" and ipaddress.ip_address(rec.value) in INTERNET_V4:
            by_ip.setdefault(rec.value, []).append(rec.name)
    servers = []
    for ip, names in sorted(by_ip.items(), key=lambda kv: ipaddress.ip_address(kv[0])):
        rogue = any(n.split(".")[0] == "evil" for n in names)
        fakes = {FAKES[n] for n in names if n in FAKES}
        if fakes and (len(names) > 1 or rogue):
            raise SharedFakeAddress(f"{', '.join(sorted(names))} share {ip}",
                                    f"each of {', '.join(n for n in names if n in FAKES)} at an address of its own")
        role = fakes.pop() if fakes else "evil" if rogue else "upstream"
        host_part = int(ipaddress.ip_address(ip)) - int(INTERNET_V4.network_address)
        servers.append(Internet(role, ip,
                                str(INTERNET_V6.network_address + host_part), tuple(sorted(names))))
    return servers


def admin_subnet(deployment: Deployment) -> ipaddress.IPv4Network:
    """The first /24 of the stack's network: the proxy and agents use the 2nd and 3rd."""
    return ipaddress.ip_network(management_subnet(deployment))


def lab_prefixes(deployment: Deployment) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every destination a lab route may point at."""
    return [ipaddress.ip_network(deployment.network.cidr), INTERNET_V4, INTERNET_V6,
            ipaddress.ip_network("fe80::/64")]


def host_netns(host: str) -> str:
    return f"{PREFIX}h-{host}"


def nodes(deployment: Deployment) -> list[Node]:
    def gw(net: ipaddress.IPv4Network) -> str:
        return str(net.network_address + 1)

    out = [Node("admin", "admin", ADMIN_NS, str(admin_subnet(deployment).network_address + 2),
                gw(admin_subnet(deployment)), "sw-admin"),
           Node(deployment.proxy.name, "host", host_netns(deployment.proxy.name), deployment.proxy_ip,
                gw(deployment.proxy_subnet), "sw-h0")]
    for i, agent in enumerate(deployment.agents, start=1):
        out.append(Node(agent.name, "host", host_netns(agent.name), deployment.agent_ip(agent),
                        gw(deployment.agent_subnet), f"sw-h{i}"))
    for i, srv in enumerate(internet_servers(deployment)):
        name = f"net-{srv.role if srv.role in FAKES.values() else srv.names[0].split('.')[0]}"
        out.append(Node(name, "internet", f"{PREFIX}{name}", srv.ip, gw(INTERNET_V4), f"sw-n{i}", srv.ip6))
    return out


def namespaces(deployment: Deployment) -> list[str]:
    return [SWITCH_NS] + [n.netns for n in nodes(deployment)]


def node_routes(deployment: Deployment, node: Node) -> list[str]:
    """`ip route` arguments inside a node: the lab prefixes via the switch, nothing else."""
    own = ipaddress.ip_network(f"{node.ip}/{NODE_PREFIX}", strict=False)  # on-link already
    routes = [f"{deployment.network.cidr} via {node.gateway} dev eth0",
              f"{INTERNET_V4} via {node.gateway} dev eth0",
              f"{INTERNET_V6} via {SWITCH_LINK_LOCAL} dev eth0"]
    return [r for r in routes if ipaddress.ip_network(r.split()[0]) != own]


def route_is_inside_lab(deployment: Deployment, dst: str) -> bool:
    """True when a route destination (as `ip -j route` prints it) is inside the lab's prefixes.
    `default` and anything outside the prefixes are routes out of the lab."""
    if dst == "default":
        return False
    try:
        net = ipaddress.ip_network(dst, strict=False)
    except ValueError:
        return False
    if net.is_multicast:          # ff00::/8 in the local table: never leaves the link
        return True
    return any(net.version == p.version and net.subnet_of(p) for p in lab_prefixes(deployment))


@dataclass(frozen=True)
class Grant:
    comment: str
    rule: str


def security_groups(deployment: Deployment) -> list[Grant]:
    """The cloud security groups, as nftables forward rules in the switch."""
    proxy, listen = deployment.proxy_ip, deployment.proxy.listen
    agents = deployment.agent_subnet
    hosts = ", ".join([proxy] + [deployment.agent_ip(a) for a in deployment.agents])
    admin = str(admin_subnet(deployment).network_address + 2)
    tcp = ", ".join(str(p) for p in sorted({listen.dns, listen.http, listen.https, listen.tunnel}))
    return [
        Grant("agents -> proxy listeners", f"ip saddr {agents} ip daddr {proxy} tcp dport {{ {tcp} }} accept"),
        Grant("agents -> proxy DNS and time", f"ip saddr {agents} ip daddr {proxy} udp dport {{ {listen.dns}, 123 }} accept"),
        Grant("proxy -> lab internet", f"ip saddr {proxy} ip daddr {INTERNET_V4} tcp dport {{ 53, 80, 443 }} accept"),
        Grant("proxy -> lab internet DNS", f"ip saddr {proxy} ip daddr {INTERNET_V4} udp dport 53 accept"),
        Grant("admin -> sshd on every host", f"ip saddr {admin} ip daddr {{ {hosts} }} tcp dport 22 accept"),
        # The proxy is the admin's jump host to the agents (docs/design.md, "Admin path").
        Grant("proxy -> sshd on agents (jump host)", f"ip saddr {proxy} ip daddr {agents} tcp dport 22 accept"),
    ]


def switch_ruleset(deployment: Deployment, extra: list[str] = ()) -> str:
    """The switch's whole nftables ruleset. Policy drop in both chains; every drop is
    counted (`nft list counter inet agentctl_lab dropped`) so escape can show them.
    `extra` rules are accepted before the drop (tests use it to open a hole on purpose)."""
    lines = [f"table inet {NFT_TABLE} {{",
             "\tcounter dropped { }",
             "\tchain forward {",
             "\t\ttype filter hook forward priority filter; policy drop;",
             "\t\tct state established,related accept",
             "\t\tct state invalid counter name dropped drop"]
    for g in security_groups(deployment):
        lines += [f"\t\t# {g.comment}", f"\t\t{g.rule}"]
    for rule in extra:
        lines += ["\t\t# opened on purpose (lab test)", f"\t\t{rule}"]
    lines += ["\t\tcounter name dropped drop",
              "\t}",
              "\t# the switch itself serves nothing",
              "\tchain input {",
              "\t\ttype filter hook input priority filter; policy drop;",
              "\t\tct state established,related accept",
              "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept",
              "\t\tcounter name dropped drop",
              "\t}",
              "}"]
    return "\n".join(lines) + "\n"
