"""The hot-path functions as they were before the speed work (commit d13f78f), verbatim,
so that the tests can prove the faster versions give the same answers.

Not used by the proxy. Each function keeps its original name; see test_paths.py,
test_hosts.py, test_inbound.py and test_audit.py for the comparisons.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import unicodedata

from mitmproxy import http

from agentctl_proxy.hosts import IPAddress, normalize_host, split_host_port
from agentctl_proxy.paths import _BAD_PCT, _MAX_LAYERS, _PATH_CHARS, _PCT, PathVerdict

# ------------------------------------------------------------------ paths.py

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


# ------------------------------------------------------------------ hosts.py


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host denotes if any resolver could read it as one, else None.

    Covers canonical forms and the legacy inet_aton spellings. IPv4-mapped IPv6
    addresses are returned as their IPv4 address so CIDR checks see the real target.
    """
    host = normalize_host(host)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        ip = None
    if ip is None:
        if not re.fullmatch(r"[0-9a-fx.]+", host) or not host[0].isdigit():
            return None
        try:  # the libc parser accepts 2130706433, 0177.0.0.1, 0x7f.1 ...
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def is_valid_name(host: str) -> bool:
    """hosts.is_valid_name over the original parse_ip_literal."""
    if not host or len(host) > 253 or parse_ip_literal(host) is not None:
        return False
    return all(re.match(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$", label) for label in host.split("."))


# ------------------------------------------------------------------ inbound.py


def header_problem(req: http.Request) -> str | None:
    # (not verbatim since issue 16: control bytes other than HTAB, and non-token names)
    token = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    for name, value in req.headers.fields:
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value) or not name or any(c not in token for c in name):
            return "header with a control character or a name that is not a token"
    if "transfer-encoding" in req.headers and "content-length" in req.headers:
        return "both Content-Length and Transfer-Encoding"
    lengths = req.headers.get_all("content-length")
    if len(set(lengths)) > 1 or any(not x.strip().isdigit() for x in lengths):
        return "conflicting or malformed Content-Length"
    te = req.headers.get_all("transfer-encoding")
    if te and (len(te) > 1 or te[0].strip().lower() != "chunked"):
        return "Transfer-Encoding other than chunked"
    return None


def authority_problem(req: http.Request, target: str, port: int, tls: bool) -> tuple[int, str] | None:
    """(status, reason) unless every name the request gives for its host is the target.

    HTTP/1: exactly one Host header. HTTP/2: `:authority` and any Host header must all
    agree, because an HTTP/1 upstream receives the Host header when both are sent.
    """
    hosts = req.headers.get_all("host")
    authority = req.authority if (req.is_http2 or req.is_http3) else ""
    claims = [a for a in (authority, *hosts) if a]
    if len(hosts) > 1 or not claims:
        return 400, "expected exactly one Host header"
    for claim in claims:
        try:
            host, claim_port = split_host_port(claim, 443 if tls else 80)
        except ValueError:
            return 400, "malformed Host header"
        if (host, claim_port) != (target, port):
            return 403, f"Host {host} does not match the target {target}"
    return None


# ------------------------------------------------------------------ audit.py


def audit_line(record: dict) -> bytes:
    """AuditLog.write's encoding of a record (the time already in it)."""
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
