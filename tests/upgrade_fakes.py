"""A fake host + snapshot backend for the engine tests, its state in one JSON file so
a run in a subprocess can be SIGKILLed and resumed from another process.

`kill_at` names a point inside an operation, reached after its side effect and
before it returns: the run "dies" there (Killed is a BaseException, like the end
of the process, so nothing in the engine catches it).

The operator's `--check` commands are modelled by `check_fails_on`: the versions they
fail on (none by default; a check of a feature the new version brings fails on the old
one). `accept` runs them only when asked (`checks`), and every call is kept in
`accepts` (the version it judged and `checks`), so a test sees what the engine asked."""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

from agentctl.upgrade.engine import PROJECT, Snapshot

FROM, GOOD, BAD = "1.0.0", "1.1.0", "1.2.0"
DATA = {"notes.txt": "written by the agent before the upgrade"}


class Killed(BaseException):
    pass


class World:
    def __init__(self, path: Path, create: bool = False):
        self.path = path
        self.kill_at: str | None = None
        self.fail: set[str] = set()  # operations that raise an ordinary error
        if create:
            self.save({"version": FROM, "data": dict(DATA), "snapshots": {}, "stack_version": FROM,
                       "counter": 0, "upgrades": 0, "check_fails_on": [], "accepts": []})

    def load(self) -> dict:
        return json.loads(self.path.read_text())

    def save(self, s: dict) -> None:
        self.path.write_text(json.dumps(s))

    def point(self, name: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"{name} failed on purpose")
        if self.kill_at == name:
            raise Killed(name)

    # SnapshotBackend
    def snapshot(self, host: str, tags: dict[str, str]) -> str:
        self.point("snapshot.before")
        s = self.load()
        s["counter"] += 1
        snap_id = f"snap-{s['counter']}"
        s["snapshots"][snap_id] = {"tags": {**tags, "project": PROJECT}, "version": s["version"],
                                   "data": copy.deepcopy(s["data"]), "ready": False}
        self.save(s)
        self.point("snapshot.mid")
        return snap_id

    def wait(self, snap_id: str) -> None:
        self.point("wait.before")
        s = self.load()
        s["snapshots"][snap_id]["ready"] = True
        self.save(s)

    def restore(self, host: str, snap_id: str) -> None:
        self.point("restore.before")
        s = self.load()
        snap = s["snapshots"][snap_id]
        assert snap["ready"], "restored from a snapshot that was never complete"
        s["version"] = "half-restored"
        self.save(s)
        self.point("restore.mid")
        s["version"], s["data"] = snap["version"], copy.deepcopy(snap["data"])
        self.save(s)

    def delete(self, snap_id: str) -> None:
        self.point("delete.before")
        s = self.load()
        del s["snapshots"][snap_id]
        self.save(s)

    def list_snapshots(self, host: str) -> list[Snapshot]:
        return [Snapshot(i, v["tags"]["host"], v["tags"]["run-id"], v["tags"]["time"])
                for i, v in self.load()["snapshots"].items()
                if v["tags"].get("project") == PROJECT and v["tags"].get("host") == host]

    # Runtime
    def preflight(self, version: str) -> str:
        if version not in (FROM, GOOD, BAD):
            raise ValueError(f"no version {version}")
        return self.load()["version"]

    def upgrade(self, version: str) -> None:
        self.point("upgrade.before")
        s = self.load()
        s["version"], s["upgrades"] = "half-installed", s["upgrades"] + 1
        s["data"]["upgrade.log"] = "the new version rewrote the agent's state"
        self.save(s)
        if os.environ.get("FAKE_SLOW_UPGRADE"):
            Path(os.environ["FAKE_SLOW_UPGRADE"]).write_text("upgrading")
            time.sleep(120)
        self.point("upgrade.mid")
        s["version"] = version
        self.save(s)

    def accept(self, checks: bool = True) -> list[str]:
        self.point("accept.before")
        s = self.load()
        version = s["version"]
        s["accepts"].append({"version": version, "checks": checks})
        self.save(s)
        failures = [] if version in (FROM, GOOD) else [f"health check fails on {version}"]
        if checks and version in s["check_fails_on"]:
            failures.append(f"operator check fails on {version}")
        return failures

    # Recorder
    def record(self, version: str) -> None:
        self.point("record.before")
        s = self.load()
        s["stack_version"] = version
        self.save(s)
        self.point("record.mid")


def main() -> None:
    """python -m tests.upgrade_fakes STATE_FILE JOURNAL_DIR VERSION: one run, no resume."""
    from agentctl.upgrade import engine
    state, folder, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    world = World(state)
    engine.run(folder, stack="lab", host="scout", to=version, keep=3, backend=world, runtime=world, recorder=world)


if __name__ == "__main__":
    main()
