"""Host firewall rules (ufw syntax), per role. Default deny in and out is set by
converge; these are the only exceptions. Pure, so tests compare them directly with
what `ufw show added` reports on a booted host."""
from __future__ import annotations

import ipaddress

from agentctl.model import Deployment


def management_subnet(d: Deployment) -> str:
    """Where admin access comes from (the lab's admin namespace, an EC2 Instance
    Connect Endpoint, a bastion): the first /24 of the deployment network."""
    return str(list(ipaddress.ip_network(d.network.cidr).subnets(new_prefix=24))[0])


def _dhcp() -> list[str]:
    # Lease renewals: without them a cloud host loses its address after the lease.
    return ["allow out proto udp to any port 67 comment 'dhcp'"]


def agent_rules(d: Deployment) -> list[str]:
    proxy, listen = d.proxy_ip, d.proxy.listen
    ports = ",".join(str(p) for p in sorted({listen.tunnel, listen.https, listen.http}))
    return [
        f"allow out to {proxy} port {ports} proto tcp comment 'proxy'",
        f"allow out to {proxy} port {listen.dns} proto tcp comment 'dns via proxy'",
        f"allow out to {proxy} port {listen.dns} proto udp comment 'dns via proxy'",
        f"allow out to {proxy} port 123 proto udp comment 'ntp via proxy'",
        *_dhcp(),
        f"allow in proto tcp from {management_subnet(d)} to any port 22 comment 'admin ssh'",
        f"allow in proto tcp from {proxy} to any port 22 comment 'admin ssh via proxy jump'",
    ]


def proxy_rules(d: Deployment) -> list[str]:
    agents, listen = str(d.agent_subnet), d.proxy.listen
    ports = ",".join(str(p) for p in sorted({listen.tunnel, listen.https, listen.http}))
    admin_sources = [management_subnet(d), *d.network.admin_cidrs]
    rules = [
        f"allow in proto tcp from {agents} to any port {ports} comment 'agents to proxy'",
        f"allow in proto tcp from {agents} to any port {listen.dns} comment 'agents dns'",
        f"allow in proto udp from {agents} to any port {listen.dns} comment 'agents dns'",
        f"allow in proto udp from {agents} to any port 123 comment 'agents ntp'",
        *[f"limit in proto tcp from {src} to any port 22 comment 'admin ssh'" for src in admin_sources],
        "allow out proto tcp to any port 80,443 comment 'upstreams'",
        "allow out proto tcp to any port 53 comment 'dns'",
        "allow out proto udp to any port 53 comment 'dns'",
        "allow out proto udp to any port 123 comment 'ntp'",
        f"allow out proto tcp to {agents} port 22 comment 'ssh jump to agents'",
        *_dhcp(),
    ]
    if d.cloud == "aws":
        # IMDSv2 for the instance profile's credentials (hop limit 1 keeps it on this host).
        rules.append("allow out proto tcp to 169.254.169.254 port 80 comment 'imds'")
    if d.tailscale:
        rules.append("allow out proto udp to any port 41641 comment 'tailscale'")
        rules.append("allow in on tailscale0 comment 'tailscale admin path'")
    return rules
