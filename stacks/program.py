"""The Pulumi program: stack config -> Deployment -> one component per cloud.

`main()` is what `pulumi up` runs (the project root's __main__.py); `agentctl plan` calls
`declare()` under mocks with the same config path, so both see the same resources.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pulumi

from agentctl.model import Deployment
from agentctl.stackcheck import require_pulumi_cloud
from agentctl.stackfile import NAMESPACE, from_config
from agentctl_stacks.args import CaMaterial, DeploymentArgs, HostData
from agentctl_stacks.policy import rebuild_requested

COMPONENT_NAME = "agentctl"


def config_mapping_from_runtime() -> dict[str, Any]:
    """The engine hands structured values over as JSON text and secrets in plain text;
    give from_config the file's shape back (secrets as `{secure: ...}` markers).

    Public API only: the language host passes the stack's config in PULUMI_CONFIG and its
    secret keys in PULUMI_CONFIG_SECRET_KEYS (`get_config_env`,
    `get_config_secret_keys_env`), and `is_config_secret` answers for keys set through
    `set_all_config`; `agentctl plan` sets both the same way."""
    raw = pulumi.runtime.get_config_env()
    secret_keys = set(pulumi.runtime.get_config_secret_keys_env())
    mapping: dict[str, Any] = {}
    for key, value in raw.items():
        if key in secret_keys or pulumi.runtime.is_config_secret(key):
            mapping[key] = {"secure": "<runtime secret>"}
        elif isinstance(value, str) and value[:1] in "[{":
            try:
                mapping[key] = json.loads(value)
            except ValueError:
                mapping[key] = value
        else:
            mapping[key] = value
    return mapping


def host_data(deployment: Deployment, ca_cert_pem: str, stack: str, project: str) -> list[HostData]:
    from agentctl.render import render_hosts

    return [HostData(h.name, h.role, h.private_ip, h.user_data, h.proxy_config)
            for h in render_hosts(deployment, ca_cert_pem, stack=stack, project=project)]


def declare(deployment: Deployment, ca_cert_pem: str, ca_fingerprint: str, ca_key_pem: pulumi.Input[str], *,
            project: str, stack: str) -> pulumi.ComponentResource:
    config = pulumi.Config(NAMESPACE)
    args = DeploymentArgs(
        deployment=deployment, project=project, stack=stack,
        hosts=host_data(deployment, ca_cert_pem, stack, project),
        ca=CaMaterial(ca_cert_pem, ca_fingerprint, pulumi.Output.secret(ca_key_pem)),
        secrets={ref.config: config.require_secret(ref.config) for _, ref in deployment.secret_refs()},
        rebuild=rebuild_requested(os.environ))
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
    # Every check of the stack runs in from_config (agentctl/stackcheck.py), as for render.
    deployment = from_config(mapping, source, project=pulumi.get_project(), stack=stack)
    require_pulumi_cloud(deployment, source)
    return deployment, mapping


def project_root() -> Path:
    """Where Pulumi.yaml is: the engine says so (pulumi >= 3.16x: get_root_directory;
    before, the program runs in the project folder, since Pulumi.yaml names no `main:`);
    under mocks it answers a placeholder."""
    get_root = getattr(pulumi, "get_root_directory", None)
    root = Path(get_root()) if get_root else Path.cwd()
    return root if (root / "Pulumi.yaml").is_file() else Path.cwd()


def main() -> None:
    from agentctl.ca import ensure_ca

    stack, project = pulumi.get_stack(), pulumi.get_project()
    deployment, _ = load_from_runtime(stack)
    ca = ensure_ca(project_root(), stack)
    declare(deployment, ca.cert_pem, ca.fingerprint_sha256, ca.key_path.read_text(), project=project, stack=stack)
