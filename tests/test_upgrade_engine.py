"""The snapshot-upgrade engine against a fake host and backend (tests/upgrade_fakes.py).

The invariant, proven for a kill after every journal write and inside every
operation, then `--resume` (or `--rollback`): the run ends with the new version
accepted and recorded, or with the old version (and the agent's data) restored and
recorded, and a resumed good upgrade always ends upgraded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agentctl.upgrade import engine
from agentctl.upgrade.engine import Snapshot, UpgradeError, expired
from agentctl.upgrade.journal import HostLock, Journal, JournalError, OUTCOMES, journals, write_atomic
from tests.upgrade_fakes import BAD, DATA, FROM, GOOD, Killed, World

ROOT = Path(__file__).resolve().parent.parent
OPERATION_POINTS = ["snapshot.before", "snapshot.mid", "wait.before", "upgrade.before", "upgrade.mid",
                    "accept.before", "restore.before", "restore.mid", "record.before", "record.mid",
                    "delete.before"]
UNREACHED = {GOOD: {"restore.before", "restore.mid"}, BAD: {"record.before", "record.mid", "delete.before"}}


def go(tmp_path: Path, world: World, to: str | None = GOOD, hook=None, **kw) -> Journal:
    return engine.run(tmp_path / "journal", stack="lab", host="scout", to=to, keep=kw.pop("keep", 3),
                      backend=world, runtime=world, recorder=world, hook=hook, **kw)


def assert_end_state(world: World, journal: Journal, to: str) -> None:
    s = world.load()
    # The operator's --check commands judged every acceptance of the new version and no
    # acceptance of the restored old one, on whatever path the run took.
    assert all(a["checks"] == (a["version"] != FROM) for a in s["accepts"]), s["accepts"]
    outcome = journal.data["outcome"]
    assert outcome in OUTCOMES, journal.data
    on_disk = json.loads(journal.path.read_text())
    assert on_disk["outcome"] == outcome  # the outcome is durable, not only in memory
    if outcome == "upgraded":
        assert s["version"] == to and World(world.path).accept() == [] and s["stack_version"] == to
    else:
        assert s["version"] == FROM, f"{outcome} but the host runs {s['version']}"
        assert s["data"] == DATA, "the agent's data was not restored"
        assert s["stack_version"] == FROM


def saves_in_a_clean_run(to: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "count.json", create=True)
        count = []
        go(Path(tmp), world, to=to, hook=lambda j: count.append(1))
        return len(count)


# Every journal write of a clean run, for a good and a bad version: a kill after each.
KILL_AFTER = [(to, n) for to in (GOOD, BAD) for n in range(saves_in_a_clean_run(to))]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "world.json", create=True)


def test_good_upgrade_is_accepted_recorded_and_pruned(tmp_path, world):
    for i in range(4):  # older runs' snapshots of this host, and one of another host
        s = world.load()
        s["snapshots"][f"old-{i}"] = {"tags": {"host": "scout", "run-id": f"2020010{i}T000000Z-aaaaaa",
                                               "time": f"2020010{i}T000000Z", "project": engine.PROJECT},
                                      "version": FROM, "data": {}, "ready": True}
        world.save(s)
    s = world.load()
    s["snapshots"]["other-host"] = {"tags": {"host": "other", "run-id": "x", "time": "19990101T000000Z",
                                             "project": engine.PROJECT}, "version": FROM, "data": {}, "ready": True}
    s["snapshots"]["not-ours"] = {"tags": {"host": "scout", "run-id": "y", "time": "19990101T000000Z"},
                                  "version": FROM, "data": {}, "ready": True}
    world.save(s)
    journal = go(tmp_path, world, to=GOOD, keep=3)
    assert journal.data["outcome"] == "upgraded"
    assert_end_state(world, journal, GOOD)
    left = set(world.load()["snapshots"])
    assert left == {journal.data["snapshot"], "old-3", "old-2", "other-host", "not-ours"}
    assert [s["name"] for s in journal.data["steps"]] == ["preflight", "snapshot", "upgrade", "acceptance",
                                                          "record", "retention"]
    assert all(s["status"] == "done" and s["ended"] >= s["started"] for s in journal.data["steps"])


def test_failed_acceptance_rolls_back_and_keeps_the_agents_data(tmp_path, world):
    journal = go(tmp_path, world, to=BAD)
    assert journal.data["outcome"] == "rolled-back"
    assert "health check fails on 1.2.0" in journal.data["reason"]
    assert_end_state(world, journal, BAD)
    assert [s["name"] for s in journal.data["steps"]] == ["preflight", "snapshot", "upgrade", "acceptance",
                                                          "rollback", "rollback-acceptance"]


def checks_fail_on(world: World, *versions: str) -> None:
    s = world.load()
    s["check_fails_on"] = list(versions)
    world.save(s)


def accepts(world: World) -> list[tuple[str, bool]]:
    return [(a["version"], a["checks"]) for a in world.load()["accepts"]]


def test_upgrade_acceptance_runs_the_operators_checks(tmp_path, world):
    checks_fail_on(world, GOOD)  # healthy, but the operator's check rejects it
    journal = go(tmp_path, world, to=GOOD)
    assert journal.data["outcome"] == "rolled-back", journal.data
    assert "operator check fails on 1.1.0" in journal.data["reason"]
    assert accepts(world) == [(GOOD, True), (FROM, False)]


def _failed_acceptance(tmp_path, world):
    return go(tmp_path, world, to=BAD)


def _failed_upgrade(tmp_path, world):
    world.fail.add("upgrade.mid")
    return go(tmp_path, world, to=GOOD)


def _rollback_of_the_last_upgraded_run(tmp_path, world):
    assert go(tmp_path, world, to=GOOD).data["outcome"] == "upgraded"
    return go(tmp_path, World(world.path), to=None, rollback=True)


def _rollback_of_an_open_run(tmp_path, world):
    world.kill_at = "accept.before"
    with pytest.raises(Killed):
        go(tmp_path, world, to=GOOD)
    return go(tmp_path, World(world.path), to=None, rollback=True)


def _resume_of_an_interrupted_rollback(tmp_path, world):
    world.kill_at = "restore.mid"
    with pytest.raises(Killed):
        go(tmp_path, world, to=BAD)
    return go(tmp_path, World(world.path), to=None, resume=True)


@pytest.mark.parametrize("path", [_failed_acceptance, _failed_upgrade, _rollback_of_the_last_upgraded_run,
                                  _rollback_of_an_open_run, _resume_of_an_interrupted_rollback],
                         ids=lambda f: f.__name__.strip("_"))
def test_rollback_acceptance_does_not_run_the_operators_checks(tmp_path, world, path):
    # The operator's check asks for what the new version brings: the old one fails it,
    # and must still be accepted once restored.
    checks_fail_on(world, FROM)
    journal = path(tmp_path, world)
    assert journal.data["outcome"] == "rolled-back", journal.data
    assert ("rollback-acceptance", "done") in [(s["name"], s["status"]) for s in journal.data["steps"]]
    assert accepts(world)[-1] == (FROM, False)


def test_failed_upgrade_rolls_back(tmp_path, world):
    world.fail.add("upgrade.mid")
    journal = go(tmp_path, world, to=GOOD)
    assert journal.data["outcome"] == "rolled-back" and "upgrade" in journal.data["reason"]
    assert_end_state(world, journal, GOOD)


def test_failed_snapshot_ends_failed_with_the_host_untouched(tmp_path, world):
    world.fail.add("snapshot.before")
    journal = go(tmp_path, world, to=GOOD)
    assert journal.data["outcome"] == "failed" and "not changed" in journal.data["reason"]
    assert world.load()["upgrades"] == 0
    assert_end_state(world, journal, GOOD)


def test_failed_restore_keeps_the_run_open_until_resumed(tmp_path, world):
    world.fail.add("restore.before")
    with pytest.raises(UpgradeError, match="--resume"):
        go(tmp_path, world, to=BAD)
    with pytest.raises(JournalError, match="unfinished upgrade .*--resume"):
        go(tmp_path, World(world.path), to=GOOD)
    journal = go(tmp_path, World(world.path), to=None, resume=True)
    assert journal.data["outcome"] == "rolled-back"
    assert_end_state(world, journal, BAD)


def test_failed_retention_still_upgrades_with_a_warning(tmp_path, world):
    s = world.load()
    s["snapshots"]["old"] = {"tags": {"host": "scout", "run-id": "r", "time": "20000101T000000Z",
                                      "project": engine.PROJECT}, "version": FROM, "data": {}, "ready": True}
    world.save(s)
    world.fail.add("delete.before")
    journal = go(tmp_path, world, to=GOOD, keep=1)
    assert journal.data["outcome"] == "upgraded" and "retention" in journal.data["warning"]


def test_a_bad_version_fails_preflight_and_writes_nothing(tmp_path, world):
    with pytest.raises(ValueError):
        go(tmp_path, world, to="9.9.9")
    assert journals(tmp_path / "journal") == [] and world.load()["snapshots"] == {}


@pytest.mark.parametrize("to,n", KILL_AFTER)
def test_killed_after_any_journal_write_then_resumed(tmp_path, to, n):
    world = World(tmp_path / "world.json", create=True)
    writes = []

    def kill_after_nth(journal):
        writes.append(1)
        if len(writes) == n + 1:
            raise Killed(f"after write {n}")

    with pytest.raises(Killed):
        go(tmp_path, world, to=to, hook=kill_after_nth)
    [path] = journals(tmp_path / "journal")
    journal = Journal.load(path)
    if not journal.finished:  # (killed after the final write, there is nothing left to do)
        # A fresh process: a new world object, the same files.
        with pytest.raises(JournalError, match="unfinished upgrade .*--resume"):
            go(tmp_path, World(world.path), to=to)
        journal = go(tmp_path, World(world.path), to=None, resume=True)
    assert_end_state(world, journal, to)
    assert journal.data["outcome"] == ("upgraded" if to == GOOD else "rolled-back")
    assert len(world.load()["snapshots"]) == 1  # never a second snapshot of the same run


@pytest.mark.parametrize("to", [GOOD, BAD])
@pytest.mark.parametrize("point", OPERATION_POINTS)
@pytest.mark.parametrize("finish", ["resume", "rollback"])
def test_killed_inside_any_operation_then_finished(tmp_path, world, to, point, finish):
    if to == GOOD:  # give retention something to delete, so delete.before is reached
        s = world.load()
        s["snapshots"]["old"] = {"tags": {"host": "scout", "run-id": "r", "time": "20000101T000000Z",
                                          "project": engine.PROJECT}, "version": FROM, "data": {}, "ready": True}
        world.save(s)
    world.kill_at = point
    try:
        journal = go(tmp_path, world, to=to, keep=1)
    except Killed:
        journal = go(tmp_path, World(world.path), to=None, **{finish: True})
    else:
        assert point in UNREACHED[to], f"the run never reached {point}"
    assert_end_state(world, journal, to)
    if finish == "resume":
        assert journal.data["outcome"] == ("upgraded" if to == GOOD else "rolled-back")
    elif point not in UNREACHED[to]:
        assert journal.data["outcome"] in ("rolled-back", "failed")


def test_resume_of_an_interrupted_step_marks_it_and_runs_it_again(tmp_path, world):
    world.kill_at = "upgrade.mid"
    with pytest.raises(Killed):
        go(tmp_path, world, to=GOOD)
    journal = go(tmp_path, World(world.path), to=None, resume=True)
    names = [(s["name"], s["status"]) for s in journal.data["steps"]]
    assert ("upgrade", "interrupted") in names and names.count(("upgrade", "done")) == 1
    assert world.load()["upgrades"] == 2 and journal.data["outcome"] == "upgraded"


def test_rollback_of_the_last_upgraded_run(tmp_path, world):
    first = go(tmp_path, world, to=GOOD)
    assert first.data["outcome"] == "upgraded"
    journal = go(tmp_path, World(world.path), to=None, rollback=True)
    assert journal.data["outcome"] == "rolled-back" and journal.data["snapshot"] == first.data["snapshot"]
    assert_end_state(world, journal, GOOD)


def test_resume_with_nothing_to_resume_is_refused(tmp_path, world):
    with pytest.raises(JournalError, match="no unfinished upgrade"):
        go(tmp_path, world, to=None, resume=True)


def test_a_concurrent_run_is_refused_by_the_lock(tmp_path, world):
    with HostLock(tmp_path / "journal", "scout"):
        with pytest.raises(JournalError, match="another snapshot-upgrade of scout is running"):
            go(tmp_path, world, to=GOOD)
    assert world.load()["snapshots"] == {}


def test_expired_keeps_the_newest():
    snaps = [Snapshot(f"s{i}", "scout", f"r{i}", f"2026010{i}T000000Z") for i in range(5)]
    assert [s.id for s in expired(snaps, 2)] == ["s2", "s1", "s0"]
    assert expired(snaps[:2], 3) == []
    with pytest.raises(ValueError):
        expired(snaps, 0)


def test_write_atomic_never_leaves_a_torn_file(tmp_path, monkeypatch):
    target = tmp_path / "j.json"
    write_atomic(target, b"old")

    def boom(fd):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["j.json"]


def test_sigkill_in_the_middle_of_the_upgrade_then_resume(tmp_path):
    """A real process, killed with SIGKILL inside the upgrade step; --resume finishes it."""
    world = World(tmp_path / "world.json", create=True)
    marker = tmp_path / "upgrading"
    proc = subprocess.Popen([sys.executable, "-m", "tests.upgrade_fakes", str(world.path), str(tmp_path / "journal"),
                             GOOD], cwd=ROOT, env=dict(os.environ, FAKE_SLOW_UPGRADE=str(marker)))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached the upgrade"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    [path] = journals(tmp_path / "journal")
    killed = json.loads(path.read_text())
    assert killed["outcome"] is None and killed["steps"][-1] == {**killed["steps"][-1], "name": "upgrade",
                                                                   "status": "started"}
    assert world.load()["version"] == "half-installed"
    journal = go(tmp_path, World(world.path), to=None, resume=True)  # the dead run's lock is gone with it
    assert journal.data["outcome"] == "upgraded"
    assert_end_state(world, journal, GOOD)
