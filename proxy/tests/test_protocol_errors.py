"""protocol_errors.py wraps two mitmproxy internals so client protocol errors reach the
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
from mitmproxy.proxy.layers.http._http2 import Http2Connection, Http2Server
from mitmproxy.test import tflow

from agentctl_proxy import protocol_errors as pe


@pytest.fixture
def installed():
    h1, h2 = Http1Server.read_headers, Http2Server.__dict__.get("protocol_error")
    pe.install()
    yield
    Http1Server.read_headers = h1
    if h2 is not None:
        Http2Server.protocol_error = h2
    elif "protocol_error" in Http2Server.__dict__:
        del Http2Server.protocol_error


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
