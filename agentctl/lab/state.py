"""What the lab has made on this machine, written down as it is made.

Each process the lab starts is recorded the moment it starts, so `lab down` (and a
`lab up` after a crash) stops exactly the processes the lab started, by id. Keys, the
interception CA and the lab internet CA stay across `lab down`; hosts do not.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = Path(os.environ.get("AGENTCTL_LAB_STATE", "/var/lib/agentctl/lab"))


@dataclass
class LabState:
    stack: str = ""
    project_dir: str = ""
    image: str = ""
    # pid -> what it is ("nspawn proxy", "internet net-api"), plus its start time so a
    # recycled pid is never taken for ours.
    processes: dict[str, dict] = field(default_factory=dict)
    up_at: float | None = None
    # Every host converged and its service active at the end of the last `lab up`;
    # only then does a second `lab up` leave the lab as it is.
    converged: bool = False
    # The folders the lab package index (pypi.lab.test) serves: the versions there are
    # the ones a lab host can install (snapshot-upgrade's preflight reads them).
    wheel_dirs: list[str] = field(default_factory=list)
    # "container" (systemd-nspawn) or "vm" (QEMU): what `lab up --hosts` booted.
    hosts: str = "container"
    # The distro the hosts run and were rendered for (`lab up --distro`, else the stack's):
    # what verify judges them as.
    distro: str = ""


def path(state_dir: Path) -> Path:
    return state_dir / "state.json"


def load(state_dir: Path) -> LabState:
    p = path(state_dir)
    if not p.is_file():
        return LabState()
    data = json.loads(p.read_text())
    return LabState(**{k: v for k, v in data.items() if k in LabState.__dataclass_fields__})


def save(state_dir: Path, st: LabState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path(state_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=2))
    tmp.replace(path(state_dir))


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: the process's start time in clock ticks since boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_process(state_dir: Path, pid: int, what: str) -> None:
    st = load(state_dir)
    st.processes[str(pid)] = {"what": what, "start": start_time(pid)}
    save(state_dir, st)


def live_processes(st: LabState) -> dict[int, str]:
    """Recorded processes that still run and are still the process we started."""
    out = {}
    for pid, info in st.processes.items():
        if start_time(int(pid)) is not None and start_time(int(pid)) == info.get("start"):
            out[int(pid)] = info["what"]
    return out


def lab_mounts(state_dir: Path) -> list[str]:
    """Mount points under the state folder, deepest first (so nested ones go first)."""
    prefix = str(state_dir.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_all(state_dir: Path) -> list[str]:
    done = []
    for point in lab_mounts(state_dir):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
        done.append(point)
    return done
