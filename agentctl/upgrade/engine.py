"""The snapshot-upgrade engine: a state machine over a journal, independent of any cloud.

    preflight -> snapshot -> upgrade -> acceptance -> record -> retention   (upgraded)
                                 \\-> rollback -> rollback-acceptance [-> record]   (rolled-back | failed)

Preflight reads only; the journal is created once it passes, so a refused run leaves
nothing behind. Every later step is written to the journal before it starts and after
it ends (journal.py). Each step is idempotent, so `--resume` simply runs the journal's
current phase again when a run died inside it:

- snapshot: looks for a snapshot already tagged with this run id before making one;
- upgrade: installs the pinned version again (the install is idempotent);
- acceptance, rollback (restore from the same snapshot), record, retention: repeatable.

The invariant the tests prove for a kill at every step boundary and inside every
step: a run ends either with the new version accepted, or with the old one restored
from the snapshot (or never touched), and never claims an outcome it did not reach.
When the rollback itself cannot complete, the journal stays unfinished and the host
stays locked to `--resume`/`--rollback`: an operator must look.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from agentctl.errors import AgentctlError
from agentctl.upgrade.journal import HostLock, Journal, JournalError, journals, unfinished

PROJECT = "agentctl-snapshot-upgrade"  # the value of the project tag/label on every snapshot we make
DEFAULT_KEEP = 3


@dataclass(frozen=True)
class Snapshot:
    id: str
    host: str
    run_id: str
    created: str  # UTC, "%Y%m%dT%H%M%SZ": sorts by time


class SnapshotBackend(Protocol):
    """What a cloud (or the lab) must do. Every snapshot carries `tags` (the engine's
    names; a backend maps them to its own tag/label syntax) plus the project tag, and
    list_snapshots returns only snapshots that carry the project tag, this backend's
    stack and `host`: retention can never see, let alone delete, anything else."""

    def snapshot(self, host: str, tags: dict[str, str]) -> str: ...
    def wait(self, snapshot_id: str) -> None: ...
    def restore(self, host: str, snapshot_id: str) -> None: ...
    def delete(self, snapshot_id: str) -> None: ...
    def list_snapshots(self, host: str) -> list[Snapshot]: ...


class Runtime(Protocol):
    """The agent runtime on the host (over SSH as admin in real use)."""

    def preflight(self, version: str) -> str: ...  # the installed version; raises on bad input
    def upgrade(self, version: str) -> None: ...
    # What failed; empty when the host is accepted. `checks`: the operator's --check
    # commands too; they gate the new version, so the restored old one is judged without.
    def accept(self, checks: bool = True) -> list[str]: ...


class Recorder(Protocol):
    def record(self, version: str) -> None: ...  # the stack file's runtime version


class UpgradeError(AgentctlError):
    """A run that cannot finish on its own: the journal is kept for --resume."""

    exit_code = 1

    def __init__(self, message: str, journal: "Journal | None" = None):
        super().__init__(message)
        self.journal = journal


def snapshot_tags(stack: str, host: str, from_version: str, to_version: str, run_id: str) -> dict[str, str]:
    return {"stack": stack, "host": host, "from": from_version, "to": to_version,
            "time": run_id.split("-", 1)[0], "run-id": run_id}


def expired(snapshots: list[Snapshot], keep: int) -> list[Snapshot]:
    """The snapshots retention deletes: all but the newest `keep` (keep >= 1)."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    return sorted(snapshots, key=lambda s: (s.created, s.run_id), reverse=True)[keep:]


Events = Callable[[str, str, str], None]  # (step, "started" | "done" | "failed", detail)


