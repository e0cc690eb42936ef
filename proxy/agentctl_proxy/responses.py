"""Responses: streamed, capped, and each forwarded exchange's completion line.

Every response is streamed, never buffered (SSE, long downloads); an allowed one is cut
past `proxy.max_response_body_bytes`; a secret the proxy put into the request path never
comes back to the agent in a header or the body. When an exchange the proxy forwarded ends (response,
upstream error, WebSocket close) its "complete" line carries the final status and
duration, with the decision line's request_id (docs/audit.md). A request refused by
mitmproxy before its decision was final (the request body cap, a client gone) gets its
decision line here, from the error hook.
"""

from __future__ import annotations

from mitmproxy import http

from agentctl_proxy import internals
from agentctl_proxy.secrets import Unreflected
from agentctl_proxy.verdict import META, AuditTrail, Verdict

UNREFLECTED = "agentctl.unreflected"  # flow metadata: a secret injected into the path


class Responses(AuditTrail):
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        assert resp is not None
        cap = self.rt.config.proxy.max_response_body_bytes
        v: Verdict | None = flow.metadata.get(META)
        if cap is not None and v is not None and v.action == "allow":
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > cap:
                v.action, v.rejected_by, v.status_code = "deny", "max_response_body_bytes", 502
                flow.kill()
                return
            resp.stream = _Capped(cap, flow)
        else:
            resp.stream = True  # streamed, never buffered: SSE and long downloads
        unreflected: Unreflected | None = flow.metadata.get(UNREFLECTED)
        if unreflected is not None:  # a secret in the path: never echoed back to the agent
            for name, value in resp.headers.items(multi=True):
                if unreflected.secret.decode() in value:
                    resp.headers.set_all(name, [unreflected.header(x) for x in resp.headers.get_all(name)])
        if unreflected is not None and flow.request.method != "HEAD" and resp.status_code not in (204, 304):
            unreflected.then = resp.stream if callable(resp.stream) else None
            resp.stream = unreflected
            if "content-length" in resp.headers:  # the stand-in's length is not the secret's
                del resp.headers["content-length"]
                if flow.request.http_version.startswith("HTTP/1"):
                    resp.headers["transfer-encoding"] = "chunked"

    def response(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.get(META)
        if v is None or flow.request.method == "CONNECT":
            return
        if v.action == "allow" and flow.response is not None:
            v.status_code = flow.response.status_code
        if flow.websocket is None:  # a WebSocket completes at websocket_end
            self._complete(flow, v)

    def error(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.get(META)
        if v is None or flow.request.method == "CONNECT":
            return
        msg = flow.error.msg if flow.error else "error"
        if not v.recorded:  # refused before a decision was final (body cap, client gone)
            if msg == internals.MESSAGE:
                v.action, v.rejected_by, v.status_code = "deny", internals.REJECTED_BY, 413
            else:
                v.action, v.rejected_by = "deny", f"request not completed: {msg}"[:200]
            self._record(v, flow.client_conn.peername[0])
            return
        if v.action == "allow":
            v.status_code = flow.response.status_code if flow.response else 502
            v.rejected_by = f"upstream error: {msg}"[:200]
        self._complete(flow, v)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.get(META)
        if v is not None:
            self._complete(flow, v)


class _Capped:
    """Streams a response body, cutting the connection once it passes the cap."""

    def __init__(self, cap: int, flow: http.HTTPFlow) -> None:
        self.left = cap
        self.flow = flow

    def __call__(self, chunk: bytes) -> bytes:
        self.left -= len(chunk)
        if self.left < 0:
            v = self.flow.metadata.get(META)
            if v is not None:
                v.action, v.rejected_by = "deny", "max_response_body_bytes"
            raise ConnectionAbortedError("response exceeds max_response_body_bytes")
        return chunk
