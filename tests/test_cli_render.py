"""`agentctl render` as a user runs it: files per host, or exit 2 with one line and
nothing written."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import ROOT


def agentctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _project(tmp_path: Path) -> Path:
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_render_writes_one_folder_per_host(tmp_path):
    project = _project(tmp_path)
    out = tmp_path / "out"
    proc = agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["proxy", "scout"]
    for host in ("proxy", "scout"):
        assert (out / host / "user-data").read_text().startswith("#cloud-config\n")
        assert yaml.safe_load((out / host / "meta-data").read_text())["local-hostname"] == host
    assert yaml.safe_load((out / "proxy" / "proxy.yaml").read_text())["agents"][0]["name"] == "scout"
    key = project / ".agentctl" / "lab" / "ca" / "ca.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert "PRIVATE KEY" not in "".join(p.read_text() for p in out.rglob("*") if p.is_file())


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path):
    project = _project(tmp_path)
    text = (project / "Pulumi.lab.yaml").read_text().replace("{host: api.lab.test, methods: [GET]", "{methods: [GET]", 1)
    (project / "Pulumi.lab.yaml").write_text(text)
    out = tmp_path / "out"
    proc = agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "Pulumi.lab.yaml: agentctl:agents[0].egress.rules[0].host: is required but missing" in proc.stderr
    assert not out.exists() and not (project / ".agentctl").exists()


def test_bad_input_leaves_previous_output_alone(tmp_path):
    project = _project(tmp_path)
    out = tmp_path / "out"
    assert agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project)).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (project / "Pulumi.lab.yaml").write_text("config: [")
    proc = agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project))
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_missing_flag_exits_2():
    proc = agentctl("render", "--stack", "lab")
    assert proc.returncode == 2 and "--out" in proc.stderr
