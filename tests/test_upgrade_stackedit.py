"""Recording the new runtime version: the stack file changes in that one value only."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agentctl.errors import ConfigError
from agentctl.upgrade.stackedit import runtime_version, set_runtime_version

ROOT = Path(__file__).resolve().parent.parent
HERMES_STACKS = ["example-aws", "example-hcloud-by-version"]


@pytest.fixture(autouse=True)
def hcloud_by_version():
    """The Hetzner example pins Hermes by commit; the same file pinned by version."""
    text = (ROOT / "Pulumi.example-hcloud.yaml").read_text()
    pinned = text.replace("hermes: {commit: 0123456789abcdef0123456789abcdef01234567}", 'hermes: {version: "v2026.11.0"}')
    assert pinned != text
    return pinned


@pytest.mark.parametrize("stack", HERMES_STACKS)
def test_only_the_version_changes_byte_for_byte(tmp_path, stack, hcloud_by_version):
    src = ROOT / f"Pulumi.{stack}.yaml"
    if stack == "example-hcloud-by-version":
        src = tmp_path / "src" / src.name
        src.parent.mkdir()
        src.write_text(hcloud_by_version)
    shutil.copy(src, tmp_path / src.name)
    old = runtime_version(tmp_path, stack, "scout")
    set_runtime_version(tmp_path, stack, "scout", "v2027.1.0")
    before, after = src.read_text(), (tmp_path / src.name).read_text()
    assert old in before and before.count(old) == 1
    assert after == before.replace(old, "v2027.1.0")
    assert runtime_version(tmp_path, stack, "scout") == "v2027.1.0"


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


def test_a_runtime_pinned_by_commit_is_refused_and_left_alone(tmp_path):
    src = ROOT / "Pulumi.example-hcloud.yaml"
    shutil.copy(src, tmp_path / src.name)
    with pytest.raises(ConfigError, match="runtime.hermes.version: is not set"):
        set_runtime_version(tmp_path, "example-hcloud", "scout", "v2027.1.0")
    assert (tmp_path / src.name).read_text() == src.read_text()
