"""Every mitmproxy internal agentctl-proxy relies on, in one module: each is here because
a security property needs it, and each has a canary test (tests/test_internals_*.py) that
fails if a mitmproxy release moves, renames or reshapes what it relies on. Nothing else
in agentctl_proxy imports a private mitmproxy name (tests/test_internals_canary.py checks).

Supported: mitmproxy 11.0.x (Python 3.11) and 12.x (Python >= 3.12); the canary tests
know the source text of both and fail on any other major version.

1. Request body cap (`HttpStream.check_body_size`, mitmproxy/proxy/layers/http/__init__.py).
   mitmproxy has one `body_size_limit` for requests and responses alike, checked before
   any addon sees the response; a 1 MiB request cap would then turn every larger download
   into a 502. Our version applies the limit to requests only, early (Content-Length)
   and late (chunked / HTTP/2 without a length), so a body is never buffered past the
   cap. Response size is capped separately, through the public `flow.response.stream`.
2. Client protocol errors reach the audit (`Http1Server.read_headers`,
   `Http2Server.protocol_error`, mitmproxy/proxy/layers/http/_http1.py and _http2.py).
   mitmproxy answers some client errors inside its own connection layers, before any
   request (and so any addon hook) exists: an HTTP/1 head it cannot parse gets a 400
   and a close; an HTTP/2 protocol error closes the connection. Both also yield a
   ClientProtocolErrorHook here, so every refusal has its audit line. The refusals
   mitmproxy answers itself once a head parsed but before any hook
   (`HttpStream.state_wait_for_request_headers`: an origin-form request without Host on
   the explicit proxy, `PRI * HTTP/2.0` there) yield a RequestRefusedHook first.
3. Memory bounds mitmproxy does not have: an HTTP/1 head still unterminated past
   bounds.MAX_HEAD_BYTES gets 431 and a close (mitmproxy's own "FIXME: protect against
   header size DoS" in `Http1Server.read_headers`); bytes piling up while a request waits
   for its response (pipelining, `Http1Server.wait`) are cut past one head and one body;
   a client's HTTP/2 connection is held to bounds.MAX_H2_STREAMS open streams
   (`Http2Server.__init__`).
4. Upstream address pinning (`Server.address`, mitmproxy/connection.py). The addon
   connects to the address that passed `upstream_deny_cidrs` (server_connect sets
   `server.address`, which mitmproxy allows while the connection is not open); once open,
   the name is given back so connection reuse (which compares addresses by name) works.
   `Server.__setattr__` forbids changing the address of an open connection, to stop
   addons from redirecting live connections; restoring our own substitution steps
   around that guard.
5. The layer-choosing addon's name, NEXT_LAYER: mitmproxy's Proxyserver looks up the
   addon named "nextlayer" and warns when none is loaded (mitmproxy/addons/proxyserver.py);
   ours replaces mitmproxy's NextLayer addon, so it carries that name.
"""

from __future__ import annotations

from dataclasses import dataclass

from h11._receivebuffer import ReceiveBuffer
from mitmproxy import connection, flow, http
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import HttpErrorHook, HttpRequestHeadersHook, HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server, make_error_response
from mitmproxy.proxy.layers.http._http2 import Http2Connection, Http2Server

from agentctl_proxy import bounds

try:  # mitmproxy 12: protocol errors carry an ErrorCode, mapped to 413 when sent
    from mitmproxy.proxy.layers.http._events import ErrorCode
    TOO_LARGE: object = ErrorCode.REQUEST_TOO_LARGE
except ImportError:  # mitmproxy 11: the HTTP status itself
    TOO_LARGE = 413

NEXT_LAYER = "nextlayer"

# ------------------------------------------------------------ 1. request body cap

REJECTED_BY = "max_request_body_bytes"
MESSAGE = "Request body exceeds max_request_body_bytes."


# mitmproxy's own methods, kept for the canary tests and to call through
MITMPROXY_CHECK_BODY_SIZE = HttpStream.check_body_size


