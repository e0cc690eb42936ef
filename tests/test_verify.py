"""`agentctl verify` input handling; the suites themselves run against the lab."""
from __future__ import annotations

import subprocess
import sys

import pytest

from agentctl.errors import ConfigError
from agentctl.verify import parse_hosts, suites

from .conftest import ROOT

NAMES = {"proxy": "proxy", "scout": "agent"}


def test_parse_hosts_maps_names_to_roles():
    assert parse_hosts(["scout=paramiko://admin@10.77.2.11", "proxy=ssh://admin@10.77.1.10:2222"], NAMES) == [
        ("scout", "agent", "paramiko://admin@10.77.2.11"), ("proxy", "proxy", "ssh://admin@10.77.1.10:2222")]


@pytest.mark.parametrize("raw,words", [
    ("scout", "is not NAME=SPEC"),
    ("ghost=paramiko://admin@10.0.0.1", "'ghost' is not a host of this stack"),
    ("scout=docker://abc", "is not a testinfra SSH host spec"),
    ("scout=paramiko://admin@10.0.0.1;rm", "is not a testinfra SSH host spec"),
])
def test_bad_host_spec(raw, words):
    with pytest.raises(ConfigError, match=words):
        parse_hosts([raw], NAMES)


def test_every_role_has_its_suites():
    for role in ("agent", "proxy"):
        assert all(p.is_file() for p in suites(role))


def test_cli_bad_spec_exits_2_before_connecting():
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "verify", "--stack", "lab", "--host", "nobody=x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--host: nobody=x:" in proc.stderr


def test_cli_unknown_distro_exits_2_before_connecting():
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "verify", "--stack", "lab",
                           "--host", "scout=paramiko://admin@10.77.2.11", "--distro", "centos-9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--distro: centos-9: is not a distro agentctl renders for; expected ubuntu-24.04 or debian-12" in proc.stderr


def test_a_distro_override_is_what_the_suites_judge_by():
    """The lab's `lab up --distro ubuntu-24.04` renders a Debian stack for Ubuntu: its
    suites must expect Ubuntu's values (security origins, module lists), not the stack's."""
    from agentctl import hardening
    from agentctl.stackfile import load
    d = load(ROOT, "lab", distro="ubuntu-24.04")
    assert load(ROOT, "lab").distro == "debian-12" and d.distro == "ubuntu-24.04"
    assert hardening.UPGRADE_ORIGINS[d.distro][0].startswith("origin=${distro_id},archive=")
