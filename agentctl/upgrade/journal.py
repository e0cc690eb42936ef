"""The per-run journal of `agentctl snapshot-upgrade`, and the per-host lock.

One JSON file per run under the stack's local state folder,
`<project>/.agentctl/<stack>/upgrades/<host>/<run-id>.json`. It is rewritten whole
before and after every step, atomically (a temporary file in the same folder,
fsync, rename, fsync of the folder), so a run killed at any instant (SIGKILL, power)
leaves either the previous or the next version of the file, never a torn one. A
journal without an `outcome` is unfinished: the host may be mid-change, and only
`--resume` (or `--rollback`) may touch it next.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from agentctl.errors import AgentctlError

OUTCOMES = ("upgraded", "rolled-back", "failed")


class JournalError(AgentctlError):
    """The journal or the lock refuses the run: exit 2, nothing touched."""

    exit_code = 2


def host_dir(project_dir: Path, stack: str, host: str) -> Path:
    return Path(project_dir) / ".agentctl" / stack / "upgrades" / host


def new_run_id() -> str:
    # Sortable by time (retention and "the latest run" read it), unique within a second.
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


class Journal:
    """The state of one run. `data` is plain JSON; `save()` is the only writer."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data = path, data
        # Tests hook here to "kill" the run right after a given write.
        self.after_save: Callable[["Journal"], None] | None = None

    @classmethod
    def create(cls, folder: Path, **fields: Any) -> "Journal":
        run_id = fields.pop("run_id", None) or new_run_id()
        data = {"run_id": run_id, "created": _now(), "outcome": None, "reason": None, "snapshot": None,
                "phase": None, "steps": [], **fields}
        journal = cls(folder / f"{run_id}.json", data)
        journal.save()
        return journal

    @classmethod
    def load(cls, path: Path) -> "Journal":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise JournalError(f"{path}: cannot read the upgrade journal ({exc}); move it aside only once the "
                               "host's state is known") from None
        if not isinstance(data, dict) or "run_id" not in data or "steps" not in data:
            raise JournalError(f"{path}: is not an upgrade journal")
        return cls(path, data)

    @property
    def finished(self) -> bool:
        return self.data.get("outcome") in OUTCOMES

    def save(self) -> None:
        write_atomic(self.path, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())
        if self.after_save is not None:
            self.after_save(self)

    def last_step(self) -> dict[str, Any] | None:
        return self.data["steps"][-1] if self.data["steps"] else None


def journals(folder: Path) -> list[Path]:
    """This host's journals, oldest first (run ids sort by time)."""
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def unfinished(folder: Path) -> Journal | None:
    for path in reversed(journals(folder)):
        journal = Journal.load(path)
        if not journal.finished:
            return journal
    return None


class HostLock:
    """An exclusive fcntl lock on the host's journal folder, held for the whole run.

    The kernel drops it when the process dies (SIGKILL included), so a killed run
    never blocks `--resume`; a live one always blocks a second run."""

    def __init__(self, folder: Path, host: str):
        self.folder, self.host, self.fd = folder, host, -1

    def __enter__(self) -> "HostLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise JournalError(f"another snapshot-upgrade of {self.host} is running "
                                   f"(lock {self.folder / '.lock'})") from None
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