class _Limits:
    request: int | None = 1048576


LIMITS = _Limits()


def _check_body_size(self: HttpStream, request: bool):
    if not request or LIMITS.request is None:
        return False
    if self.request_body_buf:
        size: int | None = len(self.request_body_buf)
    else:
        try:
            size = expected_http_body_size(self.flow.request, None)
        except ValueError:
            size = None  # malformed lengths are refused by validate_inbound_headers
    if size is None or size <= LIMITS.request:
        return False
    # set before the headers hook, so the addon records this refusal as the decision
    self.flow.error = flow.Error(MESSAGE)
    if not self.request_body_buf:
        yield HttpRequestHeadersHook(self.flow)  # let the addon record who asked
    yield HttpErrorHook(self.flow)
    yield SendHttp(ResponseProtocolError(self.stream_id, MESSAGE, TOO_LARGE), self.context.client)
    self.client_state = self.state_errored
    self.flow.live = False
    return True


def oversized(f: flow.Flow) -> bool:
    """The request body is over the cap: mitmproxy answers 413 whatever an addon says."""
    return f.error is not None and f.error.msg == MESSAGE


# ------------------------------------------------ 2, 3. protocol errors, memory bounds

_H2_PROTOCOL_ERROR = Http2Connection.protocol_error
_H2_SERVER_INIT = Http2Server.__init__
_H1_READ_HEADERS = Http1Server.read_headers
_H1_WAIT = Http1Server.wait
_WAIT_FOR_HEADERS = HttpStream.state_wait_for_request_headers
_H1_REFUSAL = b"HTTP/1.1 400 "  # what mitmproxy's make_error_response(400, ...) starts with


@dataclass
class ClientProtocolError:
    client: connection.Client
    protocol: str  # "HTTP/1" or "HTTP/2"
    reason: str = "protocol error"


@dataclass
class ClientProtocolErrorHook(commands.StartHook):
    """mitmproxy refused a client's broken HTTP and closes the connection. Addon hook:
    `client_protocol_error(data: ClientProtocolError)` (mitmproxy passes one argument)."""

    data: ClientProtocolError
    blocking = False  # recording it must never hold up closing the connection


@dataclass
class RequestRefused:
    flow: http.HTTPFlow
    message: str
    status: int


@dataclass
class RequestRefusedHook(commands.StartHook):
    """mitmproxy answers this parsed request with an error itself, before any flow hook.
    Addon hook: `request_refused(data: RequestRefused)`."""

    data: RequestRefused
    blocking = False


def _h2_server_init(self: Http2Server, *args, **kwargs) -> None:
    """A client's HTTP/2 connection allows bounds.MAX_H2_STREAMS open streams, not h2's
    100: each may hold a request body (up to max_request_body_bytes) in memory. Set
    before the connection starts, so the first SETTINGS frame carries it (mitmproxy
    acknowledges its own local settings the same way, _http_h2.BufferedH2Connection);
    h2 refuses a stream over it with a connection error (audited as a protocol error)."""
    _H2_SERVER_INIT(self, *args, **kwargs)
    self.h2_conn.local_settings.max_concurrent_streams = bounds.MAX_H2_STREAMS
    self.h2_conn.local_settings.acknowledge()


def _h2_protocol_error(self: Http2Server, message: str, *args, **kwargs):
    yield ClientProtocolErrorHook(ClientProtocolError(self.context.client, "HTTP/2"))
    yield from _H2_PROTOCOL_ERROR(self, message, *args, **kwargs)


def _h1_read_headers(self: Http1Server, event: events.ConnectionEvent):
    gen = _H1_READ_HEADERS(self, event)
    reply = None
    while True:
        try:
            cmd = gen.send(reply)
        except StopIteration as stop:
            return stop.value
        # Only the unparseable-head branch sends a 400 while no request exists; a head
        # that parsed reaches the flow hooks (and the addon) on its own.
        if isinstance(cmd, commands.SendData) and self.request is None and cmd.data.startswith(_H1_REFUSAL):
            yield ClientProtocolErrorHook(ClientProtocolError(self.context.client, "HTTP/1"))
        reply = yield cmd


