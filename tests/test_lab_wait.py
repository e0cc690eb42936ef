"""`lab up` waits through a host's first-boot reboot: whatever the host answers while it
goes down and comes back, the wait goes on until cloud-init is done with no reboot pending.

The answers are scripted here (the real sequence is a race that the Ubuntu e2e test hit once
in CI: cloud-init said done, then the host was already shutting down when asked about the
reboot); tests/test_lab_e2e_ubuntu.py boots the real thing.
"""
from __future__ import annotations

import subprocess

import pytest

from agentctl.lab import hosts

DONE = "status: done\ndetail: DataSourceNoCloud"


def _ok(stdout: str, rc: int = 0) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], rc, stdout, "")


def _script(monkeypatch, answers):
    """run_in answers from the list, in order; an exception in it is raised."""
    asked = []

    def run_in(ns, *cmd, **kw):
        asked.append("status" if "cloud-init status" in " ".join(cmd) else "reboot?")
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(hosts, "run_in", run_in)
    monkeypatch.setattr(hosts.time, "sleep", lambda s: None)
    return asked


def test_a_host_going_down_for_its_reboot_is_waited_for(monkeypatch):
    asked = _script(monkeypatch, [
        _ok(DONE), hosts.LabHostError("lab host in agentctl-h-proxy is shutting down"),  # the race
        hosts.LabHostError("lab host in agentctl-h-proxy is not running"),
        subprocess.TimeoutExpired("cloud-init", 15),
        _ok("status: running"),
        _ok(DONE), _ok("pending\n"),  # converge asked for its reboot, not yet taken
        _ok(DONE), _ok("none\n"),
    ])
    assert hosts.wait_cloud_init("agentctl-h-proxy", timeout=60) == (True, DONE)
    assert asked == ["status", "reboot?", "status", "status", "status", "status", "reboot?",
                     "status", "reboot?"]


def test_a_failed_reboot_question_is_not_taken_for_no_reboot(monkeypatch):
    # nsenter failing as the host goes away returns non-zero with nothing said: not "none"
    asked = _script(monkeypatch, [_ok(DONE), _ok("", rc=1), _ok(DONE), _ok("none\n")])
    assert hosts.wait_cloud_init("agentctl-h-scout", timeout=60) == (True, DONE)
    assert len(asked) == 4  # asked again after the failed answer


@pytest.mark.parametrize("status", ["status: error", "status: disabled"])
def test_cloud_init_failing_ends_the_wait(monkeypatch, status):
    _script(monkeypatch, [hosts.LabHostError("not running"), _ok(status)])
    assert hosts.wait_cloud_init("agentctl-h-scout", timeout=60) == (False, status)
