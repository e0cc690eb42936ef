"""Host firewall rules, per role, spelled exactly as `ufw show added` prints them. Default deny in and out is set by
converge; these are the only exceptions. Pure, so tests compare them directly with
what `ufw show added` reports on a booted host."""
from __future__ import annotations

import ipaddress

from agentctl.model import Deployment


def management_subnet(d: Deployment) -> str:
    """Where admin access comes from (the lab's admin namespace, an EC2 Instance
    Connect Endpoint, a bastion): the first /24 of the deployment network."""
    return str(list(ipaddress.ip_network(d.network.cidr).subnets(new_prefix=24))[0])


def admin_ssh_sources(d: Deployment) -> list[tuple[str, str]]:
    """(source, why) pairs allowed to SSH into an agent host. On AWS the EC2 Instance
    Connect Endpoint sits in the agent subnet; its security group narrows that to the
    endpoint (and the agents' own egress rules never allow port 22)."""
    if d.cloud == "aws":
        return [(str(d.agent_subnet), "admin ssh via EC2 Instance Connect Endpoint")]
    return [(management_subnet(d), "admin ssh")]


def fail2ban_ignored(d: Deployment, role: str) -> list[str]:
    """Addresses fail2ban must never ban on a host of this role: the admin paths into
    an agent host (the proxy as jump host, the admin sources), since a ban there locks
    every admin out of a host that has no other way in. The proxy keeps banning any
    address: it faces the internet (break-glass) and its own admins come from outside."""
    if role != "agent":
        return []
    return list(dict.fromkeys([d.proxy_ip, *(src for src, _ in admin_ssh_sources(d))]))


def _dhcp(d: Deployment, role: str) -> list[str]:
    """Lease renewals: without them a cloud host loses its address after the lease.
    DHCP only: from the client port 68 (below 1024, so no unprivileged process can
    send from it) to the server port 67. An agent's DHCP server is inside the
    deployment network (AWS: the subnet router; Hetzner: the network gateway), or
    reached by broadcast. The proxy's public link gets its lease from outside it
    (Hetzner: 172.31.1.1), and the proxy may send DNS anywhere anyway: any address."""
    rule = "allow out from any port 68 to {} port 67 proto udp comment 'dhcp'"
    if role == "proxy":
        return [rule.format("any")]
    return [rule.format("255.255.255.255"), rule.format(d.network.cidr)]


def agent_rules(d: Deployment) -> list[str]:
    proxy, listen = d.proxy_ip, d.proxy.listen
    ports = ",".join(str(p) for p in sorted({listen.tunnel, listen.https, listen.http}))
    return [
        f"allow out to {proxy} port {ports} proto tcp comment 'proxy'",
        f"allow out to {proxy} port {listen.dns} proto tcp comment 'dns via proxy'",
        f"allow out to {proxy} port {listen.dns} proto udp comment 'dns via proxy'",
        f"allow out to {proxy} port 123 proto udp comment 'ntp via proxy'",
        *_dhcp(d, "agent"),
        *[f"allow from {src} to any port 22 proto tcp comment '{why}'" for src, why in admin_ssh_sources(d)],
        f"allow from {proxy} to any port 22 proto tcp comment 'admin ssh via proxy jump'",
    ]


def proxy_rules(d: Deployment) -> list[str]:
    agents, listen = str(d.agent_subnet), d.proxy.listen
    ports = ",".join(str(p) for p in sorted({listen.tunnel, listen.https, listen.http}))
    internal = [src for src, _ in admin_ssh_sources(d)]
    rules = [
        f"allow from {agents} to any port {ports} proto tcp comment 'agents to proxy'",
        f"allow from {agents} to any port {listen.dns} proto tcp comment 'agents dns'",
        f"allow from {agents} to any port {listen.dns} proto udp comment 'agents dns'",
        f"allow from {agents} to any port 123 proto udp comment 'agents ntp'",
        *[f"allow from {src} to any port 22 proto tcp comment 'admin ssh'" for src in internal],
        # From the internet (break-glass), also rate-limited: 6 connections in 30 s at most.
        *[f"limit from {src} to any port 22 proto tcp comment 'break-glass ssh'" for src in d.network.admin_cidrs],
        "allow out 80,443/tcp comment 'upstreams'",
        "allow out 53/tcp comment 'dns'",
        "allow out 53/udp comment 'dns'",
        "allow out 123/udp comment 'ntp'",
        f"allow out to {agents} port 22 proto tcp comment 'ssh jump to agents'",
        *_dhcp(d, "proxy"),
    ]
    if d.cloud == "aws":
        # IMDSv2 for the instance profile's credentials (hop limit 1 keeps it on this host).
        rules.append("allow out to 169.254.169.254 port 80 proto tcp comment 'imds'")
    if d.tailscale:
        rules.append("allow out 41641/udp comment 'tailscale'")
        rules.append("allow out 3478/udp comment 'tailscale stun'")
        rules.append("allow in on tailscale0 comment 'tailscale admin path'")
    return rules
