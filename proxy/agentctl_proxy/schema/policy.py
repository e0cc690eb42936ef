"""Rules, secrets, their sources and injections, DNS records: the policy types both the
stack file (an agent's `egress`) and proxy.yaml are written with, in iron-proxy's
format (its internal/hostmatch/rule.go RuleConfig, internal/transform/secrets) plus our
extensions (name, ports, allow_encoded_slashes, rate_limit). Where the two schemas
this replaces disagreed, the stricter reading is the one kept (docs/policy-schema.md).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from agentctl_proxy.schema import values as v


class Strict(BaseModel):
    """Unknown keys are errors; parsed once, never changed. `iron_only` names keys
    iron-proxy has at this place that agentctl-proxy does not implement, so a message
    says so instead of calling them typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    iron_only: ClassVar[frozenset[str]] = frozenset()


Port = Annotated[int, Field(ge=1, le=65535, description="a port number", examples=[443])]
Name = Annotated[str, Field(min_length=1, description="a label for the audit log", examples=["github-api"])]


class Rule(Strict):
    """One grant: a host pattern (or an IP network) and what may be asked of it.
    As in iron-proxy, a missing `methods` or `paths` means all of them."""

    name: Name | None = None
    host: v.HostPattern | None = None
    cidr: v.Cidr | None = None
    methods: Annotated[list[str], AfterValidator(v.methods),
                       Field(description="HTTP methods, or ['*']", examples=[["GET", "POST"]])] = ["*"]
    paths: Annotated[list[str], AfterValidator(v.paths),
                     Field(description="path globs starting with /", examples=[["/v1/*"]])] = ["/*"]
    ports: list[Port] | None = None
    allow_encoded_slashes: bool = False
    rate_limit: Annotated[int, Field(ge=1, description="requests per minute", examples=[60])] | None = None

    @model_validator(mode="after")
    def _target(self) -> Rule:
        if self.host is not None and self.cidr is not None:
            raise ValueError("host and cidr are both set; expected one of them (a host pattern, or a cidr for"
                             " IP targets), as iron-proxy requires")
        if self.host is None and self.cidr is None:
            raise ValueError("no target; expected host: (e.g. api.github.com) or cidr: (e.g. 10.20.0.0/16)")
        return self


class _Cached(Strict):
    """Every source: how long a value is kept, and how long a failure is."""

    ttl: v.Duration = 900.0
    failure_ttl: v.Duration = 30.0


class EnvSource(_Cached):
    type: Literal["env"]
    var: Annotated[str, Field(min_length=1, description="an environment variable name", examples=["OPENAI_API_KEY"])]


class FileSource(_Cached):
    type: Literal["file"]
    path: Annotated[str, AfterValidator(v.absolute), Field(description="an absolute path",
                                                           examples=["/etc/agentctl-proxy/secrets/key"])]


class SsmSource(_Cached):
    type: Literal["aws_ssm"]
    name: Annotated[str, AfterValidator(v.absolute), Field(description="an SSM parameter name starting with /",
                                                           examples=["/acme/scout/key"])]
    region: str | None = None
    with_decryption: bool = True


SOURCE_TYPES = ("env", "file", "aws_ssm")
# iron-proxy's other source types (its internal/transform/secrets/secrets.go defaultRegistry)
IRON_SOURCE_TYPES = ("aws_sm", "1password", "1password_connect", "control_plane")
SecretSource = Annotated[Union[EnvSource, FileSource, SsmSource], Field(discriminator="type")]


class Inject(Strict):
    iron_only: ClassVar[frozenset[str]] = frozenset({"require"})

    header: Annotated[str, AfterValidator(v.header_name)] | None = None
    query_param: str | None = None
    # Ours, not iron-proxy's: the path segment after this prefix, where Telegram's Bot API
    # wants its token (/bot<token>/<method>); the agent sends a stand-in, the proxy swaps it
    # and never lets the secret back into the response (secrets.Unreflected).
    path_prefix: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/-]*$", examples=["/bot"],
                                      description="a plain path starting with /")] | None = None
    formatter: Annotated[str, AfterValidator(v.formatter)] = "{{ .Value }}"

    @model_validator(mode="after")
    def _one_target(self) -> Inject:
        if sum(t is not None for t in (self.header, self.query_param, self.path_prefix)) != 1:
            raise ValueError("expected exactly one of header (e.g. Authorization), query_param (e.g. key) "
                             "or path_prefix (e.g. /bot)")
        return self


SecretName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
                                  description="a lower-case name: letters, digits and -", examples=["github-pat"])]


class Secret(Strict):
    """A credential the proxy injects where its rules match; never its value."""

    iron_only: ClassVar[frozenset[str]] = frozenset({"replace", "proxy_value", "match_headers", "match_body",
                                                     "match_query", "match_path", "require"})

    name: SecretName | None = None
    source: SecretSource
    inject: Inject
    rules: Annotated[list[Rule], Field(min_length=1, description="at least one rule saying where to inject",
                                       examples=[[{"host": "api.github.com"}]])]


class DnsRecord(Strict):
    """A static answer. A and AAAA only: iron-proxy's CNAME records are not supported
    (the proxy also resolves upstreams with these, and follows no aliases)."""

    name: Annotated[str, AfterValidator(v.dns_name)]
    type: Literal["A", "AAAA"]
    value: str

    @field_validator("type", mode="before")
    @classmethod
    def _no_cname(cls, value: Any) -> Any:
        if value == "CNAME":
            raise ValueError("CNAME records are not supported by agentctl-proxy (iron-proxy has them);"
                             " expected A or AAAA with an IP address as value")
        return value

    @model_validator(mode="after")
    def _value(self) -> DnsRecord:
        try:
            ip = ipaddress.ip_address(self.value)
        except ValueError:
            raise ValueError(f"value {self.value!r} is not an IP address; expected e.g. 198.18.0.10") from None
        if (ip.version == 4) != (self.type == "A"):
            raise ValueError(f"value {self.value} does not fit type {self.type}; expected an"
                             f" {'IPv4' if self.type == 'A' else 'IPv6'} address")
        return self


def describe_source_type(tag: Any) -> str:
    """What a message says of an unknown source type."""
    if tag in IRON_SOURCE_TYPES:
        return f"iron-proxy source type {tag!r} is not supported by agentctl-proxy"
    return f"unknown source type {tag!r}"
