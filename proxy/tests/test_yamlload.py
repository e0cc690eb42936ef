"""schema.yamlload.load (the stack file and proxy.yaml): safe_load, except that a repeated key is an error naming its path."""

import pytest
import yaml

from agentctl_proxy.schema.yamlload import DuplicateKey, load


@pytest.mark.parametrize("text,path", [
    ("a: 1\na: 2\n", "a"),
    ("a: {b: 1, b: 2}\n", "a.b"),
    ("a:\n  - {x: 1}\n  - {x: 1, y: 2, y: 3}\n", "a[1].y"),
])
def test_duplicate_keys_name_their_path(text, path):
    with pytest.raises(DuplicateKey) as e:
        load(text)
    assert e.value.key_path == path and str(e.value).startswith(f"{path}: duplicate key")


def test_same_as_safe_load_otherwise():
    text = "a: &x {b: 1}\nc: *x\nd: {<<: *x, b: 2}\ne: [1, 2]\n"
    assert load(text) == yaml.safe_load(text)
    assert load("") is None


def test_recursive_alias_terminates():
    assert load("a: &x [*x]\n")["a"][0][0] is not None


def test_yaml_errors_pass_through():
    with pytest.raises(yaml.YAMLError):
        load("a: [\n")
    with pytest.raises(yaml.YAMLError):
        load("!!python/object:os.system x\n")  # still the safe loader


@pytest.mark.parametrize("text,path,line", [
    ("'1': a\n1: b\n", "1", 2),  # the same key text, as Pulumi would see it
    ("base: &b {k: 1}\nuse: *b\nother: *b\nx: 1\nx: 2\n", "x", 5),  # aliases are not duplicates
])
def test_key_text_and_aliases(text, path, line):
    with pytest.raises(DuplicateKey) as e:
        load(text)
    assert (e.value.key_path, e.value.line) == (path, line)
