"""The proxy's own suite (proxy/tests) again on Python >= 3.12 with mitmproxy 12.x.

proxy/pyproject.toml allows mitmproxy 11.0.x on Python 3.11 (which runs every other test)
and 12.x from 12.2 on Python >= 3.12 (what `pip install agentctl-proxy` gets on Ubuntu
24.04). The proxy wraps a few mitmproxy internals (all in internals.py, with canary tests)
and uses its DNS types, so both halves of that range must pass the same real-process tests.

The venv holds only third-party packages and is cached by its requirement list; the
code under test comes from this checkout through PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT

CACHE = Path(os.environ.get("AGENTCTL_VENV_CACHE", "/var/cache/agentctl/venvs"))
INTERPRETERS = ("python3.12", "python3.13")
PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))


def _candidates() -> list[str]:
    # pyenv's shims answer for every installed version but run only the selected one,
    # so its versions are also looked at directly
    found = [exe for name in INTERPRETERS if (exe := shutil.which(name))]
    for name in INTERPRETERS:
        found += sorted(str(p) for p in PYENV_ROOT.glob(f"versions/{name[6:]}*/bin/{name}"))
    return found


def _interpreter() -> tuple[str, str] | None:
    """(path, "3.x") of the first Python >= 3.12 that runs and can make a venv."""
    for exe in _candidates():
        probe = subprocess.run([exe, "-c", "import ensurepip, sys, venv; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            return exe, probe.stdout.strip()
    return None


def requirements() -> list[str]:
    """The proxy's dependencies and test extras, with mitmproxy held to 12.x."""
    project = tomllib.loads((ROOT / "proxy" / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] + project["optional-dependencies"]["server"]
            if not d.replace(" ", "").startswith("mitmproxy")]
    return ["mitmproxy>=12.2,<13", *deps, *project["optional-dependencies"]["test"]]


def _venv(python: str, version: str, reqs: list[str]) -> Path:
    key = hashlib.sha256("\n".join([version, *reqs]).encode()).hexdigest()[:12]
    venv = CACHE / f"proxy-py{version}-{key}"
    done = venv / ".agentctl-complete"  # written last: a killed install is rebuilt
    if done.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          *reqs], capture_output=True, text=True, timeout=1200)
    if pip.returncode != 0:
        pytest.fail(f"pip install into {venv} failed: {(pip.stderr or pip.stdout)[-2000:]}")
    done.write_text("\n".join(reqs) + "\n")
    return venv


found = _interpreter()


@pytest.mark.slow  # builds a Python 3.12 venv from the package index (minutes)
@pytest.mark.skipif(found is None, reason=f"no {' or '.join(INTERPRETERS)} with venv, on PATH or in pyenv")
def test_proxy_suite_passes_on_mitmproxy_12():
    assert found is not None
    venv = _venv(*found, requirements())
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "proxy")}
    version = subprocess.run([python, "-c", "import mitmproxy.version as v, agentctl_proxy; "
                              "print(v.VERSION, agentctl_proxy.__file__)"],
                             capture_output=True, text=True, env=env, cwd=ROOT)
    assert version.returncode == 0, version.stderr[-2000:]
    mitm, module = version.stdout.split()
    assert mitm.startswith("12."), mitm
    assert Path(module).is_relative_to(ROOT / "proxy"), module  # this checkout, not an install
    run = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "proxy/tests"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert run.returncode == 0, f"proxy/tests on mitmproxy {mitm}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
