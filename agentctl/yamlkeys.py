"""Duplicate mapping keys in a YAML document, which PyYAML silently resolves last-wins.

Pulumi refuses a stack file with a duplicate key; so do we, naming where it is, so a
second `agentctl:agents:` pasted at the bottom cannot quietly replace the first.
"""
from __future__ import annotations

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def find_duplicate(text: str) -> tuple[str, int] | None:
    """(key path, 1-based line) of the first repeated key, or None. The path is
    `a.b[0].c` from the document root. Raises yaml.YAMLError on invalid YAML."""
    root = yaml.compose(text, Loader=_Loader)
    return _walk(root, "", set()) if root is not None else None


def _walk(node: yaml.Node, path: str, seen: set[int]) -> tuple[str, int] | None:
    if id(node) in seen:  # an alias: already checked where it was anchored
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in keys:
                return child, key_node.start_mark.line + 1
            keys.add(key)
            if (found := _walk(value_node, child, seen)) is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            if (found := _walk(item, f"{path}[{i}]", seen)) is not None:
                return found
    return None
