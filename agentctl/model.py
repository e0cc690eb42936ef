"""The deployment model: the `agentctl:` namespace of `Pulumi.<stack>.yaml`, typed.

Every command and both Pulumi programs read a deployment through this model, so a
config that passes here is one that every consumer accepts. agentctl's own keys are
camelCase (Pulumi's convention); an agent's `egress` block is a fragment in the
proxy's own (iron-proxy) format and keeps its snake_case keys verbatim.
"""
from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Iterator, Literal
from urllib.parse import urlsplit

from packaging.version import InvalidVersion, Version

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from agentctl import values
from agentctl_proxy.schema import policy
from agentctl_proxy.schema.values import DurationText, listener_clash, network

HOSTNAME = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
HostName = Annotated[str, Field(pattern=HOSTNAME, examples=["scout"], description=(
    "a host name of 2 to 32 lower-case letters, digits and -, starting with a letter"))]
# Agents' private addresses start at .11 of the agent subnet (.1-.10: the cloud's own).
FIRST_AGENT_HOST = 11
# Environment the agent unit sets itself: a stack may not point the agent elsewhere.
RESERVED_ENV = {"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "HERMES_HOME"}


def _not_reserved(name: str) -> str:
    if name in RESERVED_ENV:
        raise ValueError("is set by agentctl itself (proxy, CA bundle, Hermes home); expected another name")
    return name


OneLine = Annotated[str, AfterValidator(values.no_control)]
EnvName = Annotated[str, AfterValidator(values.env_name), AfterValidator(_not_reserved)]
HttpsUrl = Annotated[str, AfterValidator(values.https_url)]


@lru_cache(maxsize=64)
def _first_24s(cidr: str) -> tuple[ipaddress.IPv4Network, ...]:
    """The first three /24s of the deployment network: admin, proxy, agents."""
    return tuple(itertools.islice(ipaddress.ip_network(cidr).subnets(new_prefix=24), 3))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- secrets -------------------------------------------------------------------------

class ConfigSecretRef(Strict):
    """A Pulumi config secret of this stack (`pulumi config set --secret KEY`)."""

    config: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", examples=["githubPat"],
                                 description="a config key: a letter, then letters, digits and _")]


# The policy types are the proxy's own (agentctl_proxy.schema, docs/policy-schema.md):
# what a stack file's egress says is what proxy.yaml says, read by the same code.
EnvSource, FileSource, SsmSource, SecretSource = policy.EnvSource, policy.FileSource, policy.SsmSource, policy.SecretSource
Rule, Inject, DnsRecord = policy.Rule, policy.Inject, policy.DnsRecord


class Secret(policy.Secret):
    """A credential the proxy injects. `from` is a Pulumi secret that the stack
    materialises (SSM on AWS, pushed over SSH on Hetzner); `source` is an existing
    reference handed to the proxy as it is. Never a value."""

    model_config = ConfigDict(populate_by_name=True)

    name: policy.SecretName
    from_: Annotated[ConfigSecretRef | None, Field(alias="from")] = None
    source: SecretSource | None = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one_origin(self) -> "Secret":
        if (self.from_ is None) == (self.source is None):
            raise ValueError("set exactly one of 'from' (a Pulumi config secret) or 'source' (an existing reference)"
                             "; expected e.g. from: {config: githubPat}")
        return self


class Egress(Strict):
    rules: list[Rule] = []
    secrets: list[Secret] = []


class Bootstrap(Strict):
    """Grants needed only while the host installs its runtime; the proxy closes them
    when the host reports ready, or after maxDuration, whichever is first."""

    rules: list[Rule] = []
    max_duration: Annotated[DurationText, Field(alias="maxDuration")] = "30m"


# --- runtime -------------------------------------------------------------------------

class Command(Strict):
    # A systemd command line, verbatim (its quoting, its $VAR), except that % is literal.
    exec: Annotated[OneLine, Field(min_length=2, pattern=r"^/")]
    environment: dict[EnvName, OneLine] = {}


DEFAULT_INDEX = "https://pypi.org/simple/"
# Where pypi.org's simple pages link their files (PEP 503 lets an index link anywhere).
PYPI_FILES = "https://files.pythonhosted.org/packages/"
PACKAGE_NAME = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"  # PEP 508 names (and extras)


def exact_version(value: str) -> str:
    """One exact public release (PEP 440), in its normalised spelling: what `==` pins."""
    try:
        v = Version(value)
    except InvalidVersion:
        raise ValueError(f"{value!r} is not a version; expected an exact release such as 1.2.0") from None
    if str(v) != value or v.local is not None:
        raise ValueError(f"{value!r} is not an exact version in normal form; expected {v.public!r}")
    return value


