"""The lab's package index content: wheels the lab internet serves at pypi.lab.test.

The lab agent (assets/lab_agent.py) is packaged as `agentctl-lab-agent` in three
versions, so snapshot-upgrade has real versions to move between:

    1.0.0  what Pulumi.lab.yaml pins and `lab up` installs
    1.1.0  a good upgrade
    1.2.0  installs and starts, but its health check answers 503

Each is a normal setuptools project built with `pip wheel` on this machine and cached
under the lab cache by a hash of its inputs, so a later `lab up` builds nothing. The
index serves every wheel of every folder `wheel_dirs` returns; a published runtime
the stack pins to the lab index (Hermes in Pulumi.lab-hermes.yaml) is one more folder
there, fetched as binary wheels (`runtime_wheels`).
"""
from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from agentctl.errors import AgentctlError
from agentctl.lab import topology
from agentctl.lab.image import manylinux_platforms
from agentctl.lab.internet import ASSETS
from agentctl.model import Deployment, PackagePin

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


def runtime_wheels(cache_dir: Path, requirement: str, python: str) -> Path:
    """A published runtime (Hermes) and everything it depends on, as the lab image's
    Python installs them: binary wheels fetched from the package index this machine
    uses, once per requirement and Python. The agent host then installs them from the
    lab index through the proxy, the way it would from PyPI."""
    key = hashlib.sha256(f"{RECIPE}\n{requirement}\n{python}\n{platform.machine()}".encode()).hexdigest()[:16]
    out = Path(cache_dir) / "packages" / f"runtime-{key}"
    if (out / ".complete").is_file():
        return out
    tmp_out = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    # Binary wheels only: the agent host installs with no compiler and no build step.
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--dest", str(tmp_out), "--only-binary=:all:", "--python-version", python,
                           *manylinux_platforms(), requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise PackageBuildError(f"lab: fetching {requirement} for Python {python} failed: "
                                f"{proc.stderr.strip()[-400:]}")
    (tmp_out / ".complete").write_text(requirement + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp_out.rename(out)
    return out


def lab_index_pins(deployment: Deployment) -> list[PackagePin]:
    """Published runtimes the stack installs from an index inside the lab internet."""
    lab_names = {s for srv in topology.internet_servers(deployment) for s in srv.names}
    return [a.runtime.hermes.pin for a in deployment.agents
            if a.runtime.hermes and urlsplit(a.runtime.hermes.index).hostname in lab_names]


def wheel_dirs(cache_dir: Path, deployment: Deployment, python: str) -> list[Path]:
    """Every folder whose wheels the lab index serves: the lab agent's versions, and
    each published runtime the stack pins to the lab index."""
    return [lab_agent_wheels(cache_dir)] + [runtime_wheels(cache_dir, pin.requirement, python)
                                             for pin in lab_index_pins(deployment)]
