"""The proxy config: iron-proxy's YAML format plus our extensions (docs/design.md).

Parsed once at the boundary into typed, frozen models; unknown keys are errors.
`load_config` raises ConfigError whose message is one line:
``FILE: key.path: what is wrong; expected ...``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from agentctl_proxy import audit, ironproxy, pki
from agentctl_proxy.schema import errors, yamlload
from agentctl_proxy.schema import values as v
from agentctl_proxy.schema.policy import (  # noqa: F401 (the proxy's names for them)
    DnsRecord, EnvSource, FileSource, Inject, Rule, Secret, SecretSource, SsmSource, Strict)
from agentctl_proxy.schema.values import parse_duration, parse_listen  # noqa: F401

Source = SecretSource

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

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """Bad config; str() is the one line to print."""


class RulesConfig(Strict):
    """iron-proxy's allowlist config (its internal/transform/allowlist/allowlist.go):
    `domains:` and `cidrs:` are rules with every method and path, ahead of `rules:`."""

    iron_only: ClassVar[frozenset[str]] = frozenset({"warn"})

    domains: list[v.HostPattern] = []
    cidrs: list[v.Cidr] = []
    rules: list[Rule] = []

    @property
    def every_rule(self) -> list[Rule]:
        """One list to compile, in iron-proxy's order: domains, cidrs, then rules."""
        return [Rule(host=d) for d in self.domains] + [Rule(cidr=c) for c in self.cidrs] + list(self.rules)


class AllowlistTransform(Strict):
    name: Literal["allowlist"]
    config: RulesConfig


class SecretsConfig(Strict):
    secrets: list[Secret]


class SecretsTransform(Strict):
    name: Literal["secrets"]
    config: SecretsConfig


Transform = Annotated[Union[AllowlistTransform, SecretsTransform], Field(discriminator="name")]


class Bootstrap(Strict):
    max_duration: v.Duration = 1800.0
    rules: list[Rule]


class Agent(Strict):
    name: str
    sources: Annotated[list[v.Cidr], Field(min_length=1, description="the agent's addresses as networks",
                                           examples=[["10.0.2.11/32"]])]
    transforms: list[Transform] = []
    bootstrap: Bootstrap | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not an agent name; expected a lower-case name of letters, digits,"
                             " - and _, e.g. scout")
        return name


class ProxySection(Strict):
    iron_only: ClassVar[frozenset[str]] = frozenset({"upstream_response_header_timeout", "upstream_proxy"})

    # iron-proxy runs without a tunnel (CONNECT) listener; at least one listener is set
    tunnel_listen: v.ListenAddress | None = None
    https_listen: v.ListenAddress | None = None
    http_listen: v.ListenAddress | None = None
    upstream_deny_cidrs: list[v.Cidr] = list(DEFAULT_DENY_CIDRS)
    max_request_body_bytes: Annotated[int, Field(gt=0)] = 1048576
    max_response_body_bytes: Annotated[int, Field(gt=0)] | None = None
    health_listen: v.ListenAddress | None = None
    # ours: where bootstrap windows are remembered across restarts (absent: memory only)
    state_path: Annotated[str, AfterValidator(v.absolute)] | None = None

    @field_validator("max_request_body_bytes", "max_response_body_bytes", mode="before")
    @classmethod
    def _iron_zero(cls, value: Any, info: Any) -> Any:
        # iron-proxy reads 0 as "unset": 1 MiB for requests, uncapped for responses
        if value == 0 and not isinstance(value, bool):
            return 1048576 if info.field_name == "max_request_body_bytes" else None
        return value

    @model_validator(mode="after")
    def _some_listener(self) -> ProxySection:
        if not (self.tunnel_listen or self.https_listen or self.http_listen):
            raise ValueError("no listener; expected at least one of tunnel_listen, https_listen or"
                             " http_listen, e.g. https_listen: \":443\"")
        return self


class DnsSection(Strict):
    iron_only: ClassVar[frozenset[str]] = frozenset({"enabled", "upstream_resolver"})

    listen: v.ListenAddress = ":53"  # iron-proxy's default
    proxy_ip: str
    records: list[DnsRecord] = []
    passthrough: list[v.HostPattern] = []

    @field_validator("proxy_ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address; expected the proxy's address, e.g. 10.0.1.10")
        return value


