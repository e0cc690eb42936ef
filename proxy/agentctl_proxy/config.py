"""The proxy config: iron-proxy's YAML format plus our extensions (docs/design.md).

Parsed once at the boundary into typed, frozen models; unknown keys are errors.
`load_config` raises ConfigError whose message is one line:
``FILE: key.path: what is wrong; expected ...``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentctl_proxy import pki, strict_yaml
from agentctl_proxy.hosts import is_valid_name, normalize_host

DEFAULT_DENY_CIDRS = (
    "0.0.0.0/8",  # "this network": 0.0.0.0 reaches the proxy host itself
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # CGNAT
    "169.254.0.0/16",  # link-local, IMDS
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",  # ULA
    "fe80::/10",
    "64:ff9b::/96",  # NAT64: embeds an IPv4 address we cannot see
    "2002::/16",  # 6to4: same
)

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_TOKEN = re.compile(r"^[A-Z][A-Z-]*$")
_FORMATTER = re.compile(r"\{\{\s*\.Value\s*\}\}")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """Bad config; str() is the one line to print."""


def parse_duration(value: Any) -> float:
    """'15m' -> 900.0; bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ValueError("expected a duration like 30s, 15m, 1h")
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


def parse_listen(value: str) -> tuple[str, int]:
    """'10.0.1.10:8080', ':443' (all addresses), '[::1]:53' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 10.0.1.10:8080 or :443")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host:
        ipaddress.ip_address(host)  # listeners bind addresses, not names
    return host or "0.0.0.0", int(port)


Duration = Annotated[float, Field(ge=0)]


def _networks(values: list[str]) -> list[str]:
    """Every entry must be a network written exactly (no host bits set)."""
    for v in values:
        ipaddress.ip_network(v, strict=True)
    return values


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rule(Strict):
    name: str | None = None
    host: str | None = None
    methods: list[str]
    paths: list[str] = ["/*"]
    ports: list[Annotated[int, Field(gt=0, lt=65536)]] | None = None
    cidr: str | None = None
    allow_encoded_slashes: bool = False
    rate_limit: Annotated[int, Field(gt=0)] | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is None:
            return v
        h = normalize_host(v)
        if h == "*":
            return h
        name = h[2:] if h.startswith("*.") else h
        if "*" in name or not is_valid_name(name):
            raise ValueError(
                f"{v!r} is not a host pattern; expected an exact name, '*' or '*.example.com'"
                " (IP targets need a cidr)"
            )
        return h

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("empty; expected a list of methods such as [GET] or ['*']")
        out = [m.upper() for m in v]
        for m in out:
            if m != "*" and not _TOKEN.match(m):
                raise ValueError(f"{m!r} is not an HTTP method")
        return out

    @field_validator("paths")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("empty; expected path globs such as ['/v1/*']")
        for p in v:
            if not p.startswith("/") or "//" in p or "\\" in p:
                raise ValueError(f"{p!r}: expected a path glob starting with / (e.g. /v1/*)")
            if any(seg in (".", "..") for seg in p.split("/")):
                raise ValueError(f"{p!r}: dot segments never match")
        return v

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_network(v, strict=True)
        return v

    @model_validator(mode="after")
    def _target(self) -> Rule:
        if self.host is None and self.cidr is None:
            raise ValueError("host: required; expected a host name pattern (or a cidr)")
        return self


class RulesConfig(Strict):
    rules: list[Rule]


class AllowlistTransform(Strict):
    name: Literal["allowlist"]
    config: RulesConfig


class _Source(Strict):
    ttl: Duration = 900.0
    failure_ttl: Duration = 30.0

    @field_validator("ttl", "failure_ttl", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class EnvSource(_Source):
    type: Literal["env"]
    var: str


class FileSource(_Source):
    type: Literal["file"]
    path: str


class SsmSource(_Source):
    type: Literal["aws_ssm"]
    name: str
    region: str | None = None
    with_decryption: bool = True


Source = Annotated[Union[EnvSource, FileSource, SsmSource], Field(discriminator="type")]


class Inject(Strict):
    header: str | None = None
    query_param: str | None = None
    # The path segment after this prefix (Telegram's Bot API: "/bot" in /bot<token>/<method>).
    path_prefix: str | None = None
    formatter: str = "{{ .Value }}"

    @model_validator(mode="after")
    def _one_target(self) -> Inject:
        if sum(t is not None for t in (self.header, self.query_param, self.path_prefix)) != 1:
            raise ValueError("expected exactly one of header, query_param or path_prefix")
        if self.path_prefix is not None and not re.fullmatch(r"/[A-Za-z0-9._~/-]*", self.path_prefix):
            raise ValueError(f"path_prefix {self.path_prefix!r} is not a plain path starting with /")
        if self.header is not None and not _HEADER.match(self.header):
            raise ValueError(f"header {self.header!r} is not a header name")
        if len(_FORMATTER.findall(self.formatter)) != 1:
            raise ValueError("formatter must contain {{ .Value }} exactly once")
        return self


class Secret(Strict):
    name: str | None = None
    source: Source
    inject: Inject
    rules: list[Rule] = Field(min_length=1)


class SecretsConfig(Strict):
    secrets: list[Secret]


class SecretsTransform(Strict):
    name: Literal["secrets"]
    config: SecretsConfig


Transform = Annotated[Union[AllowlistTransform, SecretsTransform], Field(discriminator="name")]


class Bootstrap(Strict):
    max_duration: Duration = 1800.0
    rules: list[Rule]

    @field_validator("max_duration", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class Agent(Strict):
    name: str
    sources: list[str] = Field(min_length=1)
    transforms: list[Transform] = []
    bootstrap: Bootstrap | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("expected a lower-case name: letters, digits, - and _")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        return _networks(v)


class ProxySection(Strict):
    tunnel_listen: str
    https_listen: str | None = None
    http_listen: str | None = None
    upstream_deny_cidrs: list[str] = list(DEFAULT_DENY_CIDRS)
    max_request_body_bytes: Annotated[int, Field(gt=0)] = 1048576
    max_response_body_bytes: Annotated[int, Field(gt=0)] | None = None
    health_listen: str | None = None
    # ours: where bootstrap windows are remembered across restarts (absent: memory only)
    state_path: Annotated[str, Field(pattern=r"^/")] | None = None

    @field_validator("tunnel_listen", "https_listen", "http_listen", "health_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @field_validator("upstream_deny_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return _networks(v)


class DnsRecord(Strict):
    name: str
    type: Literal["A", "AAAA"]
    value: str

    @model_validator(mode="after")
    def _value(self) -> DnsRecord:
        ip = ipaddress.ip_address(self.value)
        if (ip.version == 4) != (self.type == "A"):
            raise ValueError(f"value {self.value} does not fit type {self.type}")
        if not is_valid_name(normalize_host(self.name)):
            raise ValueError(f"name {self.name!r} is not a DNS name")
        return self


class DnsSection(Strict):
    listen: str
    proxy_ip: str
    records: list[DnsRecord] = []
    passthrough: list[str] = []

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("proxy_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class TlsSection(Strict):
    ca_cert: str
    ca_key: str | None = None
    ca_key_source: Source | None = None
    upstream_ca_bundle: str | None = None

    @model_validator(mode="after")
    def _key(self) -> TlsSection:
        if (self.ca_key is None) == (self.ca_key_source is None):
            raise ValueError("expected exactly one of ca_key or ca_key_source")
        return self


class LogSection(Strict):
    audit_path: str | None = None  # None: audit lines go to stdout (journald)
    # ours: audit lines per agent an agent can cause without being forwarded (refusals,
    # DNS answers): a bucket of refusal_burst lines refilled at refusal_rate per second;
    # past it they are counted in one summary line per agent every 10 s (audit.py)
    refusal_burst: Annotated[int, Field(gt=0, le=1_000_000)] = 120
    refusal_rate: Annotated[float, Field(gt=0, le=10_000)] = 1.0


class Config(Strict):
    proxy: ProxySection
    dns: DnsSection | None = None
    tls: TlsSection
    transforms: list[Transform] = []
    agents: list[Agent] | None = None
    log: LogSection = LogSection()

    @model_validator(mode="after")
    def _agents(self) -> Config:
        if self.agents == []:  # deny-all for every client: a templating slip, not a policy
            raise ValueError("agents: empty list; list at least one agent, or remove the key"
                             " so every client gets the top-level rules")
        seen: dict[str, str] = {}
        nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for a in self.agents or []:
            if a.name in seen:
                raise ValueError(f"agents: duplicate agent name {a.name!r}")
            seen[a.name] = a.name
            for s in a.sources:
                net = ipaddress.ip_network(s)
                for other, owner in nets:
                    if net.version == other.version and net.overlaps(other):
                        raise ValueError(
                            f"agents: source {s} of {a.name!r} overlaps {other} of {owner!r};"
                            " expected each client address to map to one agent"
                        )
                nets.append((net, a.name))
        return self


_TAGS = {"allowlist", "secrets", "env", "file", "aws_ssm"}


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS and i and (isinstance(loc[i - 1], int) or "source" in str(loc[i - 1])):
            continue  # pydantic's discriminator tag: not a key the user wrote
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        return f"unknown {ctx['discriminator'].strip(chr(39))}: {ctx['tag']!r}; expected one of {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"missing key {err['ctx']['discriminator']}"
    return msg


def parse_config(data: Any, source: str = "<config>") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping with proxy:, tls:, ...")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = _key_path(err["loc"])
        if not err["loc"]:  # a whole-config check names its own keys in the message
            raise ConfigError(f"{source}: {_describe(err)}") from None
        raise ConfigError(f"{source}: {where}: {_describe(err)}") from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        data = strict_yaml.load(text)
    except strict_yaml.DuplicateKey as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{p}: {where}: not valid YAML; expected the agentctl-proxy config format") from None
    cfg = parse_config(data, str(p))
    _check_files(cfg, str(p))
    return cfg


def _check_files(cfg: Config, source: str) -> None:
    """Files the proxy needs at start must exist and parse now, so `check` catches them."""
    files = {"tls.ca_cert": cfg.tls.ca_cert, "tls.ca_key": cfg.tls.ca_key,
             "tls.upstream_ca_bundle": cfg.tls.upstream_ca_bundle}
    pem: dict[str, bytes] = {}
    for key, f in files.items():
        if f is None:
            continue
        if not Path(f).is_file():
            raise ConfigError(f"{source}: {key}: file {f} does not exist; expected a PEM file")
        try:
            pem[key] = Path(f).read_bytes()
        except OSError as e:
            raise ConfigError(f"{source}: {key}: cannot read {f}: {e.strerror}") from None
    cert = _parsed(source, "tls.ca_cert", files, pki.load_ca_cert, pem["tls.ca_cert"])
    if "tls.ca_key" in pem:
        _parsed(source, "tls.ca_key", files, pki.check_ca_key, cert, pem["tls.ca_key"])
    if "tls.upstream_ca_bundle" in pem:
        _parsed(source, "tls.upstream_ca_bundle", files, pki.check_bundle, pem["tls.upstream_ca_bundle"])


def _parsed(source: str, key: str, files: dict[str, str | None], parse, *args):
    try:
        return parse(*args)
    except ValueError as e:
        raise ConfigError(f"{source}: {key}: {files[key]}: {e}") from None
