"""YAML without PyYAML's silent last-wins: a key given twice in one mapping is an error.

The one duplicate-key loader of both distributions (the stack file and proxy.yaml).
A repeated key in a policy file is almost always a merge accident, and which copy wins
decides what the agent may reach; we refuse it, naming its key path. Not ruamel.yaml's
DuplicateKeyError: its safe loader reads YAML 1.2 (so `on`/`yes` would change meaning
against the PyYAML reading used everywhere else), its message quotes both values (a
secret's, perhaps) and names no key path.
"""

from __future__ import annotations

from typing import Any

import yaml

_MERGE = "tag:yaml.org,2002:merge"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DuplicateKey(ValueError):
    def __init__(self, key_path: str, line: int) -> None:
        super().__init__(f"{key_path}: duplicate key (again on line {line}); each key may appear once")
        self.key_path, self.line = key_path, line


def load(text: str) -> Any:
    """yaml.safe_load, but raises DuplicateKey; yaml.YAMLError as before."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: already checked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key, value in node.value:
            if key.tag == _MERGE or not isinstance(key, yaml.ScalarNode):
                _check(value, path, seen)
                continue
            here = f"{path}.{key.value}" if path else key.value
            if key.value in keys:  # the key's text, as Pulumi sees it: '1' and 1 are one key
                raise DuplicateKey(here, key.start_mark.line + 1)
            keys.add(key.value)
            _check(value, here, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check(item, f"{path}[{i}]", seen)
