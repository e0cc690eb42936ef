"""Duplicate keys anywhere in a YAML document, with the path and line."""
from __future__ import annotations

import pytest
import yaml

from agentctl.yamlkeys import find_duplicate


@pytest.mark.parametrize("text,found", [
    ("a: 1\nb: 2\n", None),
    ("a: 1\na: 2\n", ("a", 2)),
    ("a:\n  - {x: 1}\n  - {x: 1, y: 2, y: 3}\n", ("a[1].y", 3)),
    ("base: &b {k: 1}\nuse: *b\nother: *b\n", None),  # aliases are not duplicates
    ("'1': a\n1: b\n", ("1", 2)),  # the same key text, as Pulumi would see it
    ("", None),
])
def test_find_duplicate(text, found):
    assert find_duplicate(text) == found


def test_invalid_yaml_raises():
    with pytest.raises(yaml.YAMLError):
        find_duplicate("a: [\n")
