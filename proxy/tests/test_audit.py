"""Audit file: whole lines survive SIGKILL, rotation is followed, keys are fixed."""

import json
import os
import signal
import subprocess
import sys
import time

from agentctl_proxy.audit import KEYS, AuditLog

WRITER = """
import sys
from agentctl_proxy.audit import AuditLog
a = AuditLog(sys.argv[1])
i = 0
while True:
    a.write(agent="scout", host="h", path=f"/{i}", action="allow")
    i += 1
    if i == 200:
        print("ready", flush=True)
"""


def test_lines_survive_sigkill_whole(tmp_path):
    path = tmp_path / "a.jsonl"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends on a line boundary: no torn line
    recs = [json.loads(x) for x in lines[:-1]]
    assert len(recs) >= 200 and [r["path"] for r in recs] == [f"/{i}" for i in range(len(recs))]


def test_follows_rotation_and_reopen(tmp_path):
    path = tmp_path / "a.jsonl"
    a = AuditLog(str(path))
    a.write(path="/1")
    os.rename(path, tmp_path / "a.jsonl.1")
    a._last_check = 0  # the stat check is rate-limited to twice a second
    time.sleep(0.01)
    a.write(path="/2")
    assert json.loads(path.read_text())["path"] == "/2"
    os.rename(path, tmp_path / "a.jsonl.2")
    a.reopen()  # SIGHUP / SIGUSR1
    a.write(path="/3")
    assert json.loads(path.read_text())["path"] == "/3"
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_fixed_keys(tmp_path):
    rec = AuditLog(str(tmp_path / "a")).write(agent="x", secret_value="never")
    assert tuple(rec) == KEYS and "secret_value" not in rec


def test_a_write_that_fails_raises_so_the_caller_can_refuse():
    """The addon turns this into a refusal; a swallowed error would be an allow unaudited."""
    import pytest

    a = AuditLog("/dev/full")
    with pytest.raises(OSError):
        a.write(agent="x", action="allow")


# ------------------------------------------- the line encoder against json.dumps
# AuditLog encodes a line with a template and the C string encoder json.dumps uses, and
# formats the time once a second; the bytes must be exactly what the original wrote:
# json.dumps(record, separators=(",", ":"), default=str) with datetime's isoformat.

from datetime import datetime, timezone  # noqa: E402
from enum import IntEnum  # noqa: E402

import originals  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

from agentctl_proxy import audit  # noqa: E402
from agentctl_proxy.audit import _Clock, encode_line  # noqa: E402


class _Status(IntEnum):
    OK = 200


class _Name(str):
    pass


_OBJECT = object()
scalars = st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["", "/v1/\udcff", "caf\u00e9", "\x00\n\"\\", "\U0001f600"]),
                    st.integers(-2**70, 2**70), st.booleans(), st.floats(), st.sampled_from([float("inf"), float("nan"), -0.0]),
                    st.sampled_from([_Status.OK, _Name("agent\u00e9"), _OBJECT, b"bytes", ("t", 1)]))
values = st.one_of(scalars, st.lists(st.text(max_size=6), max_size=3), st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))


@settings(max_examples=600, deadline=None)
@given(st.lists(values, min_size=len(KEYS), max_size=len(KEYS)))
def test_encode_line_is_what_json_dumps_wrote(vals):
    """Within the value bounds (lifted here: hypothesis values pass the small ones)."""
    saved = audit._LIMITS
    audit._LIMITS = tuple(10**9 for _ in KEYS)
    try:
        assert encode_line(tuple(vals)) == originals.audit_line(dict(zip(KEYS, vals)))
    finally:
        audit._LIMITS = saved


# ----------------------------------------------------------------- bounds (issue 16)

_WORST = ["\U0001f600", "\x00", "a", "\udcff", '"']  # 12, 6, 1, 6 and 2 bytes in JSON


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(_WORST), min_size=0, max_size=3000), min_size=len(KEYS),
                max_size=len(KEYS)))