PackageVersion = Annotated[str, AfterValidator(exact_version)]


def _index_url(value: str) -> str:
    values.https_url(value, query=False)
    if not value.endswith("/"):
        raise ValueError("must end with '/'; expected the index's simple root, such as https://pypi.org/simple/")
    return value


@dataclass(frozen=True)
class PackagePin:
    """The one package a runtime is installed from, pinned: what first boot and
    snapshot-upgrade install (agentctl-runtime-install), and what the proxy grants
    while they do (grant_rules)."""

    name: str
    version: str
    extras: tuple[str, ...] = ()
    index: str = DEFAULT_INDEX
    files: tuple[str, ...] = ()  # URL prefixes the index links its files under, beyond its own path

    @property
    def requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.name}{extras}=={self.version}"

    def file_prefixes(self) -> tuple[str, ...]:
        if self.files:
            return self.files
        return (PYPI_FILES,) if urlsplit(self.index).hostname == "pypi.org" else ()

    def grant_rules(self) -> list["Rule"]:
        """GET on the index's simple pages (the package's and its dependencies') and on the
        files they link: pip asks for nothing else (pip/_internal/index/collector.py)."""
        by_host: dict[tuple[str, int | None], list[str]] = {}
        for url in (self.index, *self.file_prefixes()):
            parts = urlsplit(url)
            paths = by_host.setdefault((parts.hostname or "", parts.port), [])
            if parts.path.rstrip("/") + "/*" not in paths:
                paths.append(parts.path.rstrip("/") + "/*")
        return [Rule(host=h, methods=["GET"], paths=p, ports=[port] if port else None, name="runtime-package")
                for (h, port), p in by_host.items()]


class Package(Strict):
    """A runtime installed with pip from a package index, pinned to one version."""

    name: Annotated[str, Field(pattern=PACKAGE_NAME, examples=["hermes-agent"],
                               description="a package name: letters, digits and . _ - inside")]
    version: PackageVersion
    index: Annotated[str, AfterValidator(_index_url)] = DEFAULT_INDEX
    extras: list[Annotated[str, Field(pattern=PACKAGE_NAME, examples=["anthropic"],
                                      description="an extra's name: letters, digits and . _ - inside")]] = []
    files: list[Annotated[str, AfterValidator(lambda v: values.https_url(v, query=False))]] = []


# Hermes 0.19.0 honours model.base_url for the anthropic provider only on these hosts, or
# when the URL's path ends /anthropic; any other URL is silently replaced by
# https://api.anthropic.com (hermes_cli/runtime_provider.py _anthropic_base_url_override_ok).
_ANTHROPIC_HOSTS = re.compile(r"^(api\.anthropic\.com|[a-z0-9.-]+\.(anthropic\.com|claude\.com|azure\.com))$")
HERMES_PACKAGE = "hermes-agent"


class HermesModel(Strict):
    """The model Hermes calls (config.yaml `model:`). Its key stays on the proxy: Hermes
    holds a placeholder, the agent's egress secret injects the real `x-api-key`."""

    provider: Literal["anthropic"] = "anthropic"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")]
    base_url: Annotated[HttpsUrl, Field(alias="baseUrl")] = "https://api.anthropic.com"

    @field_validator("base_url")
    @classmethod
    def _honoured(cls, v: str) -> str:
        parts = urlsplit(v)
        if not (_ANTHROPIC_HOSTS.match(parts.hostname or "") or parts.path.rstrip("/").endswith("/anthropic")):
            raise ValueError("is a URL Hermes would silently replace by https://api.anthropic.com; expected a host "
                             "api.anthropic.com, *.anthropic.com, *.claude.com, *.azure.com, or a path ending /anthropic")
        return v


class Telegram(Strict):
    """Telegram, through the Bot API. Its bot token stays on the proxy (an egress secret
    injected into the URL path); only these Telegram user ids may talk to the agent."""

    allowed_users: Annotated[list[Annotated[int, Field(ge=1)]], Field(alias="allowedUsers", min_length=1)]


class Hermes(Strict):
    """The Hermes agent as published on the package index: `hermes-agent[EXTRAS]==VERSION`."""

    version: PackageVersion
    # A PEP 503 simple index (a mirror); PyPI unless the stack names one.
    index: Annotated[str, AfterValidator(_index_url)] = DEFAULT_INDEX
    model: HermesModel
    telegram: Telegram

    @property
    def extras(self) -> tuple[str, ...]:
        """The provider's SDK and the chat platform's: the base install has neither, and
        Hermes would otherwise try to install them at run time (tools/lazy_deps.py).
        Extras per the 0.19.0 wheel's METADATA; Telegram comes only with `messaging`."""
        return (self.model.provider, "messaging")

    @property
    def pin(self) -> PackagePin:
        return PackagePin(HERMES_PACKAGE, self.version, self.extras, self.index)


