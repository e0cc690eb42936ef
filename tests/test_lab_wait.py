"""`lab up` waits through a host's first-boot reboot: whatever the host shows while it
goes down and comes back, the wait goes on until cloud-init is done with no reboot pending.

A container host is read from outside (its init's /proc root), so nothing of the wait is
left inside to hold up systemd-shutdown: here the roots are folders and the moments are
scripted (the real sequence is a race); tests/test_lab_e2e_ubuntu.py boots the real thing
and checks that no reboot waited for a leftover process.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from agentctl.lab import hosts
from agentctl.render import REBOOT_REQUIRED

NS = "agentctl-h-scout"
DONE = json.dumps({"v1": {"datasource": "DataSourceNoCloud", "errors": []}})


def _moment(pid: int | None, *, result: str | None = None, pending: bool = False, comm: str = "systemd") -> dict:
    return {"pid": pid, "result": result, "pending": pending, "comm": comm}


@pytest.fixture
def container(tmp_path, monkeypatch):
    """Play moments to wait_cloud_init: each poll sees one; its sleep moves to the next.
    The last moment stays. Returns the list of moments polled."""
    seen: list[dict] = []

    def play(*moments: dict) -> list[dict]:
        script = list(moments)

        def now() -> dict:
            return script[0]

        def leader(ns):
            assert ns == NS
            return now()["pid"]

        def proc_root(pid):
            root = tmp_path / f"moment{len(seen)}-{pid}"
            if not root.exists():
                m = now()
                for path, there in ((hosts.RESULT, m["result"] is not None), (REBOOT_REQUIRED, m["pending"])):
                    if there:
                        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                        (root / path.lstrip("/")).write_text(m["result"] if path == hosts.RESULT else "")
                root.mkdir(parents=True, exist_ok=True)
            return root

        def sleep(_):
            seen.append(script[0])
            if len(script) > 1:
                script.pop(0)

        def no_process(*a, **kw):
            raise AssertionError(f"the wait started a process in the host: {a}")

        monkeypatch.setattr(hosts.vm, "is_vm", lambda ns: False)  # whatever lab this machine runs now
        monkeypatch.setattr(hosts, "leader", leader)
        monkeypatch.setattr(hosts, "proc_root", proc_root)
        monkeypatch.setattr(hosts, "_comm", lambda pid: now()["comm"])
        monkeypatch.setattr(hosts.time, "sleep", sleep)
        monkeypatch.setattr(hosts, "run_in", no_process)
        monkeypatch.setattr(hosts.subprocess, "run", no_process)
        return seen
    return play


def test_a_host_going_down_for_its_reboot_is_waited_for(container):
    seen = container(
        _moment(101, pending=True),                        # first boot, converge asked for a reboot
        _moment(101, result=DONE, pending=True),           # cloud-init done; the reboot not taken yet
        _moment(101, result=DONE, pending=True, comm="systemd-shutdow"),
        _moment(None),                                     # between boots
        _moment(202),                                      # second boot, cloud-init running
        _moment(202, result=DONE),
    )
    assert hosts.wait_cloud_init(NS, timeout=60) == (True, "done")
    assert len(seen) == 5  # returned at the sixth moment, none skipped


def test_a_reboot_that_never_ends_says_so(container):
    """CI once saw a host done with its reboot pending until the wait ran out, and the
    line said only "recoverable_errors: {}". It now says where the host stopped."""
    container(_moment(101, result=DONE, pending=True))
    ok, where = hosts.wait_cloud_init(NS, timeout=0.05)
    assert not ok and where == "not done after 0 s (cloud-init done, the reboot converge asked for not finished)"


def test_a_host_that_reboots_while_read_is_read_again(container, monkeypatch):
    # its init changed between the two looks: what was read may be the old boot's
    pids = iter([101, 202, 202, 202])
    container(_moment(101, result=DONE))
    monkeypatch.setattr(hosts, "leader", lambda ns: next(pids))
    assert hosts.wait_cloud_init(NS, timeout=60) == (True, "done")


@pytest.mark.parametrize("result,said", [
    (json.dumps({"v1": {"errors": ["('scripts_user', RuntimeError('runparts: 1 failed'))"]}}),
     "cloud-init error: ('scripts_user', RuntimeError('runparts: 1 failed'))"),
    ('{"v1": ', "cloud-init error: /run/cloud-init/result.json is not cloud-init's result: '{\"v1\": '"),
])
def test_cloud_init_failing_ends_the_wait(container, result, said):
    container(_moment(None), _moment(101, result=result))
    assert hosts.wait_cloud_init(NS, timeout=60) == (False, said)


def test_a_vm_is_asked_once_per_poll_with_one_cat(monkeypatch):
    answers = iter([subprocess.CompletedProcess([], 1, "", ""),          # the guest agent not up yet
                    subprocess.CompletedProcess([], 0, "pending\n", ""),  # converging
                    subprocess.CompletedProcess([], 0, "pending\n" + DONE, ""),
                    subprocess.CompletedProcess([], 0, "none\n" + DONE, "")])
    asked = []

    def run_in(ns, *cmd, **kw):
        asked.append(cmd)
        return next(answers)
    monkeypatch.setattr(hosts.vm, "is_vm", lambda ns: True)
    monkeypatch.setattr(hosts, "run_in", run_in)
    monkeypatch.setattr(hosts.time, "sleep", lambda s: None)
    assert hosts.wait_cloud_init(NS, timeout=60) == (True, "done")
    assert len(asked) == 4 and all(c[:2] == ("sh", "-c") and "cloud-init status" not in c[2] for c in asked)


def test_the_console_tail_is_what_a_terminal_shows(tmp_path):
    console = hosts.host_dir(tmp_path, "scout") / "console.log"
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_bytes(b"early\r\n" * 30 + b"[\x1b[0;32m  OK  \x1b[0m] Reached target\r\n\r\nlast words\r\n")
    assert hosts.console_tail(tmp_path, "scout", lines=3) == ["early", "[  OK  ] Reached target", "last words"]

