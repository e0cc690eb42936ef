"""The rendered agentctl-runtime-install, run for real (bash, runuser, python3 -m venv,
pip) against a local PEP 503 folder index of the lab agent's wheels: it installs a
version as root-owned code, reports it, switches atomically, and a failed install
leaves the running version in place."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from agentctl.lab.packages import lab_agent_wheels
from agentctl.model import PackagePin
from agentctl.render import _env

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                                 reason="runs as root (it drops to nobody for the build)")]


@pytest.fixture(scope="module")
def script():
    # pytest's own folders are root's alone (0700); the build runs as nobody
    tmp = Path(tempfile.mkdtemp(prefix="agentctl-rt-"))
    os.chmod(tmp, 0o755)
    index = tmp / "simple" / "agentctl-lab-agent"
    index.mkdir(parents=True)
    for whl in lab_agent_wheels(Path(os.environ.get("AGENTCTL_LAB_CACHE", "/var/cache/agentctl/lab"))).glob("*.whl"):
        shutil.copy(whl, index / whl.name)
    # pip reads a file: index folder's index.html (pip/_internal/index/collector.py)
    (index / "index.html").write_text("".join(f'<a href="{w.name}">{w.name}</a>\n' for w in index.glob("*.whl")))
    for p in (tmp / "simple", index, *index.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    base = tmp / "runtime"
    pin = PackagePin("agentctl-lab-agent", "1.0.0", (), f"file://{tmp}/simple/")
    text = _env("agent").get_template("runtime-install.sh.j2").render(
        pin=pin, runtime_base=str(base), pip_proxy_env="no_proxy='*'")
    path = tmp / "agentctl-runtime-install"
    path.write_text(text)
    path.chmod(0o700)
    yield path, base
    shutil.rmtree(tmp, ignore_errors=True)


def run(script, *args):
    return subprocess.run([str(script[0]), *args], capture_output=True, text=True, timeout=600)


def test_install_switch_and_a_failed_install_changes_nothing(script):
    _, base = script
    assert run(script, "--installed").returncode == 1
    first = run(script, "1.0.0")
    assert first.returncode == 0, first.stderr
    assert run(script, "--installed").stdout.strip() == "1.0.0"
    target = os.readlink(base / "venv")
    assert os.stat(target).st_uid == 0 and os.stat(Path(target) / "bin" / "python").st_uid == 0
    out = subprocess.run([str(base / "venv" / "bin" / "python"), "-c",
                          "from agentctl_lab_agent_build import VERSION; print(VERSION)"], capture_output=True,
                         text=True)
    assert out.stdout.strip() == "1.0.0"
    failed = run(script, "9.9.9")  # not in the index
    assert failed.returncode != 0
    assert run(script, "--installed").stdout.strip() == "1.0.0" and os.readlink(base / "venv") == target
    assert sorted(p.name for p in (base / "releases").iterdir()) == [Path(target).name]  # nothing half-built left
    assert run(script, "1.1.0").returncode == 0
    assert run(script, "--installed").stdout.strip() == "1.1.0"
    bad = run(script, "--index-url=http://evil/")
    assert bad.returncode == 2 and "is not an exact version" in bad.stderr
