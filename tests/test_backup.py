"""Local backups of an agent's state: the rendered script really runs (on a scratch
root), the exclude list really keeps credentials out, only a whole archive moves the
marker, and the watchdog checks backup age only where backups are on."""
from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from agentctl.render import BACKUP_DIR, BACKUP_MARKER, HERMES_HOME, render_hosts
from agentctl.stackfile import from_config

from .conftest import ROOT
from .test_render import _commands, _unit

LAB = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
SCRIPT, EXCLUDE = "/usr/local/sbin/agentctl-backup", "/etc/agentctl/backup-exclude.txt"
SERVICE, TIMER = "/etc/systemd/system/agentctl-backup.service", "/etc/systemd/system/agentctl-backup.timer"


def _deployment(keep: int = 3, max_age: int | None = 12):
    config = copy.deepcopy(LAB)
    scout = config["agentctl:agents"][0]
    scout["backups"] = {"enabled": True, "intervalHours": 6, "keep": keep}
    config["agentctl:agents"].append({**copy.deepcopy(scout), "name": "other", "backups": {"enabled": False}})
    if max_age:
        config["agentctl:watchdog"]["backupMaxAgeHours"] = max_age
    return from_config(config, "t")


def _files(d) -> dict[str, dict[str, str]]:
    return {h.name: {f["path"]: f["content"] for f in yaml.safe_load(h.user_data)["write_files"]}
            for h in render_hosts(d, "CA", stack="t")}


@pytest.fixture(scope="module")
def files():
    return _files(_deployment())


def test_backup_units_only_where_enabled(files):
    assert {SCRIPT, SERVICE, TIMER} <= set(files["scout"])
    assert not {SCRIPT, SERVICE, TIMER} & set(files["other"]) and not {SCRIPT, SERVICE, TIMER} & set(files["proxy"])
    enable = ["unit_on", "--now", "agentctl-backup.timer"]
    assert enable in _commands(files["scout"]["/usr/local/sbin/agentctl-converge"], "unit_on")
    assert enable not in _commands(files["other"]["/usr/local/sbin/agentctl-converge"], "unit_on")


def test_backup_units_parse_and_match_the_config(files, tmp_path):
    service, timer = _unit(files["scout"][SERVICE]), _unit(files["scout"][TIMER])
    assert service["Service"]["Type"] == "oneshot" and service["Service"]["ExecStart"] == SCRIPT
    assert service["Service"]["ProtectSystem"] == "strict" and service["Service"]["ProtectHome"] == "read-only"
    assert set(service["Service"]["ReadWritePaths"].split()) == {BACKUP_DIR, os.path.dirname(BACKUP_MARKER)}
    assert timer["Timer"]["OnUnitActiveSec"] == "6h" and timer["Install"]["WantedBy"] == "timers.target"
    (tmp_path / "s").write_text(files["scout"][SCRIPT])
    assert subprocess.run(["bash", "-n", str(tmp_path / "s")]).returncode == 0


STATE = {  # path under the host's root -> kept in the backup?
    "home/agentuser/notes.md": True,
    "home/agentuser/project/src/app.py": True,
    "home/agentuser/project/tokenizer.py": True,
    "home/agentuser/.env": False,
    "home/agentuser/project/.env": False,
    "home/agentuser/project/.env.local": False,
    "home/agentuser/.ssh/id_ed25519": False,
    "home/agentuser/certs/client.pem": False,
    "home/agentuser/.config/gh/hosts.yml": False,
    "home/agentuser/.git-credentials": False,
    f"{HERMES_HOME[1:]}/config.yaml": True,
    f"{HERMES_HOME[1:]}/memories/MEMORY.md": True,
    f"{HERMES_HOME[1:]}/sessions/s1.json": True,
    f"{HERMES_HOME[1:]}/.env": False,
    f"{HERMES_HOME[1:]}/auth.json": False,
    f"{HERMES_HOME[1:]}/anthropic_oauth.json": False,
    f"{HERMES_HOME[1:]}/gh_token.txt": False,
    "var/lib/agentctl-agent/state.db": True,
}


