"""`agentctl render` as a user runs it: files per host, or exit 2 with one line and
nothing written."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT


def agentctl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _project(tmp_path: Path, *stacks: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml", *(f"Pulumi.{s}.yaml" for s in stacks)):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(proc: subprocess.CompletedProcess[str], words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert words in proc.stderr, proc.stderr


def test_render_writes_one_folder_per_host(tmp_path):
    project = _project(tmp_path)
    out = tmp_path / "out"
    proc = agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".agentctl-render", "proxy", "scout"]  # the marker: ours
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
    assert "Pulumi.lab.yaml: agentctl:agents[0].egress.rules[0]: no target; expected host: (e.g. api.github.com)" \
        " or cidr: (e.g. 10.20.0.0/16)" in proc.stderr
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


def test_out_dot_in_the_project_is_refused_and_deletes_nothing(tmp_path):
    project = _project(tmp_path)
    before = _tree(project)
    _refused(agentctl("render", "--stack", "lab", "--out", ".", cwd=project), "--out: .: is the project folder")
    assert _tree(project) == before


def test_out_above_the_project_is_refused(tmp_path):
    project = _project(tmp_path / "p")
    _refused(agentctl("render", "--stack", "lab", "--out", str(tmp_path), "--project-dir", str(project)),
             "is the project folder or one of its parents")
    assert (project / "Pulumi.lab.yaml").is_file()


def test_out_with_foreign_files_is_refused(tmp_path):
    project = _project(tmp_path / "p")
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project)),
             "is a non-empty folder that agentctl did not write")
    assert _tree(out) == {"keep.txt": b"mine"} and not (project / ".agentctl").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    project = _project(tmp_path / "p")
    (tmp_path / "f").write_text("x")
    _refused(agentctl("render", "--stack", "lab", "--out", str(tmp_path / "f"), "--project-dir", str(project)),
             "is a file, not a folder")
    assert (tmp_path / "f").read_text() == "x"


def test_previous_output_is_replaced_whole(tmp_path):
    project = _project(tmp_path / "p")
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    args = ("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project))
    assert agentctl(*args).returncode == 0
    (out / "stale-host").mkdir()
    (out / "stale-host" / "user-data").write_text("old")
    proc = agentctl(*args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".agentctl-render", "proxy", "scout"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_injection_through_the_cli_is_refused_before_anything_is_written(tmp_path):
    project = _project(tmp_path)
    text = (project / "Pulumi.lab.yaml").read_text() + "  agentctl:heartbeatUrl: https://hb.example/$(id>/tmp/x)\n"
    (project / "Pulumi.lab.yaml").write_text(text)
    out = tmp_path / "out"
    _refused(agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project)),
             "Pulumi.lab.yaml: agentctl:heartbeatUrl: contains characters a URL must percent-encode")
    assert not out.exists() and not (project / ".agentctl").exists()


def _many_agents(project: Path, stack: str, n: int) -> None:
    """n agents, each with grants of its own (unique hosts: what gzip cannot fold away)."""
    path = project / f"Pulumi.{stack}.yaml"
    doc = yaml.safe_load(path.read_text())
    base = doc["config"]["agentctl:agents"][-1]

    def rules(i: int) -> list[dict]:
        digest = [hashlib.sha256(f"{i}-{j}".encode()).hexdigest() for j in range(4)]
        return [{"host": f"{h[:20]}.example.com", "methods": ["GET"], "paths": [f"/{h[20:40]}/*"]} for h in digest]
    doc["config"]["agentctl:agents"] = [dict(base, name=f"agent{i:03d}", egress={"rules": rules(i)}) for i in range(n)]
    path.write_text(yaml.safe_dump(doc))


def test_a_policy_too_big_for_its_ssm_parameter_is_refused_with_the_count_that_fits(tmp_path):
    """The proxies' policy is not in their user-data (a rule change must not replace
    them): on Hetzner it is pushed, so 60 agents render; on AWS it is one SSM parameter
    of at most 8 KB packed, so every command refuses what `pulumi up` could not create,
    with how many agents fit."""
    from agentctl import policy_parameter

    hcloud = _project(tmp_path / "h", "example-hcloud")
    _many_agents(hcloud, "example-hcloud", 60)
    ok = agentctl("render", "--stack", "example-hcloud", "--out", str(tmp_path / "h-out"), "--project-dir", str(hcloud))
    assert ok.returncode == 0, ok.stderr
    project = _project(tmp_path / "p", "example-aws")
    _many_agents(project, "example-aws", 60)
    out = tmp_path / "out"
    proc = agentctl("render", "--stack", "example-aws", "--out", str(out), "--project-dir", str(project))
    _refused(proc, "Pulumi.example-aws.yaml: agentctl:agents: the proxy's policy is ")
    fits = int(re.search(r"at most (\d+) fit", proc.stderr).group(1))
    assert not out.exists() and 1 < fits < 60
    assert f"holds {policy_parameter.SSM_ADVANCED_LIMIT}" in proc.stderr
    for n, code in ((fits, 0), (fits + 1, 2)):
        _many_agents(project, "example-aws", n)
        assert agentctl("render", "--stack", "example-aws", "--out", str(tmp_path / f"o{n}"),
                        "--project-dir", str(project)).returncode == code, n


def test_cli_help_and_render_do_not_import_the_lab(tmp_path):
    project = _project(tmp_path)
    for args in (["--help"], ["render", "--stack", "lab", "--out", str(tmp_path / "out"), "--project-dir", str(project)]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "agentctl.cli", *args], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert " agentctl.lab" not in proc.stderr


def _immutable(folder: Path):
    """A folder even root cannot write (chattr +i), or skip where the filesystem has no such flag."""
    import shutil as _sh
    if _sh.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here: no folder is unwritable for root")
    return folder


@pytest.mark.parametrize("where", ["under a file", "/proc", "unwritable"])
def test_out_that_cannot_be_written_exits_2_and_writes_no_ca_key(tmp_path, where):
    project = _project(tmp_path / "p")
    if where == "under a file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "deeper" / "out"
    elif where == "/proc":
        out = Path("/proc/agentctl-out")
    else:
        (tmp_path / "ro").mkdir()
        out = _immutable(tmp_path / "ro") / "new" / "out"
    try:
        _refused(agentctl("render", "--stack", "lab", "--out", str(out), "--project-dir", str(project)),
                 f"--out: {out}: cannot be written")
    finally:
        if where == "unwritable":
            subprocess.run(["chattr", "-i", str(tmp_path / "ro")])
    assert not (project / ".agentctl").exists(), "the CA key is written only when the whole render succeeds"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p"] + (["f"] if where == "under a file" else [])
                                                               + (["ro"] if where == "unwritable" else []))
    if where == "unwritable":
        assert list((tmp_path / "ro").iterdir()) == []


def test_a_render_that_writes_a_new_parent_folder_and_fails_removes_it(tmp_path, monkeypatch):
    """The staged output and the folders made for it go when the CA key cannot be saved."""
    from agentctl import ca, render
    from agentctl.errors import ConfigError

    project = _project(tmp_path / "p")
    out = tmp_path / "a" / "b" / "out"

    def fail(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(ca.PendingCa, "save", fail)
    with pytest.raises(ConfigError, match="--project-dir: .*cannot hold the stack's CA key"):
        render.render_stack(project, "lab", out)
    assert not (tmp_path / "a").exists()


def test_help_documents_debug_version_and_h():
    proc = agentctl("-h")
    assert proc.returncode == 0
    for flag in ("--debug", "--version", "-h"):
        assert flag in proc.stdout, flag
    for sub in (("render", "-h"), ("lab", "-h"), ("lab", "up", "-h")):
        proc = agentctl(*sub)
        assert proc.returncode == 0 and "Usage:" in proc.stdout, (sub, proc.stderr)
    version = agentctl("--version")
    assert version.returncode == 0 and version.stdout.startswith("agentctl ")