def _h1_refuse_head(self: Http1Server):
    """431 and close: the bytes of a head that has not ended are past the bound."""
    self.buf = ReceiveBuffer()  # give the memory back now, not when the connection goes
    self.state = self.done
    yield ClientProtocolErrorHook(ClientProtocolError(self.context.client, "HTTP/1", "request head too large"))
    yield commands.SendData(self.conn, make_error_response(431, "Request head too large."))
    yield commands.CloseConnection(self.conn)


def _h1_bounded_read_headers(self: Http1Server, event: events.ConnectionEvent):
    yield from _h1_read_headers(self, event)
    # still no complete head (the original extracts one as soon as it ends)
    if self.state == self.read_headers and self.request is None and len(self.buf) > bounds.MAX_HEAD_BYTES:
        yield from _h1_refuse_head(self)


def _h1_bounded_wait(self: Http1Server, event: events.Event):
    # a request is out and its response not yet back: what the client sends meanwhile
    # is kept for later (pipelining), up to one more head and body
    if len(self.buf) > bounds.MAX_HEAD_BYTES + (LIMITS.request or 0):
        self.buf = ReceiveBuffer()
        self.state = self.done
        yield ClientProtocolErrorHook(ClientProtocolError(self.context.client, "HTTP/1", "pipelined data too large"))
        yield commands.CloseConnection(self.conn)
        return
    yield from _H1_WAIT(self, event)


def _wait_for_request_headers(self: HttpStream, event):
    gen = _WAIT_FOR_HEADERS(self, event)
    reply = None
    hooked = False  # the addon has seen this flow: it records the refusal itself
    while True:
        try:
            cmd = gen.send(reply)
        except StopIteration as stop:
            return stop.value
        if isinstance(cmd, commands.StartHook) and getattr(cmd, "flow", None) is self.flow:
            hooked = True  # requestheaders, http_connect, error: each leads to a line
        elif isinstance(cmd, SendHttp) and isinstance(cmd.event, ResponseProtocolError) and not hooked:
            yield RequestRefusedHook(RequestRefused(self.flow, cmd.event.message, _status(cmd.event.code)))
            hooked = True
        reply = yield cmd


def _status(code: object) -> int:
    """An HTTP status from a ResponseProtocolError code: the status itself in mitmproxy
    11, an ErrorCode in 12 (its http_status_code(), None for "no response")."""
    if isinstance(code, int):
        return code
    status = getattr(code, "http_status_code", lambda: None)()
    return status or 400


# ------------------------------------------------------ 4. upstream address pinning


def restore_address(server: connection.Server, address: tuple[str, int]) -> None:
    """Give an open server connection back the address (name) it had before our
    server_connect substituted the checked IP (the IP stays in server.peername)."""
    object.__setattr__(server, "address", address)


# ------------------------------------------------------------------- install


# (class, attribute, our replacement): all that install() changes in mitmproxy
PATCHES = (
    (HttpStream, "check_body_size", _check_body_size),
    # client side only: upstream protocol errors already reach the flow as errors
    (Http2Server, "protocol_error", _h2_protocol_error),
    (Http2Server, "__init__", _h2_server_init),
    (Http1Server, "read_headers", _h1_bounded_read_headers),
    (Http1Server, "wait", _h1_bounded_wait),
    (HttpStream, "state_wait_for_request_headers", _wait_for_request_headers),
)


def install(request_limit: int | None) -> None:
    """Install every patch (idempotent); set the request body cap."""
    LIMITS.request = request_limit
    for cls, name, ours in PATCHES:
        setattr(cls, name, ours)


def set_request_limit(request_limit: int | None) -> None:
    """A reload's new cap (install() has run)."""
    LIMITS.request = request_limit
