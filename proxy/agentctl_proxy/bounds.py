"""Fixed bounds on what an agent controls in a request head, the same for HTTP/1 and HTTP/2.

These are not configurable: every real API request fits them many times over, and a
value past them is refused (and audited, cut to the audit's own bounds) before any
policy work. The numbers are listed in the README's "Security bounds" section.

Where they are enforced:
- HTTP/1: a head that is still unterminated past MAX_HEAD_BYTES is refused with 431 by
  the connection layer (internals.py), so a head that never ends costs at most
  that much memory (plus one socket read); a complete head is checked here.
- HTTP/2: h2 refuses a header block whose decoded size passes its
  DEFAULT_MAX_HEADER_LIST_SIZE (64 KiB; h2/connection.py, checked by
  tests/test_internals_protocol_errors.py) with a connection error, audited as an HTTP/2
  protocol error; a block under that is checked here.
"""

from __future__ import annotations

import re

from mitmproxy import http

MAX_HEAD_BYTES = 32 * 1024  # request line + header fields, as HTTP/1 would carry them
MAX_TARGET_BYTES = 8 * 1024  # the request-target (path and query)
MAX_HEADER_COUNT = 100
MAX_METHOD_BYTES = 32
MAX_CLIENT_CONNECTIONS = 32  # open connections per agent (all unknown clients: one budget)
MAX_H2_STREAMS = 10  # open streams per client HTTP/2 connection (h2's default: 100)
# so the request bodies an agent can make the proxy hold at once are at most
# MAX_CLIENT_CONNECTIONS * MAX_H2_STREAMS * (max_request_body_bytes + a head)

# RFC 9110 5.6.2: a method is a token
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def head_size(req: http.Request) -> int:
    """The bytes of the head as HTTP/1.1 carries it: `M T HTTP/1.1\\r\\n`, `N: V\\r\\n` each, `\\r\\n`."""
    d = req.data
    return len(d.method) + len(d.path) + 12 + sum(len(k) + len(v) + 4 for k, v in req.headers.fields) + 2


def head_problem(req: http.Request) -> tuple[int, str, str] | None:
    """(status, rejected_by, reason) if the head passes a bound or the method is no token."""
    d = req.data
    if len(d.method) > MAX_METHOD_BYTES or not _TOKEN.fullmatch(d.method):
        return 400, "malformed request", "the method is not an HTTP token"
    if len(d.path) > MAX_TARGET_BYTES:
        return 414, "request-target too long", f"request-target over {MAX_TARGET_BYTES} bytes"
    if len(req.headers.fields) > MAX_HEADER_COUNT:
        return 431, "too many header fields", f"more than {MAX_HEADER_COUNT} header fields"
    if head_size(req) > MAX_HEAD_BYTES:
        return 431, "request head too large", f"request head over {MAX_HEAD_BYTES} bytes"
    return None
