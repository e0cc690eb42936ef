"""Where upstream connections may go: resolve once, check, connect to what was checked.

The address that passed `upstream_deny_cidrs` is the address the proxy connects to,
so a name that resolves differently the second time (DNS rebinding) gains nothing.
`dns.records` answer first; then the system resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from agentctl_proxy.hosts import IPAddress, parse_ip_literal
from agentctl_proxy.kept import KeptAnswers


class UpstreamDenied(Exception):
    """str() names the address and the list; safe for clients and the audit."""


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


class Resolver:
    def __init__(self, deny_cidrs: list[str], records: dict[str, list[str]] | None = None):
        self.deny = [ipaddress.ip_network(c) for c in deny_cidrs]
        self._denied: KeptAnswers = KeptAnswers(limit=10_000)  # address -> the denied net it is in
        self.records = records or {}
        # parsed once, not per request (config.DnsRecord has validated each value)
        self._record_ips = {name: [ipaddress.ip_address(v) for v in values]
                            for name, values in self.records.items()}
        self._cache: KeptAnswers = KeptAnswers(limit=10_000)  # name -> (checked address, expiry)
        self.cache_ttl = 30.0

    def denied(self, ip: IPAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        # the same upstream, request after request
        return self._denied.answer(ip, self._denied_net, ip)

    def _denied_net(self, ip: IPAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        ip = _unmap(ip)
        for net in self.deny:
            if ip.version == net.version and ip in net:
                return net
        return None

    def check(self, host: str, ips: list[IPAddress]) -> IPAddress:
        """The first address, if no address of the name is denied."""
        if not ips:
            raise UpstreamDenied(f"{host} did not resolve")
        for ip in ips:
            net = self.denied(ip)
            if net is not None:
                raise UpstreamDenied(
                    f"{host} resolves to {_unmap(ip)}, inside upstream_deny_cidrs ({net})"
                )
        return _unmap(ips[0])

    async def resolve(self, host: str, port: int) -> IPAddress:
        """Resolve and check; raises UpstreamDenied."""
        literal = parse_ip_literal(host)
        if literal is not None:
            return self.check(host, [literal])
        ips = self._record_ips.get(host)
        if ips is not None:
            return self.check(host, ips)
        hit = self._cache.get(host)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]  # checked when it was cached
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise UpstreamDenied(f"{host} did not resolve: {e.strerror or e}") from None
        ips: list[IPAddress] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
            if ip not in ips:
                ips.append(ip)
        checked = self.check(host, ips)
        self._cache.keep(host, (checked, time.monotonic() + self.cache_ttl))
        return checked
