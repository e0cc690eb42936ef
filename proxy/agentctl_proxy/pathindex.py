"""A segment trie of path globs in which glob segments are indexed too.

Each trie node keeps its literal child segments in a dict and its glob child segments
(``org*``, ``v?``, ``*.json``, ``*``) in a ``GlobIndex``: keyed by the glob's literal
prefix (text before the first ``*``, ``?`` or ``[``), then by its literal suffix (text
after the last ``*`` or ``?``). A request segment looks up only the prefixes and
suffixes of itself whose lengths occur in the index, so the cost of one lookup
depends on the segment's length and on how many globs could match it, not on how
many globs the node holds. Only globs that share both their prefix and their suffix
with the segment are checked with a regex.

Semantics (docs/design.md, Paths): a pattern is a glob over whole segments; a trailing
``/*`` means "this path and everything below it" (``/v1/*`` matches ``/v1``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentctl_proxy.matcher import Grant

_SPECIAL = re.compile(r"[*?[]")


def is_glob(segment: str) -> bool:
    return _SPECIAL.search(segment) is not None


def literal_ends(glob: str) -> tuple[str, str, bool]:
    """(prefix, suffix, sufficient): every segment the glob matches starts with prefix
    and ends with suffix; `sufficient` when that (plus length) is also enough."""
    first = _SPECIAL.search(glob)
    assert first is not None
    prefix, rest = glob[: first.start()], glob[first.start():]
    if "[" in rest:  # character classes: index by prefix only, the regex decides
        return prefix, "", False
    suffix = rest[max(rest.rfind("*"), rest.rfind("?")) + 1:]
    return prefix, suffix, rest == "*" + suffix


@dataclass
class _Entry:
    seq: int  # insertion order, so candidates come out as a plain scan would list them
    check: Callable[[str], object] | None  # None: prefix + suffix are sufficient
    node: Node


class GlobIndex:
    def __init__(self) -> None:
        self.by_glob: dict[str, Node] = {}
        # prefix -> suffix -> entries; plus the distinct lengths, ascending
        self._tree: dict[str, dict[str, list[_Entry]]] = {}
        self._prefix_lens: list[int] = []
        self._suffix_lens: dict[str, list[int]] = {}

    def child(self, glob: str) -> Node:
        node = self.by_glob.get(glob)
        if node is not None:
            return node
        node = self.by_glob[glob] = Node()
        prefix, suffix, sufficient = literal_ends(glob)
        check = None if sufficient else re.compile(fnmatch.translate(glob)).match
        self._tree.setdefault(prefix, {}).setdefault(suffix, []).append(
            _Entry(len(self.by_glob), check, node))
        _insort(self._prefix_lens, len(prefix))
        _insort(self._suffix_lens.setdefault(prefix, []), len(suffix))
        return node

    def match(self, seg: str) -> list[Node]:
        n = len(seg)
        hits: list[_Entry] = []
        for plen in self._prefix_lens:
            if plen > n:
                break
            prefix = seg[:plen]
            by_suffix = self._tree.get(prefix)
            if by_suffix is None:
                continue
            for slen in self._suffix_lens[prefix]:
                if plen + slen > n:
                    break
                for e in by_suffix.get(seg[n - slen:], ()):
                    if e.check is None or e.check(seg):
                        hits.append(e)
        if len(hits) > 1:
            hits.sort(key=_seq)
        return [e.node for e in hits]


_seq = attrgetter("seq")


def _insort(lens: list[int], n: int) -> None:
    if n not in lens:
        lens.append(n)
        lens.sort()


@dataclass
class Node:
    literal: dict[str, Node] = field(default_factory=dict)
    globs: GlobIndex | None = None
    exact: list[Grant] = field(default_factory=list)  # the path ends here
    prefix: list[Grant] = field(default_factory=list)  # here and everything below


class PathTrie:
    """Path globs over whole segments; a trailing ``/*`` means 'this and below'."""

    def __init__(self) -> None:
        self.root = Node()
        self.grants: list[Grant] = []  # in the order added, each once
        # explicit port (None: the default 443/80) -> (position in grants, grant)
        self.by_port: dict[int | None, list[tuple[int, Grant]]] = {}

    def add(self, pattern: str, grant: Grant) -> None:
        if not self.grants or self.grants[-1] is not grant:
            for port in grant.ports if grant.ports is not None else (None,):
                self.by_port.setdefault(port, []).append((len(self.grants), grant))
            self.grants.append(grant)
        segments = pattern.split("/")[1:]
        prefix = segments[-1:] == ["*"]
        if prefix:
            segments = segments[:-1]
        node = self.root
        for seg in segments:
            if is_glob(seg):
                if node.globs is None:
                    node.globs = GlobIndex()
                node = node.globs.child(seg)
            else:
                node = node.literal.setdefault(seg, Node())
        (node.prefix if prefix else node.exact).append(grant)

    def match(self, path: str) -> list[Grant]:
        """Every grant one of whose patterns matches, in trie order (may repeat)."""
        return self.match_segments(path.split("/")[1:])

    def match_segments(self, segments: list[str]) -> list[Grant]:
        found: list[Grant] = []
        frontier = [self.root]
        for seg in segments:
            nxt: list[Node] = []
            for node in frontier:
                if node.prefix:
                    found.extend(node.prefix)
                child = node.literal.get(seg)
                if child is not None:
                    nxt.append(child)
                if node.globs is not None:
                    nxt.extend(node.globs.match(seg))
            frontier = nxt
            if not frontier:
                return found
        for node in frontier:
            found.extend(node.prefix)
            found.extend(node.exact)
        return found