def test_no_line_passes_the_fixed_maximum_and_cut_values_are_marked(vals):
    line = encode_line(tuple(vals))
    assert len(line) <= audit.MAX_LINE_BYTES
    rec = json.loads(line)
    for k, v in zip(KEYS, vals):
        if rec[k] != v:  # cut: a prefix of the value, then the mark with its full length
            mark = audit.CUT_MARK % len(v)
            assert rec[k].endswith(mark) and v.startswith(rec[k][: -len(mark)])


def test_a_4_mib_path_costs_one_bounded_line(tmp_path):
    log = AuditLog(str(tmp_path / "a.jsonl"))
    log.write(event="decision", path="/" + "A" * (4 << 20), action="deny")
    data = (tmp_path / "a.jsonl").read_bytes()
    assert len(data) <= audit.MAX_LINE_BYTES and json.loads(data)["path"].endswith("[cut: 4194305 chars]")


def test_refusal_budget_is_a_bucket_per_agent():
    now = [0.0]
    b = audit.RefusalBudget(burst=3, per_second=0.5, clock=lambda: now[0])
    assert [b.take("scout") for _ in range(4)] == [True, True, True, False]
    assert b.take("builder")  # its own bucket
    now[0] = 2.0  # one token back
    assert [b.take("scout") for _ in range(2)] == [True, False]


def test_over_budget_lines_become_one_summary_line(tmp_path):
    log = AuditLog(str(tmp_path / "a.jsonl"))
    budgeted = audit.BudgetedAudit(lambda: log, audit.RefusalBudget(burst=2, per_second=0.001))
    admitted = [budgeted.admit("scout", "127.0.0.11", "tunnel", f"reason {i}") for i in range(50)]
    assert admitted == [True, True] + [False] * 48
    budgeted.flush("scout")
    budgeted.flush("scout")  # nothing more held: nothing written
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["event"] == "suppressed" and lines[0]["agent"] == "scout"
    assert "48 more lines" in lines[0]["rejected_by"] and "reason 49" in lines[0]["rejected_by"]


def test_write_and_write_values_write_the_same_line(tmp_path):
    a = AuditLog(str(tmp_path / "a"))
    a.write(event="decision", request_id="r1", conn_id="c1", connect_id=None, remote_addr="127.0.0.11", agent="scout", mode="tunnel", host="h", sni=None,
            method="GET", path="/x", action="allow", rule="r", rejected_by=None, status_code=200,
            duration_ms=1.5, request_transforms=["allowlist"])
    a.write_values("decision", "r1", "c1", None, "127.0.0.11", "scout", "tunnel", "h", None, "GET", "/x", "allow", "r", None, 200,
                   1.5, ["allowlist"])
    first, second = (json.loads(x) for x in (tmp_path / "a").read_text().splitlines())
    del first["time"], second["time"]
    assert first == second
    with __import__("pytest").raises(TypeError):
        a.write_values("decision")  # a value missing: never a line with a key left out


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.integers(0, 253402300797 * 10**9), min_size=1, max_size=6))  # to 9999-12-31
def test_clock_spells_time_as_datetime_isoformat(stamps):
    clock = _Clock()  # one clock: its once-a-second cache must never serve the wrong second
    for ns in stamps + [stamps[0] + 1, stamps[0] + 10**9]:
        dt = datetime.fromtimestamp(ns // 10**9, timezone.utc).replace(microsecond=ns // 1000 % 10**6)
        assert clock.format_ns(ns) == dt.isoformat(timespec="milliseconds")


def test_line_time_is_now():
    before = datetime.now(timezone.utc)
    t = datetime.fromisoformat(_Clock().now())
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= t <= datetime.now(timezone.utc)


def test_a_line_written_without_a_request_id_gets_one_of_its_own(tmp_path):
    a = AuditLog(str(tmp_path / "a"))
    for _ in range(2):
        a.write(event="decision", mode="dns", action="deny")
    first, second = (json.loads(x) for x in (tmp_path / "a").read_text().splitlines())
    assert first["request_id"] and second["request_id"] and first["request_id"] != second["request_id"]
