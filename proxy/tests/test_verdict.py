"""verdict.AuditTrail: a decision is on disk or it is not an allow; completions follow allows only."""

from mitmproxy.test import tflow

from agentctl_proxy.audit import AuditLog
from agentctl_proxy.verdict import AuditTrail, Verdict


def test_an_unwritable_decision_is_reported_not_raised():
    trail = AuditTrail(runtime=None, audit=AuditLog("/dev/full"))
    v = Verdict("scout", "tunnel", action="allow")
    assert trail._record(v, "127.0.0.11") is False
    assert not v.recorded and not v.forwarded


def test_complete_line_only_after_a_recorded_allow(tmp_path):
    import json

    path = tmp_path / "a.jsonl"
    trail = AuditTrail(runtime=None, audit=AuditLog(str(path)))
    flow = tflow.tflow()
    deny = Verdict("scout", "tunnel", action="deny", path="/d")
    trail._record(deny, "x")
    trail._complete(flow, deny)
    allow = Verdict("scout", "tunnel", action="allow", path="/a")
    trail._complete(flow, allow)  # not recorded yet: nothing
    trail._record(allow, "x")
    trail._record(allow, "x")  # once
    allow.status_code = 200
    trail._complete(flow, allow)
    trail._complete(flow, allow)  # once
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["path"], r["event"], r["status_code"]) for r in lines] == [
        ("/d", "decision", None), ("/a", "decision", None), ("/a", "complete", 200)]
