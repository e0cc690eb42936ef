"""Policy's per-request answers are kept between requests (who a client is, which
bootstrap windows are closed); kept answers must be the ones it would compute."""
from __future__ import annotations

import yaml

from agentctl_proxy import config as c
from agentctl_proxy.policy import Policy

NOW = 1000.0


def _cfg(tmp_path):
    rule = {"host": "pypi.org", "methods": ["GET"]}
    agents = [
        {"name": "scout", "sources": ["10.0.2.11/32"], "bootstrap": {"max_duration": "10s", "rules": [rule]}},
        {"name": "scribe", "sources": ["10.0.2.12/32", "fd00::12/128"],
         "bootstrap": {"max_duration": "20s", "rules": [rule]}},
        {"name": "quiet", "sources": ["10.0.3.0/24"]},
    ]
    for a in agents:
        a["transforms"] = [{"name": "allowlist", "config": {"rules": []}}]
    doc = {"proxy": {"tunnel_listen": "127.0.0.1:18080"},
           "tls": {"ca_cert": str(tmp_path / "ca.crt"), "ca_key": str(tmp_path / "ca.key")}, "agents": agents}
    return c.Config.model_validate(yaml.safe_load(yaml.safe_dump(doc)))


ADDRESSES = ["10.0.2.11", "10.0.2.12", "::ffff:10.0.2.12", "fd00::12", "fd00::12%eth0", "10.0.3.200",
             "10.0.2.13", "10.0.4.1", "not-an-address", "", "::ffff:10.0.2.11", "0x0a.0.2.11"]


def test_identify_answers_as_it_computes_on_every_call(tmp_path):
    policy = Policy(_cfg(tmp_path), now=NOW)
    first = {a: policy.identify(a) for a in ADDRESSES}
    again = {a: policy.identify(a) for a in ADDRESSES}  # from what it kept
    computed = {a: policy._identify(a) for a in ADDRESSES}
    assert first == again == computed
    assert {a: (i.name if i else None) for a, i in first.items()} == {
        "10.0.2.11": "scout", "10.0.2.12": "scribe", "::ffff:10.0.2.12": "scribe", "fd00::12": "scribe",
        "fd00::12%eth0": "scribe", "10.0.3.200": "quiet", "10.0.2.13": None, "10.0.4.1": None,
        "not-an-address": None, "": None, "::ffff:10.0.2.11": "scout", "0x0a.0.2.11": None}


def test_identify_keeps_a_bounded_number_of_addresses(tmp_path):
    policy = Policy(_cfg(tmp_path), now=NOW)
    for i in range(10_000):
        policy.identify(f"192.0.{i // 256 % 256}.{i % 256}")
    assert len(policy._who) <= 4096
    assert policy.identify("10.0.2.11").name == "scout"


def test_windows_close_at_their_deadlines_between_kept_answers(tmp_path):
    policy = Policy(_cfg(tmp_path), now=NOW)
    assert policy.closed_set(NOW) == frozenset()
    assert policy.closed_set(NOW + 9.9) == frozenset()  # kept: no deadline reached yet
    assert policy.closed_set(NOW + 10) == {"scout"}
    assert policy.closed_set(NOW + 19.9) == {"scout"}
    assert policy.closed_set(NOW + 20) == {"scout", "scribe"}
    assert policy.closed_set(NOW + 1e6) == {"scout", "scribe"}  # "quiet" has no window


def test_ready_closes_at_once_even_with_an_answer_kept(tmp_path):
    policy = Policy(_cfg(tmp_path), now=NOW)
    assert policy.closed_set(NOW + 1) == frozenset()
    policy.close_bootstrap("scribe")
    assert policy.closed_set(NOW + 2) == {"scribe"}
    assert policy.closed_set(NOW + 10) == {"scout", "scribe"}


def test_a_reload_keeps_what_was_closed(tmp_path):
    old = Policy(_cfg(tmp_path), now=NOW)
    old.close_bootstrap("scout")
    new = Policy(_cfg(tmp_path), now=NOW + 5)  # a reload re-reads the config later
    assert new.closed_set(NOW + 6) == frozenset()
    new.carry_state(old)
    assert new.closed_set(NOW + 6) == {"scout"}
    assert new.closed_set(NOW + 20) == {"scout", "scribe"}  # the older, earlier deadline kept