class Runtime(Strict):
    hermes: Hermes | None = None
    package: Package | None = None
    command: Command | None = None
    # A command admin runs on the host to ask the runtime whether it is healthy (exit 0):
    # part of snapshot-upgrade's acceptance.
    health: Annotated[OneLine, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one(self) -> "Runtime":
        if self.package is not None and self.command is None:
            raise ValueError("a 'package' runtime needs 'command' (what runs the installed package)")
        if (self.hermes is None) == (self.command is None):
            raise ValueError("set exactly one of 'hermes' or 'command'")
        return self

    @property
    def package_pin(self) -> PackagePin | None:
        """The pinned package this runtime is installed from; None for a bare command."""
        if self.package is not None:
            p = self.package
            return PackagePin(p.name, p.version, tuple(p.extras), p.index, tuple(p.files))
        if self.hermes is not None:
            return self.hermes.pin
        return None


# --- hosts ---------------------------------------------------------------------------

class Backups(Strict):
    """A local backup of the agent's state (tar + zstd under /var/backups/agentctl),
    secrets files excluded; off unless enabled."""

    enabled: bool = False
    interval_hours: Annotated[int, Field(alias="intervalHours", ge=1, le=168)] = 24
    keep: Annotated[int, Field(ge=1, le=365)] = 7


class Agent(Strict):
    name: HostName
    size: str | None = None
    runtime: Runtime
    egress: Egress = Egress()
    bootstrap: Bootstrap = Bootstrap()
    backups: Backups = Backups()
    # The last octet of the agent's private address. Unset, it follows the list (the
    # first agent .11, the next .12, ...), so removing an agent renumbers the ones after
    # it, and a cloud replaces those hosts: pin it on a deployment that will change.
    host_number: Annotated[int | None, Field(alias="hostNumber", ge=FIRST_AGENT_HOST, le=254)] = None

    @property
    def bootstrap_rules(self) -> list[Rule]:
        """First boot's grants: the stack's own, then the runtime package's source."""
        pin = self.runtime.package_pin
        return [*self.bootstrap.rules, *(pin.grant_rules() if pin else [])]


class Listen(Strict):
    tunnel: policy.Port = 8080
    https: policy.Port = 443
    http: policy.Port = 80
    dns: policy.Port = 53

    @model_validator(mode="after")
    def _apart(self) -> "Listen":
        # all four bind the proxy's address; the proxy's own clash rule decides
        clash = listener_clash([(k, "proxy", getattr(self, k)) for k in ("tunnel", "https", "http", "dns")])
        if clash:
            raise ValueError(clash)
        return self


class ProxyInstall(Strict):
    """How the proxy host gets agentctl-proxy: a pip requirement, installed in a venv."""

    pip: Annotated[str, AfterValidator(values.shell_word), Field(min_length=1)] = "agentctl-proxy[server]"


class ProxyHost(Strict):
    name: HostName = "proxy"
    size: str | None = None
    listen: Listen = Listen()
    install: ProxyInstall = ProxyInstall()
    max_request_body_bytes: Annotated[int, Field(alias="maxRequestBodyBytes", ge=1)] = 1048576
    apt_mirrors: Annotated[list[str] | None, Field(alias="aptMirrors")] = None
    # Static answers the proxy also uses to resolve upstreams (internal services, the lab).
    dns_records: Annotated[list[DnsRecord], Field(alias="dnsRecords")] = []
    upstream_ca_bundle: Annotated[str | None, Field(alias="upstreamCaBundle", pattern=r"^/", description="an absolute path",
                                                    examples=["/etc/ssl/upstream-ca.pem"])] = None
    # Where the proxy host itself resolves upstream names on AWS, whose VPC resolver the
    # DNS Firewall closes to everyone (so no agent can tunnel data through it).
    resolvers: list[str] = ["1.1.1.1", "9.9.9.9"]

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, resolvers: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(r)) for r in resolvers]


class Network(Strict):
    cidr: str = "10.0.0.0/16"
    admin_cidrs: Annotated[list[str], Field(alias="adminCidrs")] = []

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, cidr: str) -> str:
        net = ipaddress.ip_network(network(cidr))
        if net.version != 4 or net.prefixlen > 22:
            raise ValueError(f"{cidr} is too small; expected an IPv4 network of /22 or larger")
        return str(net)

    @field_validator("admin_cidrs")
    @classmethod
    def _admin(cls, cidrs: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(c, strict=False)) for c in cidrs]


