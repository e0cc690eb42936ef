"""Make client connections that mitmproxy refuses for a protocol error visible to the addon.

mitmproxy answers some client errors inside its own connection layers, before any
request (and so any addon hook) exists: an HTTP/1 request head it cannot parse gets
a 400 and a close; an HTTP/2 protocol error (malformed request headers, a DATA frame
before HEADERS, broken framing) closes the connection. install() wraps both places
(mitmproxy 11.0.x/12.x, pinned) to also yield a ClientProtocolErrorHook, which the
addon records as a refusal, so every refusal has its audit line.
tests/test_protocol_errors.py fails if a mitmproxy upgrade changes these code paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import connection
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.layers.http._http2 import Http2Connection, Http2Server

_H2_PROTOCOL_ERROR = Http2Connection.protocol_error
_H1_READ_HEADERS = Http1Server.read_headers
_H1_REFUSAL = b"HTTP/1.1 400 "  # what mitmproxy's make_error_response(400, ...) starts with


@dataclass
class ClientProtocolError:
    client: connection.Client
    protocol: str  # "HTTP/1" or "HTTP/2"


@dataclass
class ClientProtocolErrorHook(commands.StartHook):
    """mitmproxy refused a client's broken HTTP and closes the connection. Addon hook:
    `client_protocol_error(data: ClientProtocolError)` (mitmproxy passes one argument)."""

    data: ClientProtocolError
    blocking = False  # recording it must never hold up closing the connection


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


def install() -> None:
    # client side only: upstream protocol errors already reach the flow as errors
    Http2Server.protocol_error = _h2_protocol_error  # type: ignore[method-assign]
    Http1Server.read_headers = _h1_read_headers  # type: ignore[method-assign]
