"""The audit file: one JSON line per decision, never a secret value.

Each line is a single os.write on an O_APPEND descriptor, so a line is either in the
kernel (and survives a kill of the process) or not written at all, and concurrent
writers never interleave. A failed or short write raises OSError: the caller treats
that as "not recorded" and refuses the request (fail closed).

No fsync by default: a write that returned is in the page cache and survives
SIGKILL, OOM kills and crashes of the proxy; only a kernel crash or power loss can
lose the last few seconds, the same trade journald makes. fsync=True closes that
gap at the cost of one disk flush per line.

Rotation is noticed by the inode changing under the path (logrotate's rename +
create), or forced with reopen() on SIGHUP/SIGUSR1.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from datetime import datetime, timezone

# DESIGN.md's keys plus `event`: "decision" (written before the proxy acts on it) or
# "complete" (an allowed exchange ended; carries the final status and duration).
KEYS = (
    "time", "event", "remote_addr", "agent", "mode", "host", "sni", "method", "path", "action",
    "rule", "rejected_by", "status_code", "duration_ms", "request_transforms",
)


class AuditLog:
    def __init__(self, path: str | None, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None
        self._ino: int | None = None
        self._last_check = 0.0
        if path:
            self._open()

    def _open(self) -> None:
        assert self.path
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        self._ino = os.fstat(fd).st_ino
        if old is not None:
            os.close(old)

    def reopen(self) -> None:
        if self.path:
            self._open()

    def _rotated(self) -> bool:
        now = time.monotonic()
        if now - self._last_check < 0.5:  # a stat per line is cheap, but not free
            return False
        self._last_check = now
        try:
            return os.stat(self.path).st_ino != self._ino  # type: ignore[arg-type]
        except FileNotFoundError:
            return True

    def write(self, **fields: object) -> dict:
        record = {k: fields.get(k) for k in KEYS}
        record["time"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        if self._fd is None:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            return record
        if self._rotated():
            self._open()
        if os.write(self._fd, line) != len(line):  # only on a full disk; the tail is torn
            raise OSError(errno.ENOSPC, "short write to the audit file")
        if self.fsync:
            os.fsync(self._fd)
        return record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
