"""Host names and IP literals: one normal form, and every spelling of an address.

Pure functions. A target host is either a DNS name or an IP literal; anything that
some resolver would read as an address (decimal 2130706433, octal 0177.0.0.1, hex
0x7f000001, short 127.1) is an IP literal here too, so it can never pass as a name.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# no spelling of an address (dotted, inet_aton, IPv6) has any other character before
# an IPv6 zone ("%eth0"); normalize_host has lower-cased "0X7F" and "FE80::"
_NOT_IP = re.compile(r"[^0-9a-fx.:]")
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_host(host: str) -> str:
    """Lower-case, without brackets and one trailing dot (docs/design.md: Hosts)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    return host


def _cached(fn):
    """Cache a pure function of a host string (a request asks about its host in
    requestheaders, the upstream check and server_connect; answers are immutable).
    Only strings as long as a host can be are cached, so the cache stays small
    (4,096 entries of at most 300 characters) whatever names clients send."""
    cached = functools.lru_cache(maxsize=4096)(fn)

    @functools.wraps(fn)
    def lookup(host: str, *args):
        return cached(host, *args) if len(host) <= 300 else fn(host, *args)

    lookup.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return lookup


@_cached
def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """Split a Host header / authority; raises ValueError on a malformed one."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError("unclosed [ in host")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after ]")
        port_s = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_s = value.split(":")
    else:
        host, port_s = value, ""
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"bad port {port_s!r}")
        return normalize_host(host), int(port_s)
    return normalize_host(host), default_port


@_cached
def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host denotes if any resolver could read it as one, else None.

    Covers canonical forms and the legacy inet_aton spellings. IPv4-mapped IPv6
    addresses are returned as their IPv4 address so CIDR checks see the real target.
    """
    host = normalize_host(host)
    address = host.split("%", 1)[0]
    if not address or _NOT_IP.search(address):  # a name: neither parser below accepts it
        return None
    try:
        ip = ipaddress.ip_address(address)
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


@_cached
def is_canonical_ip(host: str) -> bool:
    """True for the one spelling an address should have (dotted quad, RFC 5952).

    IPv4-mapped IPv6 spellings are never canonical: they name an IPv4 target.
    """
    host = normalize_host(host)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return False
    return str(ip) == host


@_cached
def is_valid_name(host: str) -> bool:
    """A syntactically valid DNS name (already normalised), not an IP literal."""
    if not host or len(host) > 253 or parse_ip_literal(host) is not None:
        return False
    return all(_LABEL.match(label) for label in host.split("."))
