"""Recording the new runtime version: the stack file changes in that one value only."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agentctl.errors import ConfigError
from agentctl.upgrade.stackedit import runtime_version, set_runtime_version

ROOT = Path(__file__).resolve().parent.parent
HERMES_STACKS = ["example-aws", "example-hcloud"]


@pytest.mark.parametrize("stack", HERMES_STACKS)
def test_only_the_version_changes_byte_for_byte(tmp_path, stack):
    src = ROOT / f"Pulumi.{stack}.yaml"
    shutil.copy(src, tmp_path / src.name)
    old = runtime_version(tmp_path, stack, "scout")
    set_runtime_version(tmp_path, stack, "scout", "0.20.0")
    before, after = src.read_text(), (tmp_path / src.name).read_text()
    assert old in before and before.count(old) == 1
    assert after == before.replace(old, "0.20.0")
    assert runtime_version(tmp_path, stack, "scout") == "0.20.0"


def test_a_version_the_model_refuses_is_not_written(tmp_path):
    src = ROOT / "Pulumi.example-aws.yaml"
    shutil.copy(src, tmp_path / src.name)
    with pytest.raises(ConfigError):
        set_runtime_version(tmp_path, "example-aws", "scout", "bad version\nwith: newline")
    assert (tmp_path / src.name).read_text() == src.read_text()


def test_a_package_runtime_moves_its_version_and_nothing_else(tmp_path):
    src = ROOT / "Pulumi.lab.yaml"
    shutil.copy(src, tmp_path / src.name)
    assert runtime_version(tmp_path, "lab", "scout") == "1.0.0"
    set_runtime_version(tmp_path, "lab", "scout", "1.1.0")
    before, after = src.read_text(), (tmp_path / src.name).read_text()
    assert before.count("version: 1.0.0") == 1
    assert after == before.replace("version: 1.0.0", "version: 1.1.0")
    assert runtime_version(tmp_path, "lab", "scout") == "1.1.0"
