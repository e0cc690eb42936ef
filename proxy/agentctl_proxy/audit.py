"""The audit file: one JSON line per decision, never a secret value.

Each line is a single os.write on an O_APPEND descriptor, so a line is either in the
kernel (and survives a kill of the process) or not written at all, and concurrent
writers never interleave. A failed or short write raises OSError: the caller treats
that as "not recorded" and refuses the request (fail closed).

No fsync by default: a write that returned is in the page cache and survives
SIGKILL, OOM kills and crashes of the proxy; only a kernel crash or power loss can
lose the last few seconds, the same trade journald makes. fsync=True closes that
gap at the cost of one disk flush per line.

Rotation is noticed by the inode changing under the path (logrotate's rename +
create), or forced with reopen() on SIGHUP/SIGUSR1.

Disk use is bounded two ways. A line is at most MAX_LINE_BYTES (values cut, marked).
Lines an agent can cause at will without being forwarded anywhere (refusals and DNS
answers) draw on a token bucket per agent (all clients that are no agent share one):
`log.refusal_burst` lines at once, refilled at `log.refusal_rate` per second. Past
that they are counted, not written, and one "suppressed" line per agent every
SUMMARY_SECONDS says how many there were and the last reason. So an agent can add at
most burst + rate*t + t/SUMMARY_SECONDS lines in t seconds, each <= MAX_LINE_BYTES.
Allowed requests are not budgeted: each is forwarded, and grants carry rate limits.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str  # what json.dumps uses

# docs/design.md's keys plus `event`: "decision" (written before the proxy acts on it) or
# "complete" (an allowed exchange ended; carries the final status and duration), and the
# ids that tie lines together (docs/audit.md): `request_id` (the same on a request's
# decision and complete lines), `conn_id` (the client connection) and `connect_id` (the
# request_id of the CONNECT whose tunnel carried the request).
KEYS = (
    "time", "event", "request_id", "conn_id", "connect_id", "remote_addr", "agent", "mode", "host", "sni", "method", "path", "action",
    "rule", "rejected_by", "status_code", "duration_ms", "request_transforms",
)
# the line with a %s for each value's JSON text, keys in KEYS order
_TEMPLATE = "{" + ",".join(f'"{k}":%s' for k in KEYS) + "}\n"

# The most bytes each value's JSON text may take (quotes and escapes included); a longer
# one is cut at a character boundary and ends in CUT_MARK. With these, no audit line is
# longer than MAX_LINE_BYTES (tests/test_audit.py builds the worst case), so one line
# costs the disk a known amount whatever an agent sends.
_VALUE_BYTES = {
    "time": 40, "event": 16, "request_id": 40, "conn_id": 40, "connect_id": 40, "remote_addr": 64, "agent": 80, "mode": 16, "host": 300, "sni": 300,
    "method": 64, "path": 1900, "action": 16, "rule": 256, "rejected_by": 512, "status_code": 24,
    "duration_ms": 32, "request_transforms": 128,
}
_LIMITS = tuple(_VALUE_BYTES[k] for k in KEYS)
MAX_LINE_BYTES = 4096
assert len(_TEMPLATE % tuple("" for _ in KEYS)) + sum(_LIMITS) <= MAX_LINE_BYTES
CUT_MARK = "...[cut: %d chars]"


def _json_value(v: object) -> str:
    """The JSON text json.dumps(..., separators=(",", ":"), default=str) gives a value
    inside a record, with fast paths for exact str, int, finite float, None and lists
    of str (tests/test_audit.py compares the two over generated values)."""
    if v is None:
        return "null"
    cls = v.__class__
    if cls is str:
        return _json_str(v)
    if cls is int:
        return int.__repr__(v)
    if cls is float and v - v == 0.0:  # finite (json spells inf and nan its own way)
        return float.__repr__(v)
    if cls is list:
        try:
            return "[" + ",".join(map(_json_str, v)) + "]"
        except TypeError:  # an item that is not a str: json.dumps decides
            pass
    return json.dumps(v, separators=(",", ":"), default=str)


def _cut(text: str, limit: int) -> str:
    """The JSON text of `text` in at most `limit` bytes: as many whole characters
    (each escaped as json.dumps would) as fit before the cut mark."""
    mark = CUT_MARK % len(text)
    budget = limit - 2 - len(mark)
    out, used = [], 0
    for ch in text:
        esc = _json_str(ch)[1:-1]
        used += len(esc)
        if used > budget:
            break
        out.append(esc)
    return '"' + "".join(out) + mark + '"'


def _bounded(v: object, limit: int) -> str:
    text = _json_str(v) if v.__class__ is str else _json_value(v)
    if len(text) <= limit:
        return text
    return _cut(v if v.__class__ is str else text, limit)  # a long non-string: its JSON, cut, as a string


def encode_line(values: tuple) -> bytes:
    """One audit line (what json.dumps of the record gives, each value cut to its bound);
    values in KEYS order. Never longer than MAX_LINE_BYTES."""
    if len(values) != len(KEYS):
        raise TypeError(f"expected a value for each of {KEYS}")
    return (_TEMPLATE % tuple(map(_bounded, values, _LIMITS))).encode()


class _Clock:
    """UTC time as datetime.isoformat(timespec="milliseconds") spells it
    (2026-12-01T08:24:00.123+00:00), formatting the date and time once a second."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def now(self) -> str:
        return self.format_ns(time.time_ns())

    def format_ns(self, ns: int) -> str:
        sec, frac = divmod(ns, 1_000_000_000)
        cached = self._second  # one tuple: a reader never sees a half-updated pair
        if cached[0] != sec:
            cached = self._second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
        return f"{cached[1]}.{frac // 1_000_000:03d}+00:00"


