"""Make client connections that mitmproxy refuses for a protocol error visible to the addon.

mitmproxy answers some client errors inside its own connection layers, before any
request (and so any addon hook) exists: an HTTP/1 request head it cannot parse gets
a 400 and a close; an HTTP/2 protocol error (malformed request headers, a DATA frame
before HEADERS, broken framing) closes the connection. install() wraps both places
(mitmproxy 11.0.x/12.x, pinned) to also yield a ClientProtocolErrorHook, which the
addon records as a refusal, so every refusal has its audit line.
It also bounds what mitmproxy would buffer from an HTTP/1 client without limit (its
own "FIXME: protect against header size DoS" in Http1Server.read_headers): a head
still unterminated past bounds.MAX_HEAD_BYTES gets 431 and a close; bytes piling up
while a request waits for its response (pipelining) are cut past one head and one
body. And the refusals mitmproxy answers itself once a head parsed but before any
hook (HttpStream.state_wait_for_request_headers: an origin-form request without Host
on the explicit proxy, `PRI * HTTP/2.0` there) yield a RequestRefusedHook first. A
client's HTTP/2 connection is held to bounds.MAX_H2_STREAMS open streams.
tests/test_protocol_errors.py fails if a mitmproxy upgrade changes these code paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from h11._receivebuffer import ReceiveBuffer
from mitmproxy import connection, http
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server, make_error_response
from mitmproxy.proxy.layers.http._http2 import Http2Connection, Http2Server

from agentctl_proxy import bounds, limits

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
    if len(self.buf) > bounds.MAX_HEAD_BYTES + (limits.LIMITS.request or 0):
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


def install() -> None:
    # client side only: upstream protocol errors already reach the flow as errors
    Http2Server.protocol_error = _h2_protocol_error  # type: ignore[method-assign]
    Http2Server.__init__ = _h2_server_init  # type: ignore[method-assign]
    Http1Server.read_headers = _h1_bounded_read_headers  # type: ignore[method-assign]
    Http1Server.wait = _h1_bounded_wait  # type: ignore[method-assign]
    HttpStream.state_wait_for_request_headers = _wait_for_request_headers  # type: ignore[method-assign]
