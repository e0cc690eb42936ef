"""The Pulumi program: stack config -> Deployment -> one component per cloud.

`main()` is what `pulumi up` runs (stacks/__main__.py); `agentctl plan` calls
`declare()` under mocks with the same config path, so both see the same resources.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi

from agentctl import hcloud_catalog
from agentctl.errors import ConfigError
from agentctl.model import Deployment
from agentctl.secrets import (CA_KEY_PATH, TAILSCALE_AUTHKEY_PATH, ca_key_parameter_name, secret_file_path,
                              ssm_parameter_name, ssm_prefix)
from agentctl.stackfile import NAMESPACE, from_config
from agentctl_stacks import policy
from agentctl_stacks.args import CaMaterial, DeploymentArgs, HostData

COMPONENT_NAME = "agentctl"


def config_mapping_from_runtime() -> dict[str, Any]:
    """The engine hands structured values over as JSON text and secrets in plain text;
    give from_config the file's shape back (secrets as `{secure: ...}` markers)."""
    from pulumi.runtime.config import CONFIG, _SECRET_KEYS, get_config_env

    raw = {**get_config_env(), **CONFIG.get()}
    secret_keys = set(_SECRET_KEYS.get()) | set(pulumi.runtime.config.get_config_secret_keys_env())
    mapping: dict[str, Any] = {}
    for key, value in raw.items():
        if key in secret_keys:
            mapping[key] = {"secure": "<runtime secret>"}
        elif isinstance(value, str) and value[:1] in "[{":
            try:
                mapping[key] = json.loads(value)
            except ValueError:
                mapping[key] = value
        else:
            mapping[key] = value
    return mapping


def check_cloud(deployment: Deployment, source: str, config: dict[str, Any]) -> None:
    """What the model alone cannot know: which cloud runs the stack and what it needs."""
    if deployment.cloud == "lab":
        raise ConfigError(source, f"{NAMESPACE}:cloud", "'lab' is run by `agentctl lab up`, not by Pulumi",
                          "aws or hcloud for `pulumi up` and `agentctl plan`")
    if deployment.cloud == "hcloud":
        for path, what, expected in hcloud_catalog.problems(deployment):
            raise ConfigError(source, f"{NAMESPACE}:{path}", what, expected)
        if not deployment.network.admin_cidrs:
            raise ConfigError(source, f"{NAMESPACE}:network.adminCidrs", "is empty, but on Hetzner the proxy's "
                              "secrets and CA key are pushed over SSH from an admin address",
                              "at least one CIDR of the machine that runs `pulumi up`")
    if deployment.cloud == "aws":
        provider_region = config.get("aws:region")
        if provider_region and provider_region != deployment.region:
            raise ConfigError(source, f"{NAMESPACE}:region", f"is {deployment.region!r} but aws:region is "
                              f"{provider_region!r}", "the same region in both")


def check_secret_names(deployment: Deployment, source: str, *, project: str, stack: str) -> None:
    """Two secrets stored under one name would be one resource declared twice (AWS: one
    SSM parameter) or one file written twice (Hetzner), each overwriting the other."""
    aws = deployment.cloud == "aws"
    owners = ({ca_key_parameter_name(project, stack): "the proxy's CA key"} if aws else
              {CA_KEY_PATH: "the proxy's CA key", TAILSCALE_AUTHKEY_PATH: "the Tailscale auth key"})
    where = "SSM parameter" if aws else "file"
    for key_path, agent, secret in deployment.agent_secrets():
        if not secret.from_:
            continue
        name = (ssm_parameter_name(project, stack, agent.name, secret.name) if aws
                else secret_file_path(agent.name, secret.name))
        if name in owners:
            raise ConfigError(source, f"{NAMESPACE}:{key_path}.name", f"would be stored as {where} {name}, "
                              f"which {owners[name]} already uses", "a different agent or secret name")
        owners[name] = f"{NAMESPACE}:{key_path}"


