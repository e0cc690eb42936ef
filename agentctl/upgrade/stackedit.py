"""Record an upgraded runtime version in the stack file, changing nothing else.

ruamel.yaml's round-trip mode keeps comments, key order, flow style and quoting
(`typ="rt"`, `preserve_quotes`); the indentation and line width are set to the
project's stack-file layout so the rest of the file comes back byte for byte
(tests/test_upgrade_stackedit.py proves it on every example stack). The write is
atomic, and the file is validated by the project's own loader afterwards, so a stack
file that no longer loads is never left behind.
"""
from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from agentctl.errors import ConfigError
from agentctl.stackfile import NAMESPACE, load, stack_path
from agentctl.upgrade.journal import write_atomic


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never re-wrap a long flow line
    return yaml


def runtime_version(project_dir: Path, stack: str, host: str) -> str:
    """The version the stack file pins for `host`'s runtime (the model's PackagePin)."""
    agent = next((a for a in load(project_dir, stack).agents if a.name == host), None)
    pin = agent.runtime.package_pin if agent is not None else None
    if pin is None:
        raise ConfigError(str(stack_path(project_dir, stack)), f"{NAMESPACE}:agents[{host}].runtime",
                          "has no versioned runtime", "runtime: {package: {name, version}} or {hermes: {version}}")
    return pin.version


def set_runtime_version(project_dir: Path, stack: str, host: str, version: str) -> None:
    """Move the pin's version: runtime.package.version, or runtime.hermes.version."""
    path = stack_path(project_dir, stack)
    original = path.read_text()
    yaml = _yaml()
    doc = yaml.load(original)
    agents = doc["config"][f"{NAMESPACE}:agents"]
    index = next((i for i, a in enumerate(agents) if a.get("name") == host), None)
    if index is None:
        raise ConfigError(str(path), f"{NAMESPACE}:agents", f"has no agent {host!r}", "an agent of this stack")
    runtime = agents[index].get("runtime", {})
    kind = "package" if hasattr(runtime.get("package"), "get") else "hermes"
    pinned = runtime.get(kind)
    if not hasattr(pinned, "get") or "version" not in pinned:
        raise ConfigError(str(path), f"{NAMESPACE}:agents[{index}].runtime.{kind}.version", "is not set",
                          "a runtime pinned by version")
    old = pinned["version"]
    # Keep the scalar's style (a quoted "v1.2" stays quoted).
    pinned["version"] = type(old)(version) if type(old) is not str else version
    out = io.StringIO()
    yaml.dump(doc, out)
    write_atomic(path, out.getvalue().encode())
    try:
        load(project_dir, stack)
    except ConfigError:
        write_atomic(path, original.encode())  # never leave a stack file that does not load
        raise