class Engine:
    def __init__(self, journal: Journal, backend: SnapshotBackend, runtime: Runtime, recorder: Recorder,
                 events: Events | None = None):
        self.j, self.backend, self.runtime, self.recorder = journal, backend, runtime, recorder
        self.events = events or (lambda step, status, detail: None)

    @property
    def d(self) -> dict[str, Any]:
        return self.j.data

    def run(self) -> Journal:
        while not self.j.finished:
            phase = self.d["phase"]
            self._step(phase, getattr(self, "_" + phase.replace("-", "_")))
        return self.j

    # --- bookkeeping ---------------------------------------------------------------

    def _step(self, name: str, action: Callable[[dict[str, Any]], str | None]) -> None:
        last = self.j.last_step()
        if last is not None and last["status"] == "started":
            last["status"] = "interrupted"  # the run died inside it; it is run again
        record = {"name": name, "status": "started", "started": time.time(), "ended": None, "detail": ""}
        self.d["steps"].append(record)
        self.j.save()
        self.events(name, "started", "")
        try:
            next_phase = action(record)
        except Exception as exc:  # a backend or SSH failure: the step's policy decides
            record.update(status="failed", ended=time.time(), detail=f"{type(exc).__name__}: {exc}"[:500])
            self.events(name, "failed", record["detail"])
            self._on_error(name, record["detail"])
            return
        if record["status"] == "started":
            record["status"] = "done"
        record["ended"] = time.time()
        if next_phase is None:
            self.d["phase"] = None
        else:
            self.d["phase"] = next_phase
        self.j.save()
        self.events(name, record["status"], record["detail"])

    def _finish(self, outcome: str, reason: str | None = None) -> None:
        self.d["outcome"], self.d["reason"] = outcome, reason

    def _on_error(self, name: str, detail: str) -> None:
        if name == "snapshot":
            self._finish("failed", f"snapshot failed ({detail}); the host was not changed")
            self.d["phase"] = None
        elif name in ("upgrade", "acceptance"):
            self.d["failure"] = f"{name}: {detail}"
            self.d["phase"] = "rollback"
        elif name == "retention":
            self.d["warning"] = f"retention: {detail}"
            self._finish("upgraded")
            self.d["phase"] = None
        else:  # rollback, rollback-acceptance, record: never guess; keep the run open
            self.j.save()
            raise UpgradeError(f"{self.d['host']}: {name} failed ({detail}); the journal {self.j.path} is kept: "
                               "fix the cause and run again with --resume", self.j)
        self.j.save()

    # --- the steps: each returns the next phase ----------------------------------------

    def _snapshot(self, record: dict[str, Any]) -> str:
        host, run_id = self.d["host"], self.d["run_id"]
        mine = [s for s in self.backend.list_snapshots(host) if s.run_id == run_id]
        if mine:  # made before a kill, not yet in the journal
            snap_id = mine[0].id
            record["detail"] = f"{snap_id} (found, made before the run was interrupted)"
        else:
            snap_id = self.backend.snapshot(host, snapshot_tags(self.d["stack"], host, self.d["from"],
                                                                self.d["to"], run_id))
            record["detail"] = snap_id
        self.d["snapshot"] = snap_id
        self.j.save()  # known before the wait, so a kill in the wait resumes on it
        self.backend.wait(snap_id)
        return "upgrade"

    def _upgrade(self, record: dict[str, Any]) -> str:
        self.runtime.upgrade(self.d["to"])
        return "acceptance"

    def _acceptance(self, record: dict[str, Any]) -> str:
        failures = self.runtime.accept()
        self.d["acceptance"] = failures
        if failures:
            record["status"] = "failed"
            record["detail"] = "; ".join(failures)[:500]
            self.d["failure"] = f"acceptance: {record['detail']}"
            return "rollback"
        return "record"

    def _rollback(self, record: dict[str, Any]) -> str:
        self.backend.restore(self.d["host"], self.d["snapshot"])
        record["detail"] = f"restored {self.d['snapshot']}"
        return "rollback-acceptance"

    def _rollback_acceptance(self, record: dict[str, Any]) -> str | None:
        failures = self.runtime.accept(checks=False)
        self.d["rollback_acceptance"] = failures
        old = self.d["from"]
        if failures:
            record["status"] = "failed"
            record["detail"] = "; ".join(failures)[:500]
        if self.d.get("recorded") not in (None, old) or any(s["name"] == "record" for s in self.d["steps"]):
            return "record"  # the stack file was (or may have been) moved to the new version: move it back
        self._conclude_rollback()
        return None

    def _conclude_rollback(self) -> None:
        why = self.d.get("failure") or "rollback requested"
        if self.d.get("rollback_acceptance"):
            self._finish("failed", f"{why}; restored to {self.d['from']}, but acceptance fails there too: "
                         + "; ".join(self.d["rollback_acceptance"]))
        else:
            self._finish("rolled-back", f"{why}; restored to {self.d['from']} and accepted")

    def _record(self, record: dict[str, Any]) -> str | None:
        rolling_back = any(s["name"] == "rollback" and s["status"] == "done" for s in self.d["steps"])
        version = self.d["from"] if rolling_back else self.d["to"]
        self.recorder.record(version)
        self.d["recorded"] = version
        record["detail"] = f"runtime version {version}"
        if rolling_back:
            self._conclude_rollback()
            return None
        return "retention"

    def _retention(self, record: dict[str, Any]) -> None:
        doomed = [s for s in expired(self.backend.list_snapshots(self.d["host"]), self.d["keep"])
                  if s.id != self.d["snapshot"]]  # never this run's own, whatever the clocks say
        for snap in doomed:
            self.backend.delete(snap.id)
        self.d["deleted"] = [s.id for s in doomed]
        record["detail"] = f"deleted {len(doomed)}" + (f": {', '.join(s.id for s in doomed)}" if doomed else "")
        self._finish("upgraded")
        return None


