"""Upgrade grants: time-boxed egress an operator opens for one agent while its runtime
is upgraded (`agentctl snapshot-upgrade`), and closes when the step ends.

Only root on the proxy host writes them (`agentctl-proxy grant open|close`, reached
over the operator's admin SSH path); the proxy only reads the file, on start and on
every reload (SIGHUP, which `grant` sends through systemd). Nothing an agent sends
reaches this file: the proxy's own HTTP endpoints (/v1/ready) only ever close
bootstrap windows. A grant applies until it is closed or its deadline (wall clock,
so a proxy restart keeps it) passes, whichever is first; its rules are audited as
`AGENT/upgrade[i]`. An unreadable file grants nothing (fail closed).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GRANTS_PATH = Path("/etc/agentctl-proxy/upgrade-grants.json")
MAX_MINUTES = 120  # an upgrade step that needs longer is a stuck one


@dataclass(frozen=True)
class UpgradeGrant:
    agent: str
    run_id: str
    deadline: float  # epoch seconds
    rules: tuple[dict, ...]  # proxy-format rules (host, methods, paths, ports)
    closed: bool = False

    def open_at(self, now: float) -> bool:
        return not self.closed and now < self.deadline


def read(path: Path = GRANTS_PATH) -> list[UpgradeGrant]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [UpgradeGrant(str(g["agent"]), str(g["run_id"]), float(g["deadline"]),
                             tuple(dict(r) for r in g["rules"]), bool(g.get("closed", False)))
                for g in data["grants"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.error("upgrade grants %s are unreadable (%s): no upgrade grant applies", path, e)
        return []


def _write(grants: list[UpgradeGrant], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upgrade-grants.")
    with os.fdopen(fd, "w") as fh:
        json.dump({"grants": [{"agent": g.agent, "run_id": g.run_id, "deadline": g.deadline,
                               "rules": list(g.rules), "closed": g.closed} for g in grants]}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o644)  # the proxy (its own user) reads it; only root writes the folder
    os.replace(tmp, path)


def open_grant(agent: str, run_id: str, rules: list[dict], minutes: float, path: Path = GRANTS_PATH,
               now: float | None = None) -> UpgradeGrant:
    """Open (or, for the same run, re-open after a crash) the agent's one upgrade grant.
    Every other grant of the agent is closed: one upgrade at a time."""
    now = time.time() if now is None else now
    if not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"--minutes: {minutes} is out of range; expected 1 to {MAX_MINUTES}")
    grant = UpgradeGrant(agent, run_id, now + minutes * 60, tuple(rules))
    kept = [g for g in read(path) if g.agent != agent and g.open_at(now)]
    _write([*kept, grant], path)
    return grant


def close_grant(agent: str, path: Path = GRANTS_PATH, now: float | None = None) -> int:
    """Close every grant of `agent`; returns how many were open. Expired and closed
    grants of other agents are dropped from the file."""
    now = time.time() if now is None else now
    grants = read(path)
    was_open = sum(1 for g in grants if g.agent == agent and g.open_at(now))
    _write([g for g in grants if g.agent != agent and g.open_at(now)], path)
    return was_open