class TlsSection(Strict):
    iron_only: ClassVar[frozenset[str]] = frozenset({"leaf_cert_expiry_hours"})

    # iron-proxy's "mitm" is the only mode here; its "sni-only" is not supported
    mode: Literal["mitm"] = "mitm"
    ca_cert: Annotated[str, Field(description="the interception CA certificate (a PEM file)",
                                  examples=["/etc/agentctl-proxy/ca.crt"])]
    ca_key: str | None = None
    ca_key_source: SecretSource | None = None
    upstream_ca_bundle: str | None = None
    # iron-proxy's leaf certificate cache; mitmproxy keeps its own (accepted, not applied)
    cert_cache_size: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _key(self) -> TlsSection:
        if (self.ca_key is None) == (self.ca_key_source is None):
            raise ValueError("expected exactly one of ca_key (a PEM file) or ca_key_source (a secret source)")
        return self


class LogSection(Strict):
    # iron-proxy's log levels (its internal/config/logger.go parseLogLevel); `run` logs at it (--debug overrides)
    level: Literal["debug", "info", "warn", "error"] = "info"
    audit_path: str | None = None  # None: audit lines go to stdout (journald)
    # ours: audit lines per agent an agent can cause without being forwarded (refusals,
    # DNS answers): a bucket of refusal_burst lines refilled at refusal_rate per second;
    # past it they are counted in one summary line per agent every audit.SUMMARY_SECONDS
    refusal_burst: Annotated[int, Field(gt=0, le=1_000_000)] = audit.REFUSAL_BURST
    refusal_rate: Annotated[float, Field(gt=0, le=10_000)] = audit.REFUSAL_RATE


class Config(Strict):
    iron_only: ClassVar[frozenset[str]] = frozenset({"mcp", "mcp_gateway", "postgres", "metrics", "management",
                                                     "control_plane"})

    proxy: ProxySection
    dns: DnsSection | None = None
    tls: TlsSection
    transforms: list[Transform] = []
    agents: list[Agent] | None = None
    log: LogSection = LogSection()

    def listeners(self) -> list[tuple[str, str, int]]:
        p = self.proxy
        named = [("proxy.tunnel_listen", p.tunnel_listen), ("proxy.https_listen", p.https_listen),
                 ("proxy.http_listen", p.http_listen), ("proxy.health_listen", p.health_listen),
                 ("dns.listen", self.dns.listen if self.dns else None)]
        return [(key, *v.parse_listen(addr)) for key, addr in named if addr]

    @model_validator(mode="after")
    def _agents(self) -> Config:
        if (clash := v.listener_clash(self.listeners())) is not None:
            raise ValueError(clash)
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


def parse_config(data: Any, source: str = "<config>") -> Config:
    return parse_checked(data, source)[0]


def parse_checked(data: Any, source: str = "<config>") -> tuple[Config, list[str]]:
    """The config, and one warning line per place an iron-proxy file means more there
    than here (ironproxy.py); ConfigError when it is not a config."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping with proxy:, tls:, ...")
    dropped: ironproxy.Dropped = {}
    warnings: list[str] = []
    if ironproxy.is_iron_file(data):
        data, dropped, warnings = ironproxy.adapt(data)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        p = errors.explain(e, Config, more=False)
        p = errors.Problem(ironproxy.original_loc(p.loc, dropped), p.problem, p.expected)
        where = p.key_path()
        raise ConfigError(f"{source}: {where}: {p.line()}" if where else f"{source}: {p.line()}") from None
    return cfg, [f"warning: {source}: {w}" for w in warnings]


def load_config(path: str | Path) -> Config:
    return load_checked(path)[0]


def load_checked(path: str | Path) -> tuple[Config, list[str]]:
    """load_config, and the warning lines `check` prints (parse_checked)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        data = yamlload.load(text)
    except yamlload.DuplicateKey as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{p}: {where}: not valid YAML; expected the agentctl-proxy config format") from None
    cfg, warnings = parse_checked(data, str(p))
    _check_files(cfg, str(p))
    return cfg, warnings


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
