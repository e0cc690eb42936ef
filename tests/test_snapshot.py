"""Snapshots of the agent's working folder (agentctl-snapshot): what delivers the
"file edits can be rolled back" promise, since Hermes' own checkpoints do nothing under
`hermes gateway` (docs/hermes.md, "Checkpoints"). The rendered script really runs, as
root over a scratch folder owned by an unprivileged user (as on the host)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from agentctl.render import SNAPSHOT_INTERVAL, render_hosts
from agentctl.stackfile import load

from .conftest import ROOT
from .test_render import _commands, _unit

SCRIPT = "/usr/local/sbin/agentctl-snapshot"
AGENT_UID = AGENT_GID = 65534


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    host = next(h for h in render_hosts(load(ROOT, "example-hcloud"), "CA", stack="example-hcloud")
                if h.name == "scout")
    return {f["path"]: f["content"] for f in yaml.safe_load(host.user_data)["write_files"]}


def test_snapshots_run_on_a_timer_on_every_agent(files):
    timer = _unit(files["/etc/systemd/system/agentctl-snapshot.timer"])
    service = _unit(files["/etc/systemd/system/agentctl-snapshot.service"])
    assert timer["Timer"]["OnUnitActiveSec"] == SNAPSHOT_INTERVAL
    assert service["Service"]["ExecStart"] == f"{SCRIPT} take"
    assert ["unit_on", "--now", "agentctl-snapshot.timer"] in \
        _commands(files["/usr/local/sbin/agentctl-converge"], "unit_on")


class Host:
    def __init__(self, tmp: Path, script: str) -> None:
        self.tree, self.repo, self.script = tmp / "home", tmp / "snapshots.git", tmp / "agentctl-snapshot"
        os.chmod(tmp, 0o755)
        self.tree.mkdir()
        os.chown(self.tree, AGENT_UID, AGENT_GID)
        self.script.write_text(script)
        self.env = {**os.environ, "AGENTCTL_SNAPSHOT_REPO": str(self.repo), "AGENTCTL_SNAPSHOT_TREE": str(self.tree),
                    "AGENTCTL_SNAPSHOT_OWNER": "nobody"}

    def snap(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.script), *args], capture_output=True, text=True, env=self.env)

    def agent(self, script: str) -> None:
        subprocess.run(["setpriv", f"--reuid={AGENT_UID}", f"--regid={AGENT_GID}", "--clear-groups", "--",
                        "sh", "-c", script], cwd=self.tree, check=True)


@pytest.fixture
def host(files):
    if os.geteuid() != 0:
        pytest.skip("needs root: the script runs as root over a folder of another user")
    work = Path(tempfile.mkdtemp(prefix="agentctl-snapshot-"))  # pytest's tmp_path is 0700: not for nobody
    yield Host(work, files[SCRIPT])
    shutil.rmtree(work, ignore_errors=True)


def test_an_edit_is_rolled_back_as_the_agent_user(host):
    host.agent("mkdir -p src && printf 'v1\\n' > src/app.py && printf 'keep\\n' > notes.md")
    first = host.snap("take")
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.split()[-1]
    # the agent edits, and hides everything from git as far as it can
    host.agent("printf 'v2\\n' > src/app.py && printf '*\\n' > .gitignore && "
               "printf '* filter=evil\\n' > .gitattributes")
    second = host.snap("take")
    second_id = second.stdout.split()[-1]
    assert second.returncode == 0 and second_id != first_id, second.stderr
    assert "src/app.py" in host.snap("diff", first_id).stdout
    # nothing changed (the timer's take got there first): no new snapshot, and the id of
    # the one that holds the tree, for the operator to restore later
    assert host.snap("take").stdout == f"agentctl-snapshot: unchanged since {second_id}\n"
    assert len(host.snap("list").stdout.splitlines()) == 2

    restored = host.snap("restore", first_id, "src")
    assert restored.returncode == 0, restored.stderr
    app = host.tree / "src" / "app.py"
    assert app.read_text() == "v1\n" and (app.stat().st_uid, app.stat().st_gid) == (AGENT_UID, AGENT_GID)
    assert (host.tree / "notes.md").read_text() == "keep\n"
    # the history is root's: the agent can neither read nor rewrite it
    assert host.repo.stat().st_uid == 0 and host.repo.stat().st_mode & 0o077 == 0


def test_a_restore_through_an_agents_symlink_writes_nothing_of_roots(host):
    victim = host.tree.parent / "root-only"
    victim.write_text("root's\n")
    os.chmod(victim, 0o644)
    host.agent("printf 'v1\\n' > f")
    snap = host.snap("take").stdout.split()[-1]
    host.agent(f"rm f && ln -s {victim} f")
    restored = host.snap("restore", snap, "f")
    assert restored.returncode == 0, restored.stderr  # tar, as the agent, replaced the link
    assert victim.read_text() == "root's\n"
    assert not (host.tree / "f").is_symlink() and (host.tree / "f").read_text() == "v1\n"


def test_restore_of_a_path_never_snapshotted_fails(host):
    host.agent("printf 'x\\n' > f")
    snap = host.snap("take").stdout.split()[-1]
    missing = host.snap("restore", snap, "nope")
    assert missing.returncode != 0 and "nope" in missing.stderr


def test_takes_at_the_same_time_all_succeed(host):
    """The timer's take and an operator's meet: each waits for the other (git's
    index.lock would fail one of them)."""
    host.agent("for i in $(seq 200); do printf '%s\\n' $i > f$i; done")
    procs = [subprocess.Popen(["bash", str(host.script), "take"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=host.env) for _ in range(6)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    assert len(host.snap("list").stdout.splitlines()) == 1