# --- entry points (the CLI calls these with real backends; the tests with fakes) ------

def run(folder: Path, *, stack: str, host: str, to: str | None, keep: int, backend: SnapshotBackend,
        runtime: Runtime, recorder: Recorder, resume: bool = False, rollback: bool = False,
        events: Events | None = None, hook: Callable[[Journal], None] | None = None) -> Journal:
    """Start, resume or roll back a run on `host` under its lock.

    `hook` is called after every journal write (tests kill the run there)."""
    with HostLock(folder, host):
        open_run = unfinished(folder)
        if open_run is not None:
            if not (resume or rollback):
                raise JournalError(f"{host} has an unfinished upgrade ({open_run.path}): "
                                   "run again with --resume (or --rollback)")
            open_run.after_save = hook
            if rollback:
                _force_rollback(open_run)
            return Engine(open_run, backend, runtime, recorder, events).run()
        if resume:
            raise JournalError(f"{host}: no unfinished upgrade to resume in {folder}")
        if rollback:
            journal = _rollback_last(folder, stack, host, keep, runtime)
        else:
            if not to:
                raise JournalError("--to: is required to start an upgrade")
            started = time.time()
            events and events("preflight", "started", "")
            from_version = runtime.preflight(to)  # raises: nothing written yet
            preflight = {"name": "preflight", "status": "done", "started": started, "ended": time.time(),
                         "detail": f"installed {from_version}"}
            if from_version == to:
                raise JournalError(f"--to: {host} already runs {to}")
            journal = Journal.create(folder, stack=stack, host=host, mode="upgrade", keep=keep,
                                     phase="snapshot", steps=[preflight], **{"from": from_version, "to": to})
            events and events("preflight", "done", preflight["detail"])
        journal.after_save = hook
        if hook:
            hook(journal)
        return Engine(journal, backend, runtime, recorder, events).run()


def _force_rollback(journal: Journal) -> None:
    d = journal.data
    if d["phase"] in ("rollback", "rollback-acceptance") or (d["phase"] == "record" and d.get("failure")):
        return  # already rolling back
    if d["phase"] == "snapshot":
        # The upgrade never started: the host still runs the old version.
        d.update(outcome="failed", reason="rolled back before the upgrade started; the host was not changed",
                 phase=None)
    else:
        d["failure"] = d.get("failure") or "rollback requested"
        d["phase"] = "rollback" if d.get("snapshot") else d["phase"]
    journal.save()


def _rollback_last(folder: Path, stack: str, host: str, keep: int, runtime: Runtime) -> Journal:
    """--rollback with no open run: undo the latest upgraded run from its snapshot."""
    done = [Journal.load(p) for p in journals(folder)]
    upgraded = [j for j in done if j.data.get("outcome") == "upgraded"]
    if not upgraded:
        raise JournalError(f"--rollback: {host} has no upgraded run to roll back in {folder}")
    last = upgraded[-1].data
    started = time.time()
    current = runtime.preflight(last["from"])
    preflight = {"name": "preflight", "status": "done", "started": started, "ended": time.time(),
                 "detail": f"installed {current}; rolling back run {last['run_id']}"}
    return Journal.create(folder, stack=stack, host=host, mode="rollback", keep=keep, phase="rollback",
                          snapshot=last["snapshot"], recorded=last["to"], failure="rollback requested",
                          steps=[preflight], **{"from": last["from"], "to": last["to"]})
