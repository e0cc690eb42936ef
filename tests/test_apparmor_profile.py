"""The agent's AppArmor profile as rendered: the real apparmor_parser (Debian's, as on the
hosts) compiles it for a generic agent and for Hermes, its writable folders are the
unit's, and converge loads it before the unit that names it starts. What it refuses on a
running kernel is judged on the VM tier (roles/agent/verify_agent.py)."""
from __future__ import annotations

import re
import subprocess

import pytest

from agentctl import hermes
from agentctl.render import AGENT_APPARMOR_PROFILE, HERMES_CONFIG

from .test_render import _unit

PROFILE_PATH = f"/etc/apparmor.d/{AGENT_APPARMOR_PROFILE}"


@pytest.fixture(params=["lab", "lab-hermes"])
def agent(request, hosts):
    """The stack's agent host, as the session's render parsed it (tests/conftest.py)."""
    return next(h for (stack, _), h in hosts.items() if stack == request.param and h.rendered.role == "agent")


def _compile(profile: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / AGENT_APPARMOR_PROFILE
    path.write_text(profile)
    # -Q: compile only (this machine's kernel need not have AppArmor); -K: no cache
    return subprocess.run(["apparmor_parser", "-Q", "-K", str(path)], capture_output=True, text=True)


def test_the_profile_compiles_with_apparmor_parser(agent, tmp_path):
    proc = _compile(agent.file(PROFILE_PATH), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr


def test_the_parser_would_refuse_a_broken_profile(agent, tmp_path):
    """The control for the test above: apparmor_parser does judge what it is given."""
    profile = agent.file(PROFILE_PATH)
    line = profile[:profile.index("deny capability,")].count("\n") + 1
    proc = _compile(profile.replace("deny capability,", "deny capabilty,"), tmp_path)
    assert proc.returncode != 0 and "AppArmor parser error" in proc.stderr and f"at line {line}:" in proc.stderr, \
        proc.stderr


def _rules(profile: str) -> dict[str, str]:
    """path -> permissions, for the allow rules of the profile (a rule may end in a comment)."""
    return {m[1]: m[2] for m in re.finditer(r"^\s+(/\S+) ([rwlkmix]+),(?:\s+#.*)?$", profile, re.M)}


def test_the_agent_writes_where_its_unit_lets_it_and_nowhere_else(agent):
    unit = _unit(agent.file("/etc/systemd/system/agentctl-agent.service"))["Service"]
    writable = {p for p, perms in _rules(agent.file(PROFILE_PATH)).items() if "w" in perms}
    folders = {p.removesuffix("/{,**}") for p in writable}
    expected = {*unit["ReadWritePaths"].split(), f"/var/lib/{unit['StateDirectory']}",
                f"/var/log/{unit['LogsDirectory']}", "/tmp", "/var/tmp", "/dev/shm"}
    assert folders == expected | {"/dev/pts/*", "/dev/ptmx", "/dev/tty"}  # and its terminals


def test_the_guardrails_are_denied_writes(agent):
    profile = agent.file(PROFILE_PATH)
    assert f"  deny {HERMES_CONFIG} wl,\n" in profile
    for path in hermes.root_paths():
        assert f"  deny {path}{{,/**}} wl,\n" in profile


def test_the_unit_names_the_profile_and_converge_loads_it_first(agent):
    unit = _unit(agent.file("/etc/systemd/system/agentctl-agent.service"))["Service"]
    assert unit["AppArmorProfile"] == AGENT_APPARMOR_PROFILE  # no "-": an unloaded profile stops the start
    converge = agent.file("/usr/local/sbin/agentctl-converge")
    load_at = converge.index(f"apparmor_parser --replace --write-cache {PROFILE_PATH}")
    assert load_at < converge.index("unit_on agentctl-agent.service")
    assert load_at < converge.index("systemctl start agentctl-agent.service")
