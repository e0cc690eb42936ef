"""Values a policy is written with: durations, listen addresses, networks, host and
path patterns, methods. Each check says what is wrong and what is expected, with an
example, in the words of the file (docs/policy-schema.md: Values)."""

from __future__ import annotations

import ipaddress
import itertools
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

from agentctl_proxy.hosts import is_valid_name, normalize_host

# A duration is one whole number and one unit, ms, s, m or h: units Go's
# time.ParseDuration (iron-proxy's durations) reads the same way. Bare numbers (whose
# unit a reader has to guess) and days (Go has none) are refused.
_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
# Methods a rule may name: the ones an agent's HTTP client sends. A typo ("GTE") in an
# allowlist would otherwise allow nothing and say nothing.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_FORMATTER = re.compile(r"\{\{\s*\.Value\s*\}\}")
WILDCARD_ADDRESSES = ("0.0.0.0", "::")


def parse_duration(value: Any) -> float:
    """'15m' -> 900.0 (seconds)."""
    m = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a duration; expected a whole number and a unit (ms, s, m or h),"
                         " e.g. 30s or 15m")
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_duration(seconds: float) -> str:
    """900.0 -> '15m': the largest unit that writes it whole."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


# Seconds in code; written back as a duration string (render writes what the proxy reads).
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str),
                     Field(description="a duration: a whole number and a unit (ms, s, m or h)",
                           examples=["30s", "15m"])]


def duration_text(value: Any) -> str:
    """A duration kept as written (what a message or a log line shows), checked as one."""
    parse_duration(value)
    return value


DurationText = Annotated[str, BeforeValidator(duration_text),
                         Field(description="a duration: a whole number and a unit (ms, s, m or h)",
                               examples=["30m"])]


def parse_listen(value: str) -> tuple[str, int]:
    """'10.0.1.10:8080', ':443' (all addresses), '[::1]:53' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not an address and port; expected HOST:PORT,"
                         " e.g. \"10.0.1.10:8080\" or \":443\" (every address)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host:
        try:
            ipaddress.ip_address(host)  # listeners bind addresses, not names
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address; a listener binds an address, e.g. \"10.0.1.10:8080\"")
    return host or "0.0.0.0", int(port)


def _listen(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"{value} is a number; expected HOST:PORT in quotes, e.g. \"10.0.1.10:{value}\""
                         f" or \":{value}\" (every address)")
    if isinstance(value, str):
        parse_listen(value)
    return value


ListenAddress = Annotated[str, BeforeValidator(_listen),
                          Field(description="HOST:PORT in quotes", examples=["10.0.1.10:8080", ":443"])]


def listener_clash(listeners: list[tuple[str, str, int]]) -> str | None:
    """The one clash rule for every listener of one proxy (TCP and DNS: the DNS server
    listens on TCP too): two listeners clash on the same port when they bind the same
    address, or when either binds every address (0.0.0.0, or :: which on Linux is
    dual-stack and takes IPv4 too). Each listener is (its key, address, port); the
    address may be a symbol standing for one specific address (the stack model's
    "proxy"). Returns the message naming both, or None."""
    for (a, ha, pa), (b, hb, pb) in itertools.combinations(listeners, 2):
        if pa != pb:
            continue
        wild = [h for h in (ha, hb) if h in WILDCARD_ADDRESSES]
        if ha == hb or "::" in wild or (wild and ":" not in (hb if ha in wild else ha)):
            where = f"port {pa}" if ha == hb else f"port {pa} ({_show(ha)} and {_show(hb)} overlap)"
            return f"{a} and {b} both listen on {where}; expected a different port or address for each listener"
    return None


def _show(host: str) -> str:
    return "every address" if host in WILDCARD_ADDRESSES else host


def network(value: Any, *, strict: bool = True) -> str:
    """A network written with its prefix length and, when strict, no host bits."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a network; expected an address/prefix in quotes, e.g. \"10.20.0.0/16\"")
    if "/" not in value:
        one = "128" if ":" in value else "32"
        raise ValueError(f"{value!r} has no prefix length; expected address/prefix, e.g. {value}/16 (a network)"
                         f" or {value}/{one} (one address)")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network; expected an address/prefix, e.g. 10.20.0.0/16") from None
    if strict and ipaddress.ip_interface(value).ip != net.network_address:
        raise ValueError(f"{value!r} has host bits set; expected the network address, {net}")
    return value


Cidr = Annotated[str, AfterValidator(network),
                 Field(description="a network with its prefix length", examples=["10.20.0.0/16"])]


def host_pattern(value: str) -> str:
    """An exact name, '*' or '*.example.com' (which also matches example.com), as
    iron-proxy's hostmatch.MatchGlob reads those three forms; one trailing dot removed."""
    h = normalize_host(value)
    if h == "*":
        return h
    name = h[2:] if h.startswith("*.") else h
    if "*" in name or "?" in name or "[" in name or not is_valid_name(name):
        raise ValueError(f"{value!r} is not a host pattern; expected an exact name, '*' or '*.example.com'"
                         " (an IP target needs cidr: instead)")
    return h


HostPattern = Annotated[str, AfterValidator(host_pattern),
                        Field(description="an exact name, '*' or '*.example.com'", examples=["api.github.com"])]


def methods(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("is empty; leave methods out (or write ['*']) to allow every method, e.g. [GET, POST]")
    out = [m.upper() for m in value]
    for m in out:
        if m != "*" and m not in HTTP_METHODS:
            raise ValueError(f"{m!r} is not an HTTP method a rule may name; expected some of"
                             f" {', '.join(HTTP_METHODS)}, or '*'")
    return out


def paths(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("is empty; leave paths out to allow every path, or list globs, e.g. ['/v1/*']")
    for p in value:
        if not p.startswith("/") or "//" in p or "\\" in p:
            raise ValueError(f"{p!r} is not a path glob; expected one starting with /, e.g. /v1/*")
        if any(seg in (".", "..") for seg in p.split("/")):
            raise ValueError(f"{p!r} has a . or .. segment, which no request path has after normalising;"
                             " expected the path as the server sees it, e.g. /v1/*")
    return value


def header_name(value: str) -> str:
    if not _HEADER.match(value):
        raise ValueError(f"{value!r} is not a header name; expected a token such as Authorization or x-api-key")
    return value


def formatter(value: str) -> str:
    if len(_FORMATTER.findall(value)) != 1:
        raise ValueError(f"{value!r} must contain {{{{ .Value }}}} exactly once; expected e.g. \"Bearer {{{{ .Value }}}}\"")
    return value


def absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path; expected one starting with /, e.g. /etc/agentctl-proxy/x")
    return value


def dns_name(value: str) -> str:
    if not is_valid_name(normalize_host(value)):
        raise ValueError(f"{value!r} is not a DNS name; expected e.g. api.example.test")
    return value
