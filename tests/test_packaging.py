"""A wheel carries the templates and role folders, and renders from a plain install
(no checkout next to it): `agentctl render` must not need the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.slow  # over 5 s (the fast tier: ./dev test -m "not lab and not slow")

SOURCES = ["pyproject.toml", "agentctl", "stacks", "templates", "roles"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: a build in the checkout would leave build/ and egg-info behind.
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("agentctl-*.whl")
    return whl


def test_wheel_holds_every_template_and_role_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, inside in (("templates", "agentctl/_templates"), ("roles", "agentctl/_roles")):
        files = [p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        assert files
        missing = [str(p) for p in files if f"{inside}/{p.relative_to(ROOT / folder)}" not in names]
        assert not missing, missing


def test_installed_wheel_renders_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip install puts in site-packages
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml"):
        shutil.copy(ROOT / name, project / name)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import agentctl.resources as r; print(r.TEMPLATES, r.ROLES)"],
                           cwd=project, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert where == [str(site / "agentctl" / "_templates"), str(site / "agentctl" / "_roles")]
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "render", "--stack", "lab", "--out", "out"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load((project / "out" / "scout" / "user-data").read_text())
    assert "/etc/systemd/system/agentctl-agent.service" in {f["path"] for f in doc["write_files"]}