def check_ssm_sources(deployment: Deployment, source: str, *, project: str, stack: str) -> None:
    """On AWS the proxy reads `aws_ssm` sources with its instance role, which may read
    only this deployment's parameters, in its region: anything else would pass here and
    fail every request with 503 at runtime. And never the CA key as an agent's secret."""
    if deployment.cloud != "aws":
        return
    prefix, ca_key = ssm_prefix(project, stack), ca_key_parameter_name(project, stack)
    for secret_path, _, secret in deployment.agent_secrets():
        ref = secret.source
        if ref is None or ref.type != "aws_ssm":
            continue
        key_path = f"{NAMESPACE}:{secret_path}.source"
        if not ref.name.startswith(prefix):
            raise ConfigError(source, f"{key_path}.name", f"{ref.name!r} is outside this deployment's parameter "
                              "path, so the proxy's instance role cannot read it",
                              f"a parameter under {prefix} encrypted with alias/{project}-{stack}, "
                              "or `from: {config: KEY}`")
        if ref.name == ca_key:
            raise ConfigError(source, f"{key_path}.name", "is the proxy's CA key",
                              "a credential parameter (the CA key is never injected into requests)")
        if ref.region not in (None, deployment.region):
            raise ConfigError(source, f"{key_path}.region", f"is {ref.region!r}, but the proxy's instance role "
                              f"reads parameters in {deployment.region!r} only", f"{deployment.region} or no region")


def check_deployment(deployment: Deployment, source: str, config: dict[str, Any], *, project: str,
                     stack: str) -> None:
    """Everything that must hold before the first resource is declared."""
    check_cloud(deployment, source, config)
    check_secret_names(deployment, source, project=project, stack=stack)
    check_ssm_sources(deployment, source, project=project, stack=stack)


def host_data(deployment: Deployment, ca_cert_pem: str, stack: str, project: str) -> list[HostData]:
    from agentctl.render import render_hosts

    return [HostData(h.name, h.role, h.private_ip, h.user_data)
            for h in render_hosts(deployment, ca_cert_pem, stack=stack, project=project)]


def declare(deployment: Deployment, ca_cert_pem: str, ca_fingerprint: str, ca_key_pem: pulumi.Input[str], *,
            project: str, stack: str) -> pulumi.ComponentResource:
    config = pulumi.Config(NAMESPACE)
    args = DeploymentArgs(
        deployment=deployment, project=project, stack=stack,
        hosts=host_data(deployment, ca_cert_pem, stack, project),
        ca=CaMaterial(ca_cert_pem, ca_fingerprint, pulumi.Output.secret(ca_key_pem)),
        secrets={ref.config: config.require_secret(ref.config) for _, ref in deployment.secret_refs()})
    component = _component_class(deployment.cloud)(COMPONENT_NAME, args)
    for key, value in component.outputs().items():
        pulumi.export(key, value)
    return component


def _component_class(cloud: str) -> type:
    # Import only the cloud in use: each provider SDK costs about a second to import.
    if cloud == "aws":
        from agentctl_stacks.aws_deployment import AwsDeployment
        return AwsDeployment
    from agentctl_stacks.hcloud_deployment import HcloudDeployment
    return HcloudDeployment


def load_from_runtime(stack: str) -> tuple[Deployment, dict[str, Any]]:
    source = f"Pulumi.{stack}.yaml"
    mapping = config_mapping_from_runtime()
    deployment = from_config(mapping, source)
    check_deployment(deployment, source, mapping, project=pulumi.get_project(), stack=stack)
    return deployment, mapping


def project_root() -> Path:
    """Where Pulumi.yaml is: the engine says so; under mocks it answers a placeholder."""
    root = Path(pulumi.get_root_directory())
    return root if (root / "Pulumi.yaml").is_file() else Path.cwd()


def main() -> None:
    from agentctl.ca import ensure_ca

    stack, project = pulumi.get_stack(), pulumi.get_project()
    deployment, _ = load_from_runtime(stack)
    ca = ensure_ca(project_root(), stack)
    declare(deployment, ca.cert_pem, ca.fingerprint_sha256, ca.key_path.read_text(), project=project, stack=stack)
