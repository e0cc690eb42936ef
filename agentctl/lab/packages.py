"""The lab's package index content: wheels the lab internet serves at pypi.lab.test.

The lab agent (assets/lab_agent.py) is packaged as `agentctl-lab-agent` in three
versions, so snapshot-upgrade has real versions to move between:

    1.0.0  what Pulumi.lab.yaml pins and `lab up` installs
    1.1.0  a good upgrade
    1.2.0  installs and starts, but its health check answers 503

Each is a normal setuptools project built with `pip wheel` on this machine and cached
under the lab cache by a hash of its inputs, so a later `lab up` builds nothing. The
index serves every wheel of every folder `wheel_dirs` returns; another runtime's
wheels (Hermes in its lab) are one more folder there.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agentctl.errors import AgentctlError
from agentctl.lab.internet import ASSETS

LAB_AGENT = "agentctl-lab-agent"
LAB_AGENT_VERSIONS = {"1.0.0": False, "1.1.0": False, "1.2.0": True}  # version -> broken
RECIPE = "1"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
description = "agentctl's lab stand-in agent"
requires-python = ">=3.9"

[project.scripts]
agentctl-lab-agent = "agentctl_lab_agent:main"

[tool.setuptools]
py-modules = ["agentctl_lab_agent", "agentctl_lab_agent_build"]
"""


class PackageBuildError(AgentctlError):
    exit_code = 1


def _key() -> str:
    h = hashlib.sha256(RECIPE.encode() + PYPROJECT.encode() + (ASSETS / "lab_agent.py").read_bytes())
    h.update(repr(sorted(LAB_AGENT_VERSIONS.items())).encode())
    return h.hexdigest()[:16]


def lab_agent_wheels(cache_dir: Path) -> Path:
    """The folder holding every version's wheel, built once per source change."""
    out = Path(cache_dir) / "packages" / f"{LAB_AGENT}-{_key()}"
    if all(list(out.glob(f"agentctl_lab_agent-{v}-*.whl")) for v in LAB_AGENT_VERSIONS):
        return out
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    for version, broken in LAB_AGENT_VERSIONS.items():
        with tempfile.TemporaryDirectory(prefix="agentctl-lab-agent-") as src:
            s = Path(src)
            (s / "pyproject.toml").write_text(PYPROJECT.format(name=LAB_AGENT, version=version))
            shutil.copy(ASSETS / "lab_agent.py", s / "agentctl_lab_agent.py")
            (s / "agentctl_lab_agent_build.py").write_text(
                f'"""Written by the lab build."""\nVERSION = {version!r}\nBROKEN = {broken!r}\n')
            proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                                   "--disable-pip-version-check", "--wheel-dir", str(tmp_out), str(s)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(tmp_out, ignore_errors=True)
                raise PackageBuildError(f"lab: building {LAB_AGENT} {version} failed: {proc.stderr.strip()[-400:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    for old in out.parent.glob(f"{LAB_AGENT}-*"):
        if old != out:
            shutil.rmtree(old, ignore_errors=True)
    return out


def wheel_dirs(cache_dir: Path) -> list[Path]:
    """Every folder whose wheels the lab index serves."""
    return [lab_agent_wheels(cache_dir)]
