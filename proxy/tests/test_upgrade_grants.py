"""Upgrade grants: opened and closed only by root's `agentctl-proxy grant`, applied by
the policy under their own name until closed or past their deadline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from agentctl_proxy import config as c
from agentctl_proxy import upgrade_grants as ug
from agentctl_proxy.policy import Policy

RULE = {"host": "pypi.lab.test", "methods": ["GET"], "paths": ["/simple/*"]}


def _cfg(tmp_path):
    agents = [{"name": n, "sources": [ip], "transforms": [{"name": "allowlist", "config": {"rules": []}}]}
              for n, ip in (("scout", "10.0.2.11/32"), ("scribe", "10.0.2.12/32"))]
    doc = {"proxy": {"tunnel_listen": "127.0.0.1:18080"},
           "tls": {"ca_cert": str(tmp_path / "ca.crt"), "ca_key": str(tmp_path / "ca.key")}, "agents": agents}
    return c.Config.model_validate(yaml.safe_load(yaml.safe_dump(doc)))


def _decide(policy, agent, path="/simple/agentctl-lab-agent/", now=None):
    ident = policy.identities[agent]
    return ident.allow.decide("pypi.lab.test", None, 443, True, "GET", path, False, policy.closed_set(now))


def test_an_open_grant_allows_only_its_agent_under_its_own_name(tmp_path):
    path = tmp_path / "grants.json"
    ug.open_grant("scout", "run1", [RULE], minutes=5, path=path)
    policy = Policy(_cfg(tmp_path), now=100.0, upgrade_grants=ug.read(path))
    d = _decide(policy, "scout", now=101.0)
    assert d.grant is not None and d.grant.label == "scout/upgrade[0]"
    assert _decide(policy, "scribe", now=101.0).grant is None
    assert _decide(policy, "scout", path="/admin", now=101.0).grant is None


def test_a_grant_closes_at_its_deadline_without_a_reload(tmp_path):
    path = tmp_path / "grants.json"
    ug.open_grant("scout", "run1", [RULE], minutes=1, path=path)
    policy = Policy(_cfg(tmp_path), now=100.0, upgrade_grants=ug.read(path))
    assert _decide(policy, "scout", now=159.0).grant is not None
    assert _decide(policy, "scout", now=161.0).grant is None


def test_closed_and_expired_grants_apply_to_nobody(tmp_path):
    path = tmp_path / "grants.json"
    ug.open_grant("scout", "run1", [RULE], minutes=5, path=path)
    assert ug.close_grant("scout", path=path) == 1
    assert not Policy(_cfg(tmp_path), upgrade_grants=ug.read(path)).identities["scout"].allow.grants
    ug.open_grant("scout", "run2", [RULE], minutes=1, path=path, now=time.time() - 120)
    assert not any(g.label.startswith("scout/upgrade") for g in
                   Policy(_cfg(tmp_path), upgrade_grants=ug.read(path)).identities["scout"].allow.grants)


def test_an_unreadable_grants_file_grants_nothing(tmp_path):
    path = tmp_path / "grants.json"
    path.write_text("{not json")
    assert ug.read(path) == []


def test_grant_refuses_anyone_but_root():
    if os.geteuid() == 0:
        pytest.skip("runs as root here")
    proc = subprocess.run([sys.executable, "-c", "from agentctl_proxy.cli import main; main()", "grant", "close", "--agent", "scout",
                           "--no-reload"], capture_output=True, text=True)
    assert proc.returncode == 2 and "must run as root" in proc.stderr


def test_grant_rejects_a_bad_rule_in_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("grant runs as root only")
    proc = subprocess.run([sys.executable, "-c", "from agentctl_proxy.cli import main; main()", "grant", "open", "--agent", "scout",
                           "--run-id", "r", "--rule", json.dumps({"host": "x"}), "--no-reload"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("--rule[0]: methods is missing; a grant names its host, methods and paths"), proc.stderr


def test_grant_names_the_key_of_a_bad_rule():
    if os.geteuid() != 0:
        pytest.skip("grant runs as root only")
    rule = {"host": "pypi.org", "methods": ["FETCH"], "paths": ["/simple/*"]}
    proc = subprocess.run([sys.executable, "-c", "from agentctl_proxy.cli import main; main()", "grant", "open", "--agent", "scout",
                           "--run-id", "r", "--rule", json.dumps(rule), "--no-reload"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("--rule[0].methods: ") and "FETCH" in proc.stderr, proc.stderr
    assert "pydantic" not in proc.stderr and "Traceback" not in proc.stderr
