"""Typed inputs of the deployment components: everything decided before any resource."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pulumi

from agentctl.model import Agent, Deployment


@dataclass(frozen=True)
class CaMaterial:
    """The proxy's interception CA. The key is a Pulumi secret so it stays encrypted
    in state; agents only ever see the certificate."""

    cert_pem: str
    fingerprint_sha256: str
    key_pem: pulumi.Output


@dataclass(frozen=True)
class HostData:
    """What render produced for one host, reduced to what a cloud needs."""

    name: str
    role: str
    private_ip: str
    user_data: str
    proxy_config: str | None = None  # the proxy's config.yaml (None for agents)


@dataclass(frozen=True)
class DeploymentArgs:
    deployment: Deployment
    project: str
    stack: str
    hosts: Sequence[HostData]
    ca: CaMaterial
    # Pulumi config key -> its secret value, for every `from: {config: KEY}`.
    secrets: Mapping[str, pulumi.Output] = field(default_factory=dict)
    # agents whose user-data this run applies by rebuilding them (AGENTCTL_REBUILD)
    rebuild: frozenset[str] = frozenset()

    def host(self, name: str) -> HostData:
        return next(h for h in self.hosts if h.name == name)

    @property
    def proxy(self) -> HostData:
        return self.host(self.deployment.proxy.name)

    @property
    def proxy_config_value(self) -> str:
        """The proxy's policy as its SSM parameter holds it (AWS)."""
        from agentctl.policy_parameter import pack

        return pack(self.proxy.proxy_config or "")

    def agent_secrets(self) -> list[tuple[Agent, str, pulumi.Output]]:
        """(agent, secret name, value) for every secret the stack materialises."""
        return [(agent, secret.name, self.secrets[secret.from_.config])
                for agent in self.deployment.agents for secret in agent.egress.secrets if secret.from_]
