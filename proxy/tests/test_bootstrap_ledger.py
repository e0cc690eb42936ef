"""Bootstrap windows are remembered across restarts: closed stays closed, and a
restart does not give a window more time."""
from __future__ import annotations

import yaml

from agentctl_proxy import config as c
from agentctl_proxy.bootstrap_ledger import BootstrapLedger
from agentctl_proxy.policy import Policy


def _cfg(tmp_path, state: str | None):
    doc = {
        "proxy": {"tunnel_listen": "127.0.0.1:18080", **({"state_path": state} if state else {})},
        "tls": {"ca_cert": str(tmp_path / "ca.crt"), "ca_key": str(tmp_path / "ca.key")},
        "agents": [{"name": "scout", "sources": ["10.0.2.11/32"],
                    "transforms": [{"name": "allowlist", "config": {"rules": []}}],
                    "bootstrap": {"max_duration": "30m", "rules": [{"host": "pypi.org", "methods": ["GET"]}]}}],
    }
    return c.Config.model_validate(yaml.safe_load(yaml.safe_dump(doc)))


def test_closed_window_stays_closed_after_restart(tmp_path):
    state = str(tmp_path / "state.json")
    first = Policy(_cfg(tmp_path, state), ledger=BootstrapLedger(state))
    assert "scout" not in first.closed_set()
    first.close_bootstrap("scout")
    restarted = Policy(_cfg(tmp_path, state), ledger=BootstrapLedger(state))
    assert "scout" in restarted.closed_set()


def test_without_a_ledger_a_restart_would_reopen(tmp_path):
    """What the ledger guards against, shown: memory-only state forgets."""
    first = Policy(_cfg(tmp_path, None))
    first.close_bootstrap("scout")
    assert "scout" not in Policy(_cfg(tmp_path, None)).closed_set()


def test_restart_does_not_extend_the_window(tmp_path):
    ledger = BootstrapLedger(str(tmp_path / "state.json"))
    assert ledger.remaining("scout", 1800, now=1000.0) == 1800
    ledger.save()
    again = BootstrapLedger(str(tmp_path / "state.json"))
    assert again.remaining("scout", 1800, now=2000.0) == 800
    assert again.remaining("scout", 1800, now=5000.0) == 0


def test_unreadable_ledger_closes_every_window(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    policy = Policy(_cfg(tmp_path, str(path)), ledger=BootstrapLedger(str(path)))
    assert "scout" in policy.closed_set()
    assert path.read_text() == "{not json"  # left for the operator to look at
