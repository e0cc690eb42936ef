"""Path canonicality: refuse, never normalise (DESIGN.md, Paths).

A request path is matched as sent. Anything a server or a framework behind it might
normalise into another path is refused before matching, in raw and in every
percent-encoded layer (double encoding), with overlong UTF-8 caught by strict decoding.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_PCT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_MAX_LAYERS = 4  # %25252e... deeper than this is refused outright
# RFC 3986 pchar (unreserved, sub-delims, ":", "@", and "%" of pct-encoded) plus "/".
# Anything else raw, such as a space in an HTTP/2 :path, would be copied verbatim
# into the HTTP/1 request line upstream and change how it parses there.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*")


@dataclass(frozen=True)
class PathVerdict:
    ok: bool
    reason: str = ""
    encoded_slash: bool = False  # allowed only by rules with allow_encoded_slashes


def _unquote(raw: bytes) -> bytes:
    return _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _layer_problem(layer: bytes, first: bool) -> str | None:
    if any(b < 0x20 or b == 0x7F for b in layer):
        return "control character"
    if b"\\" in layer:
        return "backslash"
    if b";" in layer:
        return "path parameter (;)"
    try:
        text = layer.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid or overlong UTF-8"
    if not text.isascii():
        # fullwidth dots, division slashes ... that some stacks fold to . and /
        folded = unicodedata.normalize("NFKC", text)
        if folded != text and any(c in folded for c in "./\\;%"):
            return "unicode character that folds to a path delimiter"
    if first:
        segments = text.split("/")[1:]
        if "" in segments[:-1]:
            return "empty segment (//)"
    else:
        segments = re.split(r"/", text)[1:]
    if any(_dot_like(s) for s in segments):
        return "dot segment"
    if first and not _PATH_CHARS.fullmatch(text):
        return "character outside RFC 3986 path characters"
    return None


def _dot_like(segment: str) -> bool:
    """`.`, `..`, `...`, `. .`, `.. `: servers that trim spaces or collapse dot runs
    may treat any segment made only of dots and white space as a dot segment."""
    folded = unicodedata.normalize("NFKC", segment)
    return "." in folded and all(c == "." or c.isspace() for c in folded)


def check_path(path: str) -> PathVerdict:
    """Check the path part (no query) of a request target."""
    if not path.startswith("/"):
        return PathVerdict(False, "not an origin-form path")
    raw = path.encode("utf-8", "surrogateescape")
    layer, first = raw, True
    slashes = raw.count(b"/")
    for _ in range(_MAX_LAYERS):
        if _BAD_PCT.search(layer) and first:
            return PathVerdict(False, "malformed percent-encoding")
        problem = _layer_problem(layer, first)
        if problem:
            return PathVerdict(False, problem if first else f"encoded {problem}")
        if b"%" not in layer:
            return PathVerdict(True, encoded_slash=layer.count(b"/") > slashes)
        decoded = _unquote(layer)
        if decoded == layer:
            return PathVerdict(True, encoded_slash=layer.count(b"/") > slashes)
        layer, first = decoded, False
    return PathVerdict(False, "too many layers of percent-encoding")


def check_query(query: str) -> str | None:
    """Why a raw query string is refused (characters outside RFC 3986 query), or None."""
    return None if _QUERY_CHARS.fullmatch(query) else "character outside RFC 3986 query characters"


def split_target(target: str) -> tuple[str, str]:
    """Path and query of an origin-form request target."""
    path, sep, query = target.partition("?")
    return path, query
