"""`pulumi up` finds the program, its venv and its dynamic providers' venv in this layout.

Pulumi resolves Pulumi.yaml's relative `virtualenv` once for the program and once for
the dynamic provider launcher, against different folders (pulumi/pulumi#7061). The
three functions below are Pulumi's rules, read in pulumi/pulumi at commit
1b5949891b3cefcb9974752b24a5ecef0acc86c8 (docs/pulumi-layout.md):
  - pkg/engine/project.go            getPwdMain: the program's working directory
  - sdk/python/toolchain/pip.go      resolveVirtualEnvironmentPath: the language host's venv
  - sdk/python/dist/pulumi-resource-pulumi-python   the launcher: $PWD/$PULUMI_RUNTIME_VIRTUALENV,
    started with the plugin context's Pwd (sdk/go/common/resource/plugin/provider_plugin.go)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def pwd_main(root: Path, main: str | None) -> tuple[Path, str]:
    """getPwdMain: no main -> (root, "."); a folder -> (that folder, "."); a file -> (its folder, its name)."""
    if not main:
        return root, "."
    target = Path(os.path.normpath(root / main)) if not os.path.isabs(main) else Path(main)
    if not target.exists():
        raise FileNotFoundError(f"project 'main' could not be read: {target}")
    return (target, ".") if target.is_dir() else (target.parent, target.name)


def language_host_venv(root: Path, virtualenv: str) -> Path:
    """resolveVirtualEnvironmentPath(root, virtualenv): relative to the project root."""
    return Path(virtualenv) if os.path.isabs(virtualenv) else root / virtualenv


def launcher_venv(pwd: Path, virtualenv: str) -> Path:
    """The launcher script: trailing slash removed, then `$PWD/$PULUMI_RUNTIME_VIRTUALENV`."""
    virtualenv = virtualenv.rstrip("/") if virtualenv != "/" else virtualenv
    return Path(virtualenv) if virtualenv.startswith("/") else Path(f"{pwd}/{virtualenv}")


def resolutions(root: Path, project: dict) -> tuple[Path, Path, Path]:
    """(program folder, the program's venv, the dynamic providers' venv)."""
    virtualenv = project["runtime"]["options"]["virtualenv"]
    pwd, _ = pwd_main(root, project.get("main"))
    return pwd, language_host_venv(root, virtualenv), launcher_venv(pwd, virtualenv)


def _dev_venv() -> str:
    match = re.search(r"^VENV=(\S+)", (ROOT / "dev").read_text(), re.M)
    assert match, "./dev names its venv in VENV="
    return match.group(1)


def test_program_and_dynamic_providers_use_the_venv_dev_setup_makes():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    pwd, program_venv, provider_venv = resolutions(ROOT, project)
    assert program_venv == ROOT / _dev_venv(), "the program runs from the venv ./dev setup makes"
    assert provider_venv == program_venv, (
        f"dynamic providers (AgentImds, ProxySecrets) would look for {provider_venv}, the program uses {program_venv}")
    # ... and the program folder holds the entry point the language host runs (runpy on a folder).
    assert (pwd / "__main__.py").is_file()
    assert "agentctl_stacks.program import main" in (pwd / "__main__.py").read_text()


@pytest.mark.parametrize("main,virtualenv,agree", [
    ("stacks/", "venv", False),       # the old layout: the launcher looks in stacks/venv (#7061)
    ("stacks/", "../venv", False),    # the language host would look outside the project
    (None, "venv", True),             # this layout
    ("__main__.py", "venv", True),    # a file at the root: pwd is the root too
])
def test_the_rules_reproduce_pulumi_7061(main, virtualenv, agree):
    project = {"runtime": {"options": {"virtualenv": virtualenv}}, **({"main": main} if main else {})}
    _, program_venv, provider_venv = resolutions(ROOT, project)
    assert (program_venv == provider_venv) is agree


def test_setup_docs_name_that_venv():
    readme = (ROOT / "README.md").read_text()
    assert "./dev setup" in readme and f"{_dev_venv()}/bin/agentctl" in readme
