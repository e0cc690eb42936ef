"""The lab backend's snapshot and restore on a real overlay mount (root), with the host's
stop/start recorded: the copy is taken only while the host is stopped, whiteouts and
xattrs survive, and a restore brings back exactly the snapshot's view."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agentctl.upgrade import engine
from agentctl.upgrade.backends.lab import LabBackend, LabBackendError, lab_start, lab_stop
from tests.labrun import lab_cli, needs_lab

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts and whiteouts need root")


@pytest.fixture
def lab(tmp_path):
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (image / "etc" / "from-image").write_text("image")
    state = tmp_path / "state"
    base = state / "hosts" / "scout"
    for sub in ("upper", "work", "root"):
        (base / sub).mkdir(parents=True)
    opts = f"lowerdir={image},upperdir={base / 'upper'},workdir={base / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "root")], check=True)
    events: list[str] = []

    def stop(host):
        events.append(f"stop {host}")

    def start(host):
        events.append(f"start {host}")
    yield LabBackend(state, image, "lab", stop, start), base / "root", events
    subprocess.run(["umount", str(base / "root")])


def tags(run_id="20261205T091327Z-abcdef"):
    return engine.snapshot_tags("lab", "scout", "1.0.0", "1.1.0", run_id)


@needs_root
def test_snapshot_then_restore_brings_back_the_exact_view(lab):
    backend, root, events = lab
    (root / "home").mkdir()
    (root / "home" / "notes").write_text("written before the upgrade")
    os.setxattr(root / "home" / "notes", "user.kept", b"yes")
    (root / "etc" / "from-image").unlink()  # a whiteout in the upper layer
    snap = backend.snapshot("scout", tags())
    backend.wait(snap)
    assert events == ["stop scout", "start scout"]
    # The upgrade changes things...
    (root / "home" / "notes").write_text("rewritten by 1.2.0")
    (root / "etc" / "from-image").write_text("back")
    (root / "opt").mkdir()
    backend.restore("scout", snap)
    assert events[-2:] == ["stop scout", "start scout"]
    assert (root / "home" / "notes").read_text() == "written before the upgrade"
    assert os.getxattr(root / "home" / "notes", "user.kept") == b"yes"
    assert not (root / "etc" / "from-image").exists() and not (root / "opt").exists()


@needs_root
def test_listing_and_retention_see_only_the_projects_snapshots(lab, tmp_path):
    backend, root, _ = lab
    ids = [backend.snapshot("scout", tags(f"2026120{i}T000000Z-00000{i}")) for i in range(3)]
    other = LabBackend(backend.state_dir, backend.image, "other-stack", lambda h: None, lambda h: None)
    foreign = other.snapshot("scout", {**tags("20261209T000000Z-ffffff"), "stack": "other-stack"})
    assert [s.id for s in backend.list_snapshots("scout")] == ids
    with pytest.raises(LabBackendError, match="refusing to delete"):
        backend.delete(foreign)
    backend.delete(ids[0])
    assert [s.id for s in backend.list_snapshots("scout")] == ids[1:]


@needs_root
def test_a_half_made_copy_is_never_listed_and_is_redone(lab):
    backend, root, _ = lab
    half = backend.state_dir / "snapshots" / "scout" / "20261205T091327Z-abcdef.tmp"
    half.mkdir(parents=True)
    assert backend.list_snapshots("scout") == []
    with pytest.raises(LabBackendError, match="not complete"):
        backend.wait("scout/20261205T091327Z-abcdef")
    snap = backend.snapshot("scout", tags())
    assert not half.exists() and [s.id for s in backend.list_snapshots("scout")] == [snap]


def test_snapshot_and_restore_on_a_booted_lab_host(tmp_path):
    """The real stop/start: a file written before the snapshot is back after a restore,
    and the agent's service runs again."""
    from agentctl.lab import hosts, state, topology
    state_dir = tmp_path / "lab"
    cli = lab_cli(state_dir)
    try:
        cli("up", check=0)
        ns = topology.host_netns("scout")
        marker = "/var/lib/agentctl-upgrade-test"
        assert hosts.run_in(ns, "sh", "-c", f"echo before > {marker}").returncode == 0
        backend = LabBackend(state_dir, Path(state.load(state_dir).image), "lab", lab_stop(state_dir),
                             lab_start(state_dir))
        snap = backend.snapshot("scout", tags())
        backend.wait(snap)
        assert hosts.run_in(ns, "sh", "-c", f"echo after > {marker}").returncode == 0
        backend.restore("scout", snap)
        assert hosts.run_in(ns, "cat", marker).stdout == "before\n"
        active = hosts.run_in(ns, "systemctl", "is-active", "agentctl-agent.service").stdout.strip()
        assert active in ("active", "activating")
    finally:
        cli("down")


for _mark in needs_lab:
    test_snapshot_and_restore_on_a_booted_lab_host = _mark(test_snapshot_and_restore_on_a_booted_lab_host)
