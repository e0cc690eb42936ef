"""internals.py (2, 3) wraps mitmproxy internals so client protocol errors reach the
addon (and the audit file). These tests fail loudly if a mitmproxy upgrade changes
either code path, and drive the wrapped layers to show the hook really comes out."""

import dataclasses
import inspect

import pytest
from mitmproxy.options import Options
from mitmproxy.proxy import events, mode_servers
from mitmproxy.proxy.commands import CloseConnection, SendData
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.layers.http import HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Connection
from mitmproxy.proxy.layers.http._http2 import Http2Connection, Http2Server
from mitmproxy.test import tflow

from agentctl_proxy import bounds
from agentctl_proxy import internals as pe


@pytest.fixture
def installed(mitm_patched):
    mitm_patched(None)


def _ctx() -> Context:
    opts = Options()
    opts.add_option("validate_inbound_headers", bool, True, "")
    return Context(tflow.tclient_conn(), opts)


def test_hooks_take_one_argument_as_mitmproxy_requires():
    assert "(data,) = hook.args()" in inspect.getsource(mode_servers.ProxyConnectionHandler.handle_hook)
    assert len(dataclasses.fields(pe.ClientProtocolErrorHook)) == 1
    assert pe.ClientProtocolErrorHook.name == "client_protocol_error"


def test_h2_protocol_error_is_where_mitmproxy_kills_client_connections():
    assert list(inspect.signature(Http2Connection.protocol_error).parameters) == ["self", "message", "error_code"]
    assert inspect.isgeneratorfunction(Http2Connection.protocol_error)
    assert "self.protocol_error(" in inspect.getsource(Http2Server.handle_h2_event)
    assert "self.protocol_error(" in inspect.getsource(Http2Connection.handle_h2_event)


def test_h1_bad_head_branch_is_the_one_we_watch():
    src = inspect.getsource(Http1Server.read_headers)
    assert "self.request = http1.read_request_head(" in src
    assert "make_error_response(400, str(e))" in src
    assert _http1.make_error_response(400, "x").startswith(pe._H1_REFUSAL)


def test_h2_protocol_error_yields_the_hook_first(installed):
    server = Http2Server(_ctx())
    list(server.handle_event(events.Start()))
    cmds = list(server.protocol_error("bad frame"))
    assert isinstance(cmds[0], pe.ClientProtocolErrorHook) and cmds[0].data.protocol == "HTTP/2"
    assert any(isinstance(c, CloseConnection) for c in cmds[1:])


@pytest.mark.parametrize("head,hooked", [
    (b"GET /a /b HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"NONSENSE\r\n\r\n", True),
    (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", False),  # parsed: the flow hooks see it
])
def test_h1_unparseable_head_yields_the_hook_before_the_400(installed, head, hooked):
    ctx = _ctx()
    server = Http1Server(ctx)
    list(server.handle_event(events.Start()))
    cmds = list(server.handle_event(events.DataReceived(ctx.client, head)))
    hooks = [i for i, c in enumerate(cmds) if isinstance(c, pe.ClientProtocolErrorHook)]
    if hooked:
        sent = next(i for i, c in enumerate(cmds) if isinstance(c, SendData))
        assert hooks == [sent - 1] and cmds[sent].data.startswith(b"HTTP/1.1 400 ")
    else:
        assert hooks == []


# ------------------------------------------------ the bounds and refusals of issue 16


def test_mitmproxy_still_buffers_http1_heads_and_waits_as_we_wrap():
    src = inspect.getsource(pe._H1_READ_HEADERS)
    assert "self.buf.maybe_extract_lines()" in src  # the head is cut from self.buf once it ends
    assert "self.buf += event.data" in inspect.getsource(Http1Connection._handle_event)  # in every state
    assert "def wait(" in inspect.getsource(Http1Connection) and "wait" not in vars(Http1Server) or \
        Http1Server.wait is pe._h1_bounded_wait
    assert "self.state = self.wait" in inspect.getsource(Http1Server.mark_done)


def test_h2_still_bounds_header_blocks_at_64_kib():
    import h2.connection
    import h2.frame_buffer

    assert h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE == 2**16
    assert h2.frame_buffer.CONTINUATION_BACKLOG == 64


def test_mitmproxy_answers_a_request_without_host_itself():
    src = inspect.getsource(pe._WAIT_FOR_HEADERS)
    assert "HTTP request has no host header, destination unknown." in src
    assert src.index("no host header") < src.index("HttpRequestHeadersHook(self.flow)")


def _h1_events(server, ctx, data):
    return list(server.handle_event(events.DataReceived(ctx.client, data)))


def test_unterminated_h1_head_gets_431_and_the_hook_once_past_the_bound(installed):
    ctx = _ctx()
    server = Http1Server(ctx)
    list(server.handle_event(events.Start()))
    assert _h1_events(server, ctx, b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * (bounds.MAX_HEAD_BYTES - 100)) == []
    cmds = _h1_events(server, ctx, b"a" * 200)
    assert isinstance(cmds[0], pe.ClientProtocolErrorHook) and cmds[0].data.reason == "request head too large"
    assert cmds[1].data.startswith(b"HTTP/1.1 431 ") and isinstance(cmds[2], CloseConnection)
    assert len(server.buf) == 0  # the memory is given back at once


def test_request_without_host_yields_the_refusal_hook_before_the_400(installed):
    from mitmproxy import http
    from mitmproxy.proxy.layers.http import HTTPMode
    from mitmproxy.proxy.layers.http._events import RequestHeaders

    stream = HttpStream(_ctx(), stream_id=1)
    stream.__dict__["mode"] = HTTPMode.regular  # a cached_property read from the parent layer
    list(stream.handle_event(events.Start()))
    req = http.Request("", 0, b"GET", b"", b"", b"/v1/x", b"HTTP/1.1", http.Headers(), b"", None, 0, 0)
    cmds = list(stream.handle_event(RequestHeaders(1, req, True)))
    kinds = [type(c) for c in cmds]
    assert pe.RequestRefusedHook in kinds
    refused = kinds.index(pe.RequestRefusedHook)
    assert isinstance(cmds[refused + 1], SendHttp) and isinstance(cmds[refused + 1].event, ResponseProtocolError)
    assert cmds[refused].data.status == 400 and "no host header" in cmds[refused].data.message


def test_client_h2_connections_announce_and_enforce_the_stream_bound(installed):
    import h2.connection

    assert "SettingCodes.MAX_CONCURRENT_STREAMS: 100" in inspect.getsource(h2.connection.H2Connection.__init__)
    assert "self.local_settings.acknowledge()" in inspect.getsource(pe._H2_SERVER_INIT.__globals__["BufferedH2Connection"])
    server = Http2Server(_ctx())
    assert server.h2_conn.local_settings.max_concurrent_streams == bounds.MAX_H2_STREAMS
    sent = list(server.handle_event(events.Start()))[0].data  # the server preface: SETTINGS
    assert (3).to_bytes(2, "big") + bounds.MAX_H2_STREAMS.to_bytes(4, "big") in sent