def _run_backup(files, tmp_path: Path, *, path_prefix: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    root = tmp_path / "root"
    for rel in STATE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"content of {rel}\n")
    (tmp_path / "exclude.txt").write_text(files["scout"][EXCLUDE])
    (tmp_path / "backup").write_text(files["scout"][SCRIPT])
    env = {"PATH": f"{path_prefix}/usr/bin:/bin", "AGENTCTL_BACKUP_ROOT": str(root),
           "AGENTCTL_BACKUP_DIR": str(tmp_path / "backups"), "AGENTCTL_BACKUP_MARKER": str(tmp_path / "last-backup"),
           "AGENTCTL_BACKUP_EXCLUDE": str(tmp_path / "exclude.txt")}
    return subprocess.run(["bash", str(tmp_path / "backup")], env=env, capture_output=True, text=True), env


def _archives(folder: Path) -> list[Path]:
    return sorted(folder.glob("agentctl-*.tar.zst"))


def test_backup_keeps_state_and_never_credentials(files, tmp_path):
    proc, _ = _run_backup(files, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (archive,) = _archives(tmp_path / "backups")
    listing = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True, check=True)
    members = {m.rstrip("/") for m in listing.stdout.splitlines()}
    assert {rel for rel, kept in STATE.items() if kept} <= members
    assert not {rel for rel, kept in STATE.items() if not kept} & members
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "last-backup").exists()


def test_backup_keeps_the_newest_n(files, tmp_path):
    keep = _deployment().agents[0].backups.keep
    names = []
    for _ in range(keep + 2):
        proc, _ = _run_backup(files, tmp_path)
        assert proc.returncode == 0, proc.stderr
        names.append(_archives(tmp_path / "backups")[-1].name)
    assert [p.name for p in _archives(tmp_path / "backups")] == names[-keep:]
    assert not list((tmp_path / "backups").glob(".partial-*"))


def test_failed_backup_leaves_marker_and_archives_alone(files, tmp_path):
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "zstd").write_text("#!/bin/sh\nexit 1\n")
    (broken / "zstd").chmod(0o755)
    proc, _ = _run_backup(files, tmp_path, path_prefix=f"{broken}:")
    assert proc.returncode != 0
    assert not (tmp_path / "last-backup").exists()
    assert not list((tmp_path / "backups").iterdir())


def _watchdog_problems(script: str, tmp_path: Path, marker_age_h: float | None) -> str:
    """Run a rendered watchdog once (agent healthy); return what it logged."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "logger").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/log\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    converged, marker = tmp_path / "converged", tmp_path / "last-backup"
    converged.touch()
    os.utime(converged, (time.time() - 48 * 3600,) * 2)  # converged two days ago
    if marker_age_h is not None:
        marker.touch()
        os.utime(marker, (time.time() - marker_age_h * 3600,) * 2)
    (tmp_path / "w").write_text(script)
    subprocess.run(["bash", str(tmp_path / "w")], check=True, env={
        "PATH": f"{bin_dir}:/usr/bin:/bin", "AGENTCTL_WATCHDOG_STATE": str(tmp_path / "state"),
        "AGENTCTL_BACKUP_MARKER": str(marker), "AGENTCTL_CONVERGED": str(converged)})
    return (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""


WATCHDOG = "/usr/local/sbin/agentctl-watchdog"


@pytest.mark.parametrize("host", ["other", "proxy"])
def test_watchdog_ignores_backup_age_where_backups_are_off(files, tmp_path, host):
    assert "backup" not in _watchdog_problems(files[host][WATCHDOG], tmp_path, marker_age_h=None)


@pytest.mark.parametrize("age,fails", [(None, True), (13, True), (1, False)])
def test_watchdog_checks_backup_age_where_backups_are_on(files, tmp_path, age, fails):
    logged = _watchdog_problems(files["scout"][WATCHDOG], tmp_path, marker_age_h=age)
    assert ("last backup is older than 12h" in logged) == fails, logged
