"""Read `Pulumi.<stack>.yaml` into a Deployment, or fail with one precise line.

The file is Pulumi's own format: `config:` holds `project:key` entries, and a Pulumi
secret is `{secure: <ciphertext>}`. Only the `agentctl:` namespace is ours; other
namespaces (`aws:`, `hcloud:`) belong to the providers and are left alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agentctl.errors import ConfigError
from agentctl.model import Deployment
from agentctl.modelerrors import one_line
from agentctl.stackcheck import StackContext, check_stack
from agentctl_proxy.schema import yamlload

NAMESPACE = "agentctl"
DEFAULT_PROJECT = "agentctl"


def stack_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


def load(project_dir: Path, stack: str, *, distro: str | None = None) -> Deployment:
    """The stack's deployment; `distro`: the distro its hosts run when not the stack's
    (the lab's `lab up --distro`), checked as the stack's own value would be."""
    path = stack_path(project_dir, stack)
    if not path.is_file():
        raise ConfigError(str(path), "", "no such stack file", f"Pulumi.{stack}.yaml in {project_dir}")
    try:
        doc = yamlload.load(path.read_text())
    except yamlload.DuplicateKey as exc:
        key_path = exc.key_path.removeprefix("config.").replace("\n", "\\n")  # one line, whatever the key holds
        raise ConfigError(str(path), key_path, f"is given twice (again on line {exc.line})",
                          "each key once (Pulumi refuses duplicates too)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(str(path), "", f"is not valid YAML ({where}: {getattr(exc, 'problem', exc)})",
                          "a Pulumi stack file") from None
    config = _config_section(doc, path)
    if distro is not None:
        config = {**config, f"{NAMESPACE}:distro": distro}
    return from_config(config, str(path), project=project_name(project_dir), stack=stack)


def _config_section(doc: Any, path: Path) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(str(path), "config", "is missing or not a mapping", "a 'config:' mapping of project:key entries")
    return doc["config"]


def project_name(project_dir: Path) -> str:
    """The Pulumi project's name (Pulumi.yaml `name:`): SSM paths and KMS aliases carry it."""
    try:
        doc = yaml.safe_load((Path(project_dir) / "Pulumi.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return DEFAULT_PROJECT
    return str((doc or {}).get("name") or DEFAULT_PROJECT) if isinstance(doc, dict) else DEFAULT_PROJECT


def from_config(config: dict[str, Any], source: str, *, project: str = "agentctl",
                stack: str | None = None) -> Deployment:
    """Build the model from a Pulumi config mapping (`project:key` -> value) and run
    every cross-field check (agentctl/stackcheck.py). `stack` None skips only the
    checks that need the stack's name; every command passes it."""
    values: dict[str, Any] = {}
    secure: set[str] = set()
    for full_key, value in config.items():
        namespace, _, key = str(full_key).partition(":")
        if namespace != NAMESPACE or not key:
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            secure.add(key)
        else:
            values[key] = value

    known = {f.alias or n for n, f in Deployment.model_fields.items()} - {"secureKeys"}
    if secure & known:
        # A settings key made a Pulumi secret would be dropped here (we never decrypt),
        # and it is not secret anyway: it is rendered into user-data.
        key = sorted(secure & known)[0]
        raise ConfigError(source, f"{NAMESPACE}:{key}", "is a Pulumi secret (secure:), but agentctl reads it as "
                          "plain config and renders it into the hosts' user-data, so it cannot stay secret",
                          f"plain config: pulumi config set {key} VALUE (without --secret)")
    try:
        deployment = Deployment.model_validate(
            {**{k: v for k, v in values.items() if k in known}, "secureKeys": frozenset(secure)})
    except ValidationError as exc:
        raise one_line(exc, source) from None

    for key_path, ref in deployment.secret_refs():
        if ref.config in values:
            raise ConfigError(source, f"{NAMESPACE}:{ref.config}", "is plain text but is used as a secret at "
                              f"{key_path}", f"a Pulumi secret: pulumi config set --secret {ref.config} ...")
        if ref.config not in secure:
            raise ConfigError(source, f"{NAMESPACE}:{key_path}.config", f"names {ref.config!r}, which is not set",
                              f"a Pulumi secret: pulumi config set --secret {ref.config} ...")
    for key in values:
        if key not in known:
            raise ConfigError(source, f"{NAMESPACE}:{key}", "unknown key",
                              f"one of {', '.join(sorted(known))}, or a Pulumi secret (--secret)")
    check_stack(StackContext(deployment, config, source, project, stack))
    return deployment
