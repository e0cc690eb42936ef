"""Path canonicality: refuse, never normalise (docs/design.md, Paths).

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
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# The fast path: "/" and non-empty segments (the last may be empty) of RFC 3986 pchars
# other than ".", "%" and ";". Such a path has no encoding layer, no dot, no control
# character, backslash, parameter, empty segment or non-ASCII character, so the full
# check accepts it without an encoded slash; anything else takes the full check.
_PLAIN = re.compile(r"/(?:[A-Za-z0-9\-_~!$&'()*+,=:@]+/)*[A-Za-z0-9\-_~!$&'()*+,=:@]*")


@dataclass(frozen=True)
class PathVerdict:
    ok: bool
    reason: str = ""
    encoded_slash: bool = False  # allowed only by rules with allow_encoded_slashes


def _unquote(raw: bytes) -> bytes:
    return _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def _layer_problem(layer: bytes, first: bool) -> str | None:
    if _CONTROL.search(layer):
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
        segments = text.split("/")[1:]
    if "." in text and any(_dot_like(s) for s in segments):
        return "dot segment"
    if first and not _PATH_CHARS.fullmatch(text):
        return "character outside RFC 3986 path characters"
    return None


def _dot_like(segment: str) -> bool:
    """`.`, `..`, `...`, `. .`, `.. `: servers that trim spaces or collapse dot runs
    may treat any segment made only of dots and white space as a dot segment."""
    # NFKC leaves ASCII as it is; a layer's non-ASCII text that folds to a "." has
    # already been refused by _layer_problem, so this only runs where "." is present
    folded = segment if segment.isascii() else unicodedata.normalize("NFKC", segment)
    return "." in folded and all(c == "." or c.isspace() for c in folded)


_OK = PathVerdict(True)


def check_path(path: str) -> PathVerdict:
    """Check the path part (no query) of a request target."""
    if _PLAIN.fullmatch(path):  # the common case; tests/test_paths.py proves it equal
        return _OK
    return check_path_full(path)


def check_path_full(path: str) -> PathVerdict:
    """check_path without the fast path: every layer decoded and checked."""
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
    if not query or _QUERY_CHARS.fullmatch(query):
        return None
    return "character outside RFC 3986 query characters"


def split_target(target: str) -> tuple[str, str]:
    """Path and query of an origin-form request target."""
    path, sep, query = target.partition("?")
    return path, query
