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

NAMESPACE = "agentctl"


def stack_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


def load(project_dir: Path, stack: str) -> Deployment:
    path = stack_path(project_dir, stack)
    if not path.is_file():
        raise ConfigError(str(path), "", "no such stack file", f"Pulumi.{stack}.yaml in {project_dir}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(str(path), "", f"is not valid YAML ({where}: {getattr(exc, 'problem', exc)})",
                          "a Pulumi stack file") from None
    return from_config(_config_section(doc, path), str(path))


def _config_section(doc: Any, path: Path) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ConfigError(str(path), "config", "is missing or not a mapping", "a 'config:' mapping of project:key entries")
    return doc["config"]


def from_config(config: dict[str, Any], source: str) -> Deployment:
    """Build the model from a Pulumi config mapping (`project:key` -> value)."""
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
    try:
        deployment = Deployment.model_validate(
            {**{k: v for k, v in values.items() if k in known}, "secureKeys": frozenset(secure)})
    except ValidationError as exc:
        raise _one_line(exc, source) from None

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
    seen: set[str] = {deployment.proxy.name}
    for i, agent in enumerate(deployment.agents):
        if agent.name in seen:
            raise ConfigError(source, f"{NAMESPACE}:agents[{i}].name", f"host name {agent.name!r} is used twice",
                              "unique host names across the proxy and the agents")
        seen.add(agent.name)
    return deployment


def _one_line(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and _is_union_tag(p))]
    key_path = f"{NAMESPACE}:" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    msg = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    if err["type"] in {"literal_error", "union_tag_invalid", "enum"}:
        msg = f"{err.get('input', (err.get('ctx') or {}).get('tag'))!r} is not allowed"
    elif err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "is required but missing"
    problem = msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")
    return ConfigError(source, key_path, problem, _expected(err))


def _is_union_tag(part: str) -> bool:
    # pydantic names the member of a tagged union in the location ('file', 'aws_ssm', ...)
    return part in {"env", "file", "aws_ssm", "ConfigSecretRef"}


def _expected(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return ctx.get("expected", "")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return kind.removesuffix("_type").removesuffix("_parsing").replace("_", " ")
    if kind == "string_pattern_mismatch":
        return f"a value matching {ctx.get('pattern')}"
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if kind in {"greater_than_equal", "less_than_equal"}:
        return f"a number {'>=' if kind == 'greater_than_equal' else '<='} {ctx.get('ge', ctx.get('le'))}"
    if kind == "union_tag_invalid":
        return ctx.get("expected_tags", "")
    return ""
