"""Compiled allowlist: host index plus a segment trie of path globs per host pattern.

A decision looks up the host in a dict (exact names), walks its label suffixes
(``*.x.com`` patterns) and checks ``*`` rules (an IP literal instead looks up its
masked address once per cidr prefix length in use), then walks the path's segments
through a trie whose literal and glob segments are both indexed (pathindex.py). Cost
grows with the number of labels and segments and with the number of rules that
actually match, not with the number of rules, so 10,000 rules decide about as fast
as 10.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from agentctl_proxy.hosts import IPAddress
from agentctl_proxy.kept import KeptAnswers
from agentctl_proxy.pathindex import PathTrie

__all__ = ["Decision", "Grant", "Matcher", "PathTrie"]


@dataclass(frozen=True)
class Grant:
    """One rule, flattened: where it came from (``label``) and what it allows."""

    label: str  # "scout/allowlist[0]", "system/apt-mirrors", "scout/bootstrap[0]"
    host: str | None  # "api.x.com", "*.x.com", "*", or None for a cidr-only rule
    methods: frozenset[str]  # upper-case; contains "*" for any
    paths: tuple[str, ...]
    ports: frozenset[int] | None = None
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    allow_encoded_slashes: bool = False
    rate_limit: int | None = None
    order: int = 0  # the first matching grant in config order wins
    payload: object = None  # e.g. the secret a secrets rule injects
    bootstrap: str | None = None  # agent name whose bootstrap window gates it

    def port_ok(self, port: int, tls: bool) -> bool:
        if self.ports is not None:
            return port in self.ports
        return port == (443 if tls else 80)

    def method_ok(self, method: str) -> bool:
        return "*" in self.methods or method in self.methods


@dataclass(frozen=True)
class Decision:
    grant: Grant | None
    reason: str  # why not, when grant is None


class Matcher:
    """All grants of one identity, compiled."""

    def __init__(self, grants: list[Grant]) -> None:
        self.grants = grants
        self._decided: KeptAnswers = KeptAnswers()  # decide()'s answers for host names
        self._exact: dict[str, PathTrie] = {}
        self._suffix: dict[str, PathTrie] = {}
        self._any: PathTrie | None = None
        # (ip version, prefix length) -> network address >> host bits -> [(seq, trie)]
        self._cidr: dict[tuple[int, int], dict[int, list[tuple[int, PathTrie]]]] = {}
        for seq, g in enumerate(grants):
            if g.cidr is not None:
                trie = PathTrie()
                for p in g.paths:
                    trie.add(p, g)
                net = g.cidr
                key = int(net.network_address) >> (net.max_prefixlen - net.prefixlen)
                by_net = self._cidr.setdefault((net.version, net.prefixlen), {})
                by_net.setdefault(key, []).append((seq, trie))
                continue
            assert g.host is not None
            if g.host == "*":
                trie = self._any = self._any or PathTrie()
            elif g.host.startswith("*."):
                trie = self._suffix.setdefault(g.host[2:], PathTrie())
            else:
                trie = self._exact.setdefault(g.host, PathTrie())
            for p in g.paths:
                trie.add(p, g)

    def _tries(self, host: str, ip: IPAddress | None) -> list[PathTrie]:
        if ip is not None:  # IP literals match cidr rules only, never names or "*"
            hits: list[tuple[int, PathTrie]] = []
            for (version, plen), by_net in self._cidr.items():
                if version == ip.version:
                    hits += by_net.get(int(ip) >> (ip.max_prefixlen - plen), ())
            return [t for _, t in sorted(hits, key=lambda h: h[0])]  # in config order
        tries = []
        if (t := self._exact.get(host)) is not None:
            tries.append(t)
        start = 0 if self._suffix else -1
        while start >= 0:  # host, then each suffix after a dot ("*.x.com" also matches x.com)
            if (t := self._suffix.get(host[start:])) is not None:
                tries.append(t)
            start = host.find(".", start) + 1 or -1
        if self._any is not None:
            tries.append(self._any)
        return tries

    def host_ports(self, host: str, ip: IPAddress | None) -> list[Grant]:
        """Grants naming this host at all (for CONNECT, SNI and DNS decisions)."""
        out: list[Grant] = []
        for trie in self._tries(host, ip):
            out.extend(trie.grants)
        return out

    def host_allowed(
        self,
        host: str,
        ip: IPAddress | None,
        port: int,
        tls: bool,
        closed: frozenset[str] = frozenset(),
    ) -> bool:
        return self.host_grant(host, ip, port, tls, closed).grant is not None

    def host_grant(
        self,
        host: str,
        ip: IPAddress | None,
        port: int,
        tls: bool,
        closed: frozenset[str] = frozenset(),
    ) -> Decision:
        """The first grant in host_ports() order that is open and allows this port
        (the CONNECT / SNI decision), without scanning every grant of the host."""
        tries = self._tries(host, ip)
        default = port == (443 if tls else 80)
        for trie in tries:
            best: tuple[int, Grant] | None = None
            for listed in (trie.by_port.get(port), trie.by_port.get(None) if default else None):
                for pos, g in listed or ():
                    if not (g.bootstrap and g.bootstrap in closed):
                        if best is None or pos < best[0]:
                            best = (pos, g)
                        break
            if best is not None:
                return Decision(best[1], "")
        if any(not (g.bootstrap and g.bootstrap in closed) for trie in tries for g in trie.grants):
            return Decision(None, "port not allowed")
        return Decision(None, "no rule names this host")

    def decide(
        self,
        host: str,
        ip: IPAddress | None,
        port: int,
        tls: bool,
        method: str,
        path: str,
        encoded_slash: bool = False,
        closed: frozenset[str] = frozenset(),
    ) -> Decision:
        """The grant that allows this request (the first in config order), or why none does.

        A client asks the same few things again and again (one API endpoint per request
        of a session), so answers for host names are kept: the grants never change for
        this Matcher (a reload builds new ones), and the key is every input. Bounded:
        paths up to 512 characters, 4,096 answers. IP literals are rare and their address
        objects hash slowly, so those are decided each time."""
        if ip is not None or len(path) > 512:
            return self._decide(host, ip, port, tls, method, path, encoded_slash, closed)
        return self._decided.answer((host, port, tls, method, path, encoded_slash, closed),
                                    self._decide, host, None, port, tls, method, path, encoded_slash, closed)

    def _decide(self, host: str, ip: IPAddress | None, port: int, tls: bool, method: str, path: str,
                encoded_slash: bool, closed: frozenset[str]) -> Decision:
        """decide() without the kept answers: the compiled match."""
        tries = self._tries(host, ip)
        if not tries:
            return Decision(None, "no rule names this host")
        segments = path.split("/")[1:]
        candidates: list[Grant] = []
        for trie in tries:
            candidates += trie.match_segments(segments)
        best: Grant | None = None
        reason = "no rule allows this path"
        default_port = 443 if tls else 80
        for g in candidates:  # Grant.method_ok and Grant.port_ok, inlined (hot loop)
            if g.bootstrap is not None and g.bootstrap in closed:
                reason = "bootstrap window closed"
                continue
            if method not in g.methods and "*" not in g.methods:
                reason = "method not allowed"
                continue
            if port not in g.ports if g.ports is not None else port != default_port:
                reason = "port not allowed"
                continue
            if encoded_slash and not g.allow_encoded_slashes:
                reason = "encoded slash (%2F) not allowed"
                continue
            if best is None or g.order < best.order:
                best = g
        return Decision(best, "" if best else reason)

