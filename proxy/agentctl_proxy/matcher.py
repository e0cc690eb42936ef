"""Compiled allowlist: host index plus a segment trie of path globs per host pattern.

A decision looks up the host in a dict (exact names), walks its label suffixes
(``*.x.com`` patterns) and checks ``*`` rules, then walks the path's segments through
a trie. Cost grows with the number of labels and segments, not with the number of
rules, so 10,000 rules decide about as fast as 10.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field

from agentctl_proxy.hosts import IPAddress


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


@dataclass
class _Node:
    literal: dict[str, _Node] = field(default_factory=dict)
    globs: list[tuple[re.Pattern[str], _Node]] = field(default_factory=list)
    exact: list[Grant] = field(default_factory=list)  # the path ends here
    prefix: list[Grant] = field(default_factory=list)  # here and everything below


class PathTrie:
    """Path globs over whole segments; a trailing ``/*`` means 'this and below'."""

    def __init__(self) -> None:
        self.root = _Node()
        self.grants: list[Grant] = []
        self._glob_nodes: dict[tuple[int, str], _Node] = {}

    def add(self, pattern: str, grant: Grant) -> None:
        if not self.grants or self.grants[-1] is not grant:
            self.grants.append(grant)
        segments = pattern.split("/")[1:]
        prefix = segments[-1:] == ["*"]
        if prefix:
            segments = segments[:-1]
        node = self.root
        for seg in segments:
            if any(c in seg for c in "*?["):
                key = (id(node), seg)
                child = self._glob_nodes.get(key)
                if child is None:
                    child = self._glob_nodes[key] = _Node()
                    node.globs.append((re.compile(fnmatch.translate(seg)), child))
                node = child
            else:
                node = node.literal.setdefault(seg, _Node())
        (node.prefix if prefix else node.exact).append(grant)

    def match(self, path: str) -> list[Grant]:
        segments = path.split("/")[1:]
        found: list[Grant] = []
        frontier = [self.root]
        for seg in segments:
            nxt: list[_Node] = []
            for node in frontier:
                found.extend(node.prefix)
                child = node.literal.get(seg)
                if child is not None:
                    nxt.append(child)
                for rx, gchild in node.globs:
                    if rx.match(seg):
                        nxt.append(gchild)
            frontier = nxt
            if not frontier:
                return found
        for node in frontier:
            found.extend(node.prefix)
            found.extend(node.exact)
        return found


@dataclass(frozen=True)
class Decision:
    grant: Grant | None
    reason: str  # why not, when grant is None


class Matcher:
    """All grants of one identity, compiled."""

    def __init__(self, grants: list[Grant]) -> None:
        self.grants = grants
        self._exact: dict[str, PathTrie] = {}
        self._suffix: dict[str, PathTrie] = {}
        self._any: PathTrie | None = None
        self._cidr: list[tuple[Grant, PathTrie]] = []
        for g in grants:
            if g.cidr is not None:
                trie = PathTrie()
                for p in g.paths:
                    trie.add(p, g)
                self._cidr.append((g, trie))
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
            return [t for g, t in self._cidr if ip in g.cidr]  # type: ignore[operator]
        tries = []
        if (t := self._exact.get(host)) is not None:
            tries.append(t)
        labels = host.split(".")
        for i in range(len(labels)):
            if (t := self._suffix.get(".".join(labels[i:]))) is not None:
                tries.append(t)
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
        return any(
            g.port_ok(port, tls) and not (g.bootstrap and g.bootstrap in closed)
            for g in self.host_ports(host, ip)
        )

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
        tries = self._tries(host, ip)
        if not tries:
            return Decision(None, "no rule names this host")
        candidates: list[Grant] = []
        for trie in tries:
            candidates.extend(trie.match(path))
        best: Grant | None = None
        reason = "no rule allows this path"
        for g in candidates:
            if g.bootstrap is not None and g.bootstrap in closed:
                reason = "bootstrap window closed"
                continue
            if not g.method_ok(method):
                reason = "method not allowed"
                continue
            if not g.port_ok(port, tls):
                reason = "port not allowed"
                continue
            if encoded_slash and not g.allow_encoded_slashes:
                reason = "encoded slash (%2F) not allowed"
                continue
            if best is None or g.order < best.order:
                best = g
        return Decision(best, "" if best else reason)

