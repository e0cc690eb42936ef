"""internals.py (1) replaces mitmproxy's HttpStream.check_body_size: these tests fail loudly
if a mitmproxy upgrade moves, renames or reshapes that code path, instead of the
request cap silently turning into mitmproxy's own (or none)."""

import inspect

import pytest
from mitmproxy import version
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.options import Options
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpErrorHook, HttpRequestHeadersHook, HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.test import tflow

from agentctl_proxy import internals
from agentctl_proxy import internals as limits  # the body-cap half


def _source(state: str) -> str:
    """mitmproxy's own method (internals.py wraps the first one when installed)."""
    if state == "state_wait_for_request_headers":
        return inspect.getsource(internals._WAIT_FOR_HEADERS)
    return inspect.getsource(getattr(HttpStream, state))

ORIGINAL = limits.MITMPROXY_CHECK_BODY_SIZE


def test_mitmproxy_version_is_the_pinned_range():
    assert int(version.VERSION.split(".")[0]) in (11, 12), version.VERSION


def test_replaced_method_has_the_shape_we_replace():
    assert list(inspect.signature(ORIGINAL).parameters) == ["self", "request"]
    assert inspect.isgeneratorfunction(ORIGINAL)
    assert "body_size_limit" in inspect.getsource(ORIGINAL)  # the option our cap replaces


@pytest.mark.parametrize("state,call", [
    ("state_wait_for_request_headers", "self.check_body_size(True)"),
    ("state_consume_request_body", "self.check_body_size(True)"),
    ("state_wait_for_response_headers", "self.check_body_size(False)"),
    ("state_consume_response_body", "self.check_body_size(False)"),
])
def test_mitmproxy_still_calls_it_where_we_rely_on_it(state, call):
    assert call in _source(state)


def test_early_check_runs_before_the_requestheaders_hook():
    """We yield the headers hook ourselves on an early refusal; mitmproxy must not too."""
    src = _source("state_wait_for_request_headers")
    assert src.index("self.check_body_size(True)") < src.index("HttpRequestHeadersHook(self.flow)")


def test_what_our_version_uses_still_exists():
    assert hasattr(HttpStream, "state_errored")
    assert "self.request_body_buf" in inspect.getsource(HttpStream.__init__)
    assert list(inspect.signature(expected_http_body_size).parameters)[:2] == ["request", "response"]
    assert "code" in inspect.signature(ResponseProtocolError).parameters


def _http_status(code) -> int:
    """mitmproxy 11 sends the code as the status; 12 maps its ErrorCode to one."""
    return code if isinstance(code, int) else code.http_status_code()


def _stream(content_length: int) -> HttpStream:
    opts = Options()
    stream = HttpStream(Context(tflow.tclient_conn(), opts), stream_id=1)
    stream.flow = tflow.tflow()
    stream.flow.request.headers["content-length"] = str(content_length)
    return stream


def _drive(gen):
    out = []
    try:
        while True:
            out.append(next(gen))
    except StopIteration as stop:
        return out, stop.value


def test_installed_cap_refuses_oversized_requests_with_413_only(mitm_patched):
    mitm_patched(4096)
    assert HttpStream.check_body_size is limits._check_body_size
    cmds, stop = _drive(_stream(5000).check_body_size(True))
    assert stop is True
    assert [type(c) for c in cmds] == [HttpRequestHeadersHook, HttpErrorHook, SendHttp]
    assert _http_status(cmds[2].event.code) == 413 and cmds[0].flow.error.msg == limits.MESSAGE
    assert limits.oversized(cmds[0].flow)
    assert _drive(_stream(4096).check_body_size(True)) == ([], False)
    assert _drive(_stream(10**9).check_body_size(False)) == ([], False)  # responses: never
