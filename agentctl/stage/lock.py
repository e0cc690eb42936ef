"""One stage run per stack at a time: an exclusive fcntl lock on a file in the
stack's local state, held for the whole command (two runs on one stack would
destroy each other's hosts). The holder's pid is written in the file for the message."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from agentctl.errors import AgentctlError


class StackBusy(AgentctlError):
    exit_code = 2


@contextmanager
def stack_lock(path: Path, stack: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StackBusy(f"stage: stack {stack} is in use by another stage run (pid {holder}, lock {path}); "
                        "wait for it, or let its CI job finish") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
