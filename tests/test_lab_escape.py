"""Escape plan and verdicts (pure): each vector is judged with outside evidence."""
import hashlib
from pathlib import Path

import pytest

from agentctl.lab import escape, topology
from agentctl.stackfile import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def plan():
    d = load(ROOT, "lab")
    return {a.id: a for a in escape.attempts(d, d.agents[0], "n0nce")}


def test_plan_covers_every_vector_of_issue_5(plan):
    vectors = {a.vector for a in plan.values()}
    assert vectors >= {"port scan", "ssh to proxy", "https by name, no proxy", "https by IP, no proxy",
                       "rogue DNS resolver", "DNS over HTTPS by IP", "metadata address", "IPv6",
                       "allowlisted request", "request outside the allowlist"}


def test_scan_expects_only_the_proxy_listeners_open(plan):
    scan = plan["scan"].probe
    assert scan["expected_open"] == ["10.77.1.10:53", "10.77.1.10:80", "10.77.1.10:443", "10.77.1.10:8080"]
    assert "10.77.2.11" not in scan["targets"]  # not itself
    assert "198.18.0.66" in scan["targets"] and "10.77.1.10" in scan["targets"]


def test_allowlisted_attempt_uses_a_granted_path_and_the_secret(plan):
    a = plan["allowed"]
    assert a.probe["url"] == "https://api.lab.test/repos/acme/app/escape-n0nce" and a.probe["via_proxy"]
    assert a.secret == "/etc/agentctl-proxy/secrets/scout/lab-token"


def test_no_answer_is_held_unless_reached_or_seen_upstream(plan):
    a = plan["ip-evil"]
    assert escape.judge(a, {"reached": False, "status": 0}, [], [], {}).ok
    assert not escape.judge(a, {"reached": True, "status": 200}, [], [], {}).ok
    seen = [{"path": a.marker, "client": "10.77.2.11"}]
    assert not escape.judge(a, {"reached": False, "status": 0}, seen, [], {}).ok


def test_refused_allows_a_403_but_not_a_200(plan):
    a = plan["imds-proxy"]
    assert escape.judge(a, {"reached": True, "status": 403}, [], [], {}).ok
    assert not escape.judge(a, {"reached": True, "status": 200}, [], [], {}).ok


def test_rogue_dns_is_judged_by_the_rogue_servers_log_too(plan):
    a = plan["dns-udp"]
    assert not escape.judge(a, {"reached": False}, [{"kind": "dns", "name": a.marker}], [], {}).ok


def test_allowed_needs_the_injected_credential_upstream(plan):
    a = plan["allowed"]
    token = {a.secret: "s3cret"}
    good = [{"path": a.marker, "authorization_sha256": hashlib.sha256(b"Bearer s3cret").hexdigest()}]
    assert escape.judge(a, {"status": 200}, good, [], token).ok
    assert not escape.judge(a, {"status": 200}, [{"path": a.marker, "authorization_sha256": None}], [], token).ok
    assert not escape.judge(a, {"status": 403}, good, [], token).ok


def test_denied_needs_a_403_and_a_deny_line_in_the_audit(plan):
    a = plan["denied"]
    audit = [{"action": "deny", "path": a.marker, "rejected_by": "no rule allows this path"}]
    assert escape.judge(a, {"status": 403}, [], audit, {}).ok
    assert not escape.judge(a, {"status": 403}, [], [], {}).ok
    assert not escape.judge(a, {"status": 403}, [{"path": a.marker}], audit, {}).ok


def test_streaming_needs_spread_out_events(plan):
    a = plan["stream"]
    assert escape.judge(a, {"status": 200, "events": [0.1, 0.3, 0.5, 0.7]}, [], [], {}).ok
    assert not escape.judge(a, {"status": 200, "events": [0.7, 0.7, 0.7, 0.7]}, [], [], {}).ok


@pytest.fixture(scope="module")
def hermes_plan():
    d = load(ROOT, "lab-hermes")
    return {a.id: a for a in escape.attempts(d, d.agents[0], "n0nce")}


def test_probes_never_aim_at_an_apt_mirror():
    """deb.lab.test is an apt mirror (every host may GET anything there): aimed at it,
    the name and denied probes would report an escape or a missing deny that is policy.
    Without an api.* name the first upstream name is the mirror."""
    d = load(ROOT, "lab-hermes")
    records = [r for r in d.proxy.dns_records if r.name != "api.lab.test"]
    d = d.model_copy(update={"proxy": d.proxy.model_copy(update={"dns_records": records})})
    assert sorted(next(s for s in topology.internet_servers(d) if s.role == "upstream").names)[0] == "deb.lab.test"
    plan = {a.id: a for a in escape.attempts(d, d.agents[0], "n0nce")}
    assert plan["name-api"].probe["url"].startswith("https://pypi.lab.test/")
    assert plan["denied"].probe["url"].startswith("https://pypi.lab.test/")


def test_allowed_expects_the_secret_injected_on_that_host_not_the_agents_first(hermes_plan):
    """The Hermes agent's first secret is the model key (x-api-key on api.anthropic.com);
    the upstream of the allowed probe must see the one the proxy injects there."""
    a = hermes_plan["allowed"]
    assert a.secret == "/etc/agentctl-proxy/secrets/hermes/lab-token"
    token = {a.secret: "s3cret"}
    bearer = [{"path": a.marker, "authorization_sha256": hashlib.sha256(b"Bearer s3cret").hexdigest()}]
    bare = [{"path": a.marker, "authorization_sha256": hashlib.sha256(b"s3cret").hexdigest()}]
    assert escape.judge(a, {"status": 200}, bearer, [], token).ok
    assert not escape.judge(a, {"status": 200}, bare, [], token).ok
