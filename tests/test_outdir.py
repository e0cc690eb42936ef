"""--out safety: only a new, empty or agentctl-written folder is replaced, and the
replacement is one swap."""
from __future__ import annotations

import os

import pytest

from agentctl import outdir
from agentctl.errors import ConfigError


def test_swap_replaces_the_previous_output_whole(tmp_path):
    out = tmp_path / "out"
    outdir.write_atomically({"a/user-data": "1", "old/user-data": "x"}, out)
    outdir.check_out(out, tmp_path / "project")  # our own output: may be replaced
    inode = os.stat(out).st_ino
    outdir.write_atomically({"a/user-data": "2"}, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [outdir.MARKER, "a", "a/user-data"]
    assert (out / "a" / "user-data").read_text() == "2" and os.stat(out).st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left


def test_swap_without_renameat2_still_replaces(tmp_path, monkeypatch):
    class NoRenameat2:
        def __init__(self, *a, **kw):
            pass
    monkeypatch.setattr(outdir.ctypes, "CDLL", NoRenameat2)
    out = tmp_path / "out"
    outdir.write_atomically({"a/user-data": "1"}, out)
    outdir.write_atomically({"b/user-data": "2"}, out)
    assert sorted(p.name for p in out.iterdir()) == [outdir.MARKER, "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("make,words", [
    (lambda p, o: (o.mkdir(), (o / "x").write_text("mine")), "did not write"),
    (lambda p, o: o.write_text("file"), "is a file"),
    (lambda p, o: (p.mkdir(exist_ok=True), o.symlink_to(p)), "symbolic link"),
])
def test_foreign_out_is_refused(tmp_path, make, words):
    project, out = tmp_path / "project", tmp_path / "out"
    project.mkdir()
    make(project, out)
    with pytest.raises(ConfigError, match=words) as err:
        outdir.check_out(out, project)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("rel", [".", "..", "../.."])
def test_project_and_its_parents_are_refused(tmp_path, rel):
    project = tmp_path / "a" / "project"
    project.mkdir(parents=True)
    with pytest.raises(ConfigError, match="is the project folder or one of its parents"):
        outdir.check_out(project / rel, project)


def test_new_empty_and_nested_folders_are_fine(tmp_path):
    project = tmp_path / "project"
    (project / "empty").mkdir(parents=True)
    for out in (project / "build" / "render", project / "empty", tmp_path / "elsewhere"):
        outdir.check_out(out, project)
