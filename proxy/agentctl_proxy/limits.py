"""Request body cap with mitmproxy's own 413 path, without capping responses.

mitmproxy has one `body_size_limit` for requests and responses alike, checked
before any addon sees the response; a 1 MiB request cap would then turn every
larger download into a 502. We replace HttpStream.check_body_size (mitmproxy 11.0.x
and 12.x, both tested) with a version that applies our limit to requests only, both
early (Content-Length) and late (chunked / HTTP/2 without a length), so a body is
never buffered past the cap. Response size is capped separately in the addon.
tests/test_limits.py fails if a mitmproxy upgrade changes this code path.
"""

from __future__ import annotations

from mitmproxy import flow
from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http import HttpErrorHook, HttpRequestHeadersHook, HttpStream
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.proxy.layers.http import SendHttp

try:  # mitmproxy 12: protocol errors carry an ErrorCode, mapped to 413 when sent
    from mitmproxy.proxy.layers.http._events import ErrorCode
    TOO_LARGE: object = ErrorCode.REQUEST_TOO_LARGE
except ImportError:  # mitmproxy 11: the HTTP status itself
    TOO_LARGE = 413

REJECTED_BY = "max_request_body_bytes"
MESSAGE = "Request body exceeds max_request_body_bytes."


# mitmproxy's own method, kept so tests/test_limits.py can check what we replace
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


def install(request_limit: int | None) -> None:
    LIMITS.request = request_limit
    if HttpStream.check_body_size is not _check_body_size:
        HttpStream.check_body_size = _check_body_size  # type: ignore[method-assign]


__all__ = ["install", "oversized", "LIMITS", "REJECTED_BY", "http_layer"]
