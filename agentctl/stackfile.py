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
from agentctl.yamlkeys import find_duplicate

NAMESPACE = "agentctl"


def stack_path(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / f"Pulumi.{stack}.yaml"


def load(project_dir: Path, stack: str) -> Deployment:
    path = stack_path(project_dir, stack)
    if not path.is_file():
        raise ConfigError(str(path), "", "no such stack file", f"Pulumi.{stack}.yaml in {project_dir}")
    try:
        text = path.read_text()
        duplicate = find_duplicate(text)
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(str(path), "", f"is not valid YAML ({where}: {getattr(exc, 'problem', exc)})",
                          "a Pulumi stack file") from None
    if duplicate:
        key_path, line = duplicate
        key_path = key_path.removeprefix("config.").replace("\n", "\\n")  # one line, whatever the key holds
        raise ConfigError(str(path), key_path, f"is given twice (again on line {line})",
                          "each key once (Pulumi refuses duplicates too)")
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
    seen: set[str] = {deployment.proxy.name}
    for i, agent in enumerate(deployment.agents):
        if agent.name in seen:
            raise ConfigError(source, f"{NAMESPACE}:agents[{i}].name", f"host name {agent.name!r} is used twice",
                              "unique host names across the proxy and the agents")
        seen.add(agent.name)
    numbers: dict[int, str] = {}
    for i, agent in enumerate(deployment.agents):
        number = deployment.agent_host_number(agent)
        if number in numbers:
            raise ConfigError(source, f"{NAMESPACE}:agents[{i}]", f"would take address .{number}, which agent "
                              f"{numbers[number]!r} has", "a unique hostNumber per agent (unset ones follow the "
                              "list from .11)")
        numbers[number] = agent.name
    _check_backups(deployment, source)
    return deployment


def _check_backups(d: Deployment, source: str) -> None:
    """The watchdog's backup-age check needs backups that write the marker it reads."""
    max_age = d.watchdog.backup_max_age_hours
    if max_age is None:
        return
    backed_up = [(i, a) for i, a in enumerate(d.agents) if a.backups.enabled]
    if not backed_up:
        raise ConfigError(source, f"{NAMESPACE}:watchdog.backupMaxAgeHours", "is set, but no agent has backups "
                          "enabled, so no backup would ever be recent", "backups: {enabled: true} on an agent, "
                          "or no backupMaxAgeHours")
    for i, agent in backed_up:
        if agent.backups.interval_hours >= max_age:
            raise ConfigError(source, f"{NAMESPACE}:watchdog.backupMaxAgeHours", f"is {max_age}, but "
                              f"agents[{i}] backs up every {agent.backups.interval_hours} hours, so the check "
                              "would fail between two good backups",
                              f"more than {agent.backups.interval_hours} hours")
