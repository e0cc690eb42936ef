"""Bootstrap windows survive restarts: when each one opened, and which are closed.

Without this, restarting the proxy (a crash, an upgrade, a reboot) would reopen the
install-time grants of every agent that had already reported ready. The ledger is a
small JSON file written atomically; if it cannot be read, every window counts as
closed (fail closed) and the operator is told why.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class BootstrapLedger:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.opened_at: dict[str, float] = {}
        self.closed: set[str] = set()
        self.unreadable = False
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.opened_at = {str(k): float(v) for k, v in data["opened_at"].items()}
                self.closed = {str(n) for n in data["closed"]}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.error("bootstrap state %s is unreadable (%s): every bootstrap window stays closed", self.path, e)
                self.unreadable = True

    def remaining(self, agent: str, max_duration: float, now: float | None = None) -> float:
        """Seconds left in the agent's window, opening it now if it never was."""
        now = time.time() if now is None else now
        if self.unreadable or agent in self.closed:
            return 0.0
        opened = self.opened_at.setdefault(agent, now)
        return max(0.0, opened + max_duration - now)

    def close(self, agents: set[str]) -> None:
        if not agents - self.closed:
            return
        self.closed |= agents
        self.save()

    def save(self) -> None:
        if self.path is None or self.unreadable:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".bootstrap.")
            with os.fdopen(fd, "w") as fh:
                json.dump({"opened_at": self.opened_at, "closed": sorted(self.closed)}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("could not record bootstrap state in %s: %s", self.path, e)