class Maintenance(Strict):
    reboot_time: Annotated[str, Field(alias="rebootTime", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                                      description="a time of day, HH:MM", examples=["03:30"])] = "03:30"
    auto_reboot: Annotated[bool, Field(alias="autoReboot")] = True


class Watchdog(Strict):
    interval_minutes: Annotated[int, Field(alias="intervalMinutes", ge=1, le=60)] = 2
    failure_threshold: Annotated[int, Field(alias="failureThreshold", ge=1, le=20)] = 3
    disk_max_percent: Annotated[int, Field(alias="diskMaxPercent", ge=50, le=99)] = 90
    # Checked only on hosts whose backups are enabled (an agent's `backups.enabled`).
    backup_max_age_hours: Annotated[int | None, Field(alias="backupMaxAgeHours", ge=1)] = None


class Tailscale(Strict):
    auth_key: Annotated[ConfigSecretRef, Field(alias="authKey")]


# --- the deployment --------------------------------------------------------------------

class Deployment(Strict):
    cloud: Literal["aws", "hcloud", "lab"]
    region: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$", examples=["eu-central-1"],
                                 description="a region name: lower-case letters, digits and -")]
    distro: Literal["ubuntu-24.04", "debian-12"] = "ubuntu-24.04"
    admin_ssh_keys: Annotated[list[str], Field(alias="adminSshKeys", min_length=1)]
    network: Network = Network()
    proxy: ProxyHost = ProxyHost()
    agents: Annotated[list[Agent], Field(min_length=1)]
    maintenance: Maintenance = Maintenance()
    watchdog: Watchdog = Watchdog()
    tailscale: Tailscale | None = None
    heartbeat_url: Annotated[HttpsUrl | None, Field(alias="heartbeatUrl")] = None
    ami: str | None = None
    image: str | None = None
    # Hetzner: SSH keys already in the project, by name or MD5 fingerprint, given to the
    # servers instead of creating keys (docs/cloud.md "Hetzner SSH keys"); checked in
    # agentctl/stackcheck.py.
    hcloud_ssh_keys: Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]],
                               Field(alias="hcloudSshKeys")] = []
    # Which top-level config keys are Pulumi secrets; filled by the loader, not by users.
    secure_keys: Annotated[frozenset[str], Field(alias="secureKeys")] = frozenset()

    @field_validator("admin_ssh_keys")
    @classmethod
    def _ssh_keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if not re.fullmatch(r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|ssh-rsa) [A-Za-z0-9+/=]+( [^\n]*)?", k):
                raise ValueError(f"{k[:24]!r}... is not an OpenSSH public key line")
        return keys

    @model_validator(mode="after")
    def _consistent(self) -> "Deployment":
        if len(self.agents) > 200:
            raise ValueError("more than 200 agents in one deployment; split it into several stacks")
        return self

    # Addressing is pure and shared by every cloud and the lab, so a test of it holds everywhere.
    @property
    def proxy_subnet(self) -> ipaddress.IPv4Network:
        return _first_24s(self.network.cidr)[1]

    @property
    def agent_subnet(self) -> ipaddress.IPv4Network:
        return _first_24s(self.network.cidr)[2]

    @property
    def proxy_ip(self) -> str:
        return str(self.proxy_subnet.network_address + 10)

    def agent_host_number(self, agent: Agent) -> int:
        if agent.host_number is not None:
            return agent.host_number
        # By identity first: == compares two models field by field (render asks per host).
        index = next((i for i, a in enumerate(self.agents) if a is agent), None)
        return FIRST_AGENT_HOST + (self.agents.index(agent) if index is None else index)

    def agent_ip(self, agent: Agent) -> str:
        return str(self.agent_subnet.network_address + self.agent_host_number(agent))

    def agent_secrets(self) -> Iterator[tuple[str, Agent, Secret]]:
        """(key path under agentctl:, agent, secret) for every secret of every agent."""
        for i, agent in enumerate(self.agents):
            for j, secret in enumerate(agent.egress.secrets):
                yield f"agents[{i}].egress.secrets[{j}]", agent, secret

    def secret_refs(self) -> list[tuple[str, ConfigSecretRef]]:
        """Every (key path, reference) to a Pulumi config secret in the model."""
        refs = [(f"{key_path}.from", s.from_) for key_path, _, s in self.agent_secrets() if s.from_]
        if self.tailscale:
            refs.append(("tailscale.authKey", self.tailscale.auth_key))
        return refs