class AuditLog:
    def __init__(self, path: str | None, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None
        self._ino: int | None = None
        self._last_check = 0.0
        self._clock = _Clock()
        if path:
            self._open()

    def _open(self) -> None:
        assert self.path
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        self._ino = os.fstat(fd).st_ino
        if old is not None:
            os.close(old)

    def reopen(self) -> None:
        if self.path:
            self._open()

    def _rotated(self) -> bool:
        now = time.monotonic()
        if now - self._last_check < 0.5:  # a stat per line is cheap, but not free
            return False
        self._last_check = now
        try:
            return os.stat(self.path).st_ino != self._ino  # type: ignore[arg-type]
        except FileNotFoundError:
            return True

    def write(self, **fields: object) -> dict:
        """Write one line of these fields (by KEYS name; others are dropped); a line
        without a request_id gets one of its own."""
        record = {k: fields.get(k) for k in KEYS}
        record["time"] = self._clock.now()
        if record["request_id"] is None:
            record["request_id"] = new_id()
        self._emit(encode_line(tuple(record.values())))
        return record

    def write_values(self, *values: object) -> None:
        """write() with the values of KEYS[1:] (all but the time) in order: the
        per-request path."""
        self._emit(encode_line((self._clock.now(), *values)))

    def _emit(self, line: bytes) -> None:
        if self._fd is None:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            return
        if self._rotated():
            self._open()
        if os.write(self._fd, line) != len(line):  # only on a full disk; the tail is torn
            raise OSError(errno.ENOSPC, "short write to the audit file")
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


SUMMARY_SECONDS = 10.0
# The budget's defaults, and config.py's for `log.refusal_burst` and `log.refusal_rate`
REFUSAL_BURST = 120
REFUSAL_RATE = 1.0  # lines per second


def new_id() -> str:
    """An id for a line that no mitmproxy flow names (connection refusals, DNS answers,
    summaries): the same form as mitmproxy's flow and connection ids (uuid4)."""
    return str(uuid.uuid4())


@dataclass
class _Held:
    """Refusals of one agent not written one by one since its last summary."""

    count: int = 0
    remote: str = ""
    mode: str = ""
    last: str = ""


class RefusalBudget:
    """Token bucket per key (agent name, or "-" for every client that is no agent)."""

    def __init__(self, burst: int = REFUSAL_BURST, per_second: float = REFUSAL_RATE,
                 clock=time.monotonic) -> None:
        self.burst, self.rate, self._clock = burst, per_second, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def configure(self, burst: int, per_second: float) -> None:
        self.burst, self.rate = burst, per_second

    def take(self, key: str) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


class BudgetedAudit:
    """The audit writes an agent can cause at will, through its RefusalBudget."""

    def __init__(self, log: Callable[[], AuditLog], budget: RefusalBudget) -> None:
        self.log = log  # the current audit file (a reload may replace it)
        self.budget = budget
        self._held: dict[str, _Held] = {}

    def admit(self, agent: str, remote: str, mode: str, reason: str) -> bool:
        """True: write this line. False: it is counted for the agent's next summary line."""
        if self.budget.take(agent):
            return True
        held = self._held.get(agent)
        if held is None:
            held = self._held[agent] = _Held()
            try:
                asyncio.get_running_loop().call_later(SUMMARY_SECONDS, self.flush, agent)
            except RuntimeError:  # no loop (a unit test): flush() is called by hand
                pass
        held.count += 1
        held.remote, held.mode, held.last = remote, mode, reason
        return False

    def flush(self, agent: str) -> None:
        held = self._held.pop(agent, None)
        if held is None:
            return
        try:
            self.log().write(event="suppressed", remote_addr=held.remote, agent=agent, mode=held.mode,
                             action="deny", request_transforms=[],
                             rejected_by=f"audit budget: {held.count} more lines (refusals, DNS answers) not"
                                         f" written one by one; the last: {held.last}")
        except (OSError, ValueError):
            pass  # the next refusal that is written fails, and says so, the same way
