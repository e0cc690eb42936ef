"""The lab: a snapshot is a copy of the host's overlay upper layer, taken with the host stopped.

A lab host's root is an overlay of the read-only lab image and the host's own upper
layer (agentctl/lab/hosts.py: `hosts/NAME/{upper,work,root}`); everything the host ever
wrote, the agent's data included, is in `upper`. With the container stopped, `cp -a`
of `upper` is a consistent snapshot: it keeps ownership, modes, the overlay's whiteouts
(0/0 character devices) and its `trusted.overlay.*` xattrs (cp -a preserves xattrs;
needs root, as the lab does). Snapshots live in `<state>/snapshots/NAME/<run-id>/`
with `tags.json` beside the copy; a copy is made under a `.tmp` name and renamed when
complete, so a killed copy is never listed and is redone on --resume.

Restore: stop, unmount the overlay, put the snapshot's copy in place of `upper`, empty
`work`, mount again over the same image, start. How a host stops and starts is passed in
(`stop`, `start`): the lab's own are `lab_stop` and `lab_start` below.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from agentctl.errors import AgentctlError
from agentctl.upgrade.engine import PROJECT, Snapshot

HostAction = Callable[[str], None]


class LabBackendError(AgentctlError):
    exit_code = 1


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabBackendError(f"lab: {' '.join(cmd[:2])} failed: {proc.stderr.strip()[:300]}")


class LabBackend:
    def __init__(self, state_dir: Path, image: Path, stack: str, stop: HostAction, start: HostAction):
        self.state_dir, self.image, self.stack, self.stop, self.start = Path(state_dir), Path(image), stack, stop, start

    def _host(self, host: str) -> Path:
        return self.state_dir / "hosts" / host

    def _snapshots(self, host: str) -> Path:
        return self.state_dir / "snapshots" / host

    def snapshot(self, host: str, tags: dict[str, str]) -> str:
        upper = self._host(host) / "upper"
        if not upper.is_dir():
            raise LabBackendError(f"lab: host {host} has no upper layer at {upper} (agentctl lab up)")
        final = self._snapshots(host) / tags["run-id"]
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)  # a copy a killed run left half done
        tmp.mkdir(parents=True)
        self.stop(host)
        try:
            _run("cp", "-a", str(upper), str(tmp / "upper"))
        finally:
            self.start(host)
        (tmp / "tags.json").write_text(json.dumps({**tags, "project": PROJECT, "stack": self.stack}))
        tmp.rename(final)
        return f"{host}/{tags['run-id']}"

    def wait(self, snapshot_id: str) -> None:
        if not (self.state_dir / "snapshots" / snapshot_id / "tags.json").is_file():
            raise LabBackendError(f"lab: snapshot {snapshot_id} is not complete")

    def restore(self, host: str, snapshot_id: str) -> None:
        snap = self.state_dir / "snapshots" / snapshot_id
        if snapshot_id.split("/")[0] != host or not (snap / "tags.json").is_file():
            raise LabBackendError(f"lab: no complete snapshot {snapshot_id} of {host}")
        base = self._host(host)
        self.stop(host)
        if subprocess.run(["mountpoint", "-q", str(base / "root")]).returncode == 0:
            _run("umount", str(base / "root"))
        incoming = base / "upper.restoring"
        if incoming.exists():
            shutil.rmtree(incoming)
        _run("cp", "-a", str(snap / "upper"), str(incoming))
        if (base / "upper").exists():
            shutil.rmtree(base / "upper")
        incoming.rename(base / "upper")
        shutil.rmtree(base / "work", ignore_errors=True)
        (base / "work").mkdir(mode=0o755)
        opts = f"lowerdir={self.image},upperdir={base / 'upper'},workdir={base / 'work'}"
        _run("mount", "-t", "overlay", "overlay", "-o", opts, str(base / "root"))
        self.start(host)

    def list_snapshots(self, host: str) -> list[Snapshot]:
        out = []
        for tags_file in sorted(self._snapshots(host).glob("*/tags.json")):
            tags = json.loads(tags_file.read_text())
            if (tags.get("project"), tags.get("stack"), tags.get("host")) == (PROJECT, self.stack, host):
                out.append(Snapshot(f"{host}/{tags_file.parent.name}", host, tags["run-id"], tags["time"]))
        return out

    def delete(self, snapshot_id: str) -> None:
        snap = self.state_dir / "snapshots" / snapshot_id
        tags = json.loads((snap / "tags.json").read_text())
        if (tags.get("project"), tags.get("stack")) != (PROJECT, self.stack):
            raise LabBackendError(f"lab: refusing to delete {snap}: not a {PROJECT} snapshot of stack {self.stack}")
        shutil.rmtree(snap)


def lab_stop(state_dir: Path) -> HostAction:
    """Stop a lab host cleanly (SIGTERM to its supervised nspawn), and nothing of it left
    running: a restore must never find the old host still up on the old layer."""
    from agentctl.lab import hosts, state, topology

    def stop(host: str) -> None:
        for pid, what in state.live_processes(state.load(state_dir)).items():
            if what == f"host {host}":
                hosts.stop_host(pid, topology.host_netns(host))
    return stop


def lab_start(state_dir: Path, timeout: float = 240) -> HostAction:
    """Boot a lab host on its (mounted) root again, as `lab up` does, and wait for it."""
    from agentctl.lab import hosts, topology

    def start(host: str) -> None:
        ns = topology.host_netns(host)
        hosts.wait_leader(ns, hosts.boot(state_dir, host, ns))  # this boot's, not a lingering one
        ok, text = hosts.wait_cloud_init(ns, timeout)
        if not ok:
            raise LabBackendError(f"lab: host {host} did not come back: {text.splitlines()[-1] if text else ''}")
    return start
