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
