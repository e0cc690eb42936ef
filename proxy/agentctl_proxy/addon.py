"""The mitmproxy addon: layer choice, policy, credentials, limits and audit.

Decision points, in the order a request meets them:
  next_layer     which protocol runs on a connection; no raw TCP, TLS only in tunnels,
                 SNI must equal the CONNECT target; DNS-mode TLS routed by SNI
  http_connect   CONNECT target named by a grant, on an allowed port (before TLS)
  requestheaders identity, Host = target, canonical path, grant, rate, body size
  request        upstream address vs upstream_deny_cidrs, secret injection
  server_connect the connection goes to the address that was checked
Every request decision is written to the audit file once, in `response` or `error`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from mitmproxy import connection, http
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, mode_specs
from mitmproxy.proxy.layers import ClientTLSLayer, HttpLayer, ServerTLSLayer, modes
from mitmproxy.proxy.layers.http import HTTPMode, HttpStream
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from agentctl_proxy import limits
from agentctl_proxy.audit import AuditLog
from agentctl_proxy.hosts import is_canonical_ip, is_valid_name, normalize_host, parse_ip_literal, split_host_port
from agentctl_proxy.netguard import UpstreamDenied
from agentctl_proxy.paths import check_path, split_target
from agentctl_proxy.policy import UNKNOWN_AGENT, Identity
from agentctl_proxy.runtime import Runtime
from agentctl_proxy.secrets import SecretUnavailable, render

log = logging.getLogger("agentctl_proxy")

CONTROL_HOST = "agentctl-proxy.internal"
HTTP_ALPNS = (b"http/1.1", b"h2")
_META = "agentctl"


class _Refuse(layer.Layer):
    """Closes the client connection: the answer for anything we do not relay."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
        else:
            yield from ()


@dataclass
class Verdict:
    """What the proxy decided about one request; becomes one audit line."""

    agent: str
    mode: str
    host: str = ""
    sni: str | None = None
    method: str = ""
    path: str = ""
    action: str = "pending"  # fail closed: only an explicit decision says "allow"
    rule: str | None = None
    rejected_by: str | None = None
    status_code: int | None = None
    transforms: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)
    identity: Identity | None = None
    port: int = 0
    tls: bool = False
    ip: object = None


def mode_name(proxy_mode: mode_specs.ProxyMode) -> str:
    if isinstance(proxy_mode, mode_specs.ReverseMode):
        return "https" if proxy_mode.scheme == "https" else "http"
    return "tunnel"


def _error_response(status: int, reason: str) -> http.Response:
    body = json.dumps({"error": reason}) + "\n"
    return http.Response.make(status, body, {"content-type": "application/json", "connection": "close"})


class EgressAddon:
    # the only layer-choosing addon; the name keeps mitmproxy's proxyserver from
    # warning that no "nextlayer" addon is loaded
    name = "nextlayer"

    def __init__(self, runtime: Runtime, audit: AuditLog) -> None:
        self.rt = runtime
        self.audit = audit

    # ---------------------------------------------------------------- helpers

    def _identify(self, client: connection.Client) -> Identity | None:
        return self.rt.policy.identify(client.peername[0])

    def _write(self, v: Verdict, remote: str) -> None:
        self.audit.write(
            remote_addr=remote, agent=v.agent, mode=v.mode, host=v.host, sni=v.sni,
            method=v.method, path=v.path, action=v.action, rule=v.rule,
            rejected_by=v.rejected_by, status_code=v.status_code,
            duration_ms=round((time.monotonic() - v.start) * 1000, 3),
            request_transforms=v.transforms,
        )

    def _deny_conn(self, client: connection.Client, mode: str, host: str, sni: str | None,
                   reason: str, agent: str) -> None:
        v = Verdict(agent, mode, host=host, sni=sni, action="deny", rejected_by=reason)
        self._write(v, client.peername[0])

    @staticmethod
    def _deny(flow: http.HTTPFlow, v: Verdict, status: int, rejected_by: str, reason: str) -> None:
        v.action, v.rejected_by, v.status_code = "deny", rejected_by, status
        flow.response = _error_response(status, reason)

    # ------------------------------------------------------------ next_layer

    def next_layer(self, nl: layer.NextLayer) -> None:
        if nl.layer is not None:
            return
        ctx = nl.context
        data = nl.data_client()
        stack = ctx.layers
        top = stack[0]
        mode = mode_name(ctx.client.proxy_mode)
        if isinstance(top, modes.HttpProxy):
            if len(stack) == 1:  # the explicit proxy: plain HTTP (CONNECT / absolute-form)
                if not data:
                    return
                nl.layer = _Refuse(ctx) if starts_like_tls_record(data) else HttpLayer(ctx, HTTPMode.regular)
            elif _is(stack, HttpLayer, HttpStream):  # inside an accepted CONNECT: TLS only
                nl.layer = self._tunnel_tls(ctx, data)
            elif _is(stack, HttpLayer, HttpStream, ServerTLSLayer, ClientTLSLayer):
                nl.layer = self._http_after_tls(ctx)
        elif isinstance(top, modes.ReverseProxy):
            if len(stack) == 1 and mode == "https":
                nl.layer = self._sni_routed(ctx, data)
            elif len(stack) == 1:
                if not data:
                    return
                nl.layer = _Refuse(ctx) if starts_like_tls_record(data) else HttpLayer(ctx, HTTPMode.transparent)
            elif _is(stack, ServerTLSLayer, ClientTLSLayer):
                nl.layer = self._http_after_tls(ctx)
        if nl.layer is None and data and not _waiting(nl):
            log.warning("refusing unexpected protocol stack %s", [type(x).__name__ for x in stack])
            nl.layer = _Refuse(ctx)

    def _client_hello(self, data: bytes):
        if not data:
            return None
        if not starts_like_tls_record(data):
            raise ValueError("not TLS")
        return parse_client_hello(data)  # None: need more bytes; ValueError: garbage

    def _tunnel_tls(self, ctx, data: bytes) -> layer.Layer | None:
        target = normalize_host(ctx.server.address[0]) if ctx.server.address else ""
        try:
            ch = self._client_hello(data)
        except ValueError:
            self._deny_conn(ctx.client, "tunnel", target, None, "no raw TCP in tunnels; expected TLS", self._agent(ctx))
            return _Refuse(ctx)
        if ch is None:
            return None
        sni = normalize_host(ch.sni) if ch.sni else None
        if sni is not None and sni != target:
            self._deny_conn(ctx.client, "tunnel", target, sni, "SNI differs from CONNECT target", self._agent(ctx))
            return _Refuse(ctx)
        server_tls = ServerTLSLayer(ctx)
        server_tls.child_layer = ClientTLSLayer(ctx)
        return server_tls

    def _sni_routed(self, ctx, data: bytes) -> layer.Layer | None:
        agent = self._agent(ctx)
        try:
            ch = self._client_hello(data)
        except ValueError:
            self._deny_conn(ctx.client, "https", "", None, "not TLS", agent)
            return _Refuse(ctx)
        if ch is None:
            return None
        sni = normalize_host(ch.sni) if ch.sni else ""
        ident = self._identify(ctx.client)
        ip = parse_ip_literal(sni) if sni else None
        closed = self.rt.policy.closed_set()
        if not sni or ident is None or not ident.allow.host_allowed(sni, ip, 443, True, closed):
            reason = "no SNI" if not sni else ("unknown client" if ident is None else "no rule names this host")
            self._deny_conn(ctx.client, "https", sni, sni or None, reason, agent)
            return _Refuse(ctx)
        ctx.server.address = (sni, 443)  # routed by SNI; connected lazily, after policy
        ctx.server.sni = sni
        server_tls = ServerTLSLayer(ctx)
        server_tls.child_layer = ClientTLSLayer(ctx)
        return server_tls

    def _http_after_tls(self, ctx) -> layer.Layer:
        if ctx.client.alpn and ctx.client.alpn not in HTTP_ALPNS:  # no ALPN means HTTP/1.1
            return _Refuse(ctx)
        return HttpLayer(ctx, HTTPMode.transparent)

    def _agent(self, ctx) -> str:
        ident = self._identify(ctx.client)
        return ident.name if ident else UNKNOWN_AGENT

    # ---------------------------------------------------------------- CONNECT

    def http_connect(self, flow: http.HTTPFlow) -> None:
        ident = self._identify(flow.client_conn)
        host = normalize_host(flow.request.host)
        port = flow.request.port
        v = Verdict(ident.name if ident else UNKNOWN_AGENT, "tunnel", host=host,
                    method="CONNECT", path=f"{host}:{port}", identity=ident)
        flow.metadata[_META] = v
        ip = parse_ip_literal(host)
        closed = self.rt.policy.closed_set()
        if ident is None:
            self._deny(flow, v, 403, "unknown client", "this client address belongs to no agent")
        elif ip is not None and not is_canonical_ip(host):
            self._deny(flow, v, 403, "non-canonical IP literal", f"{host} is not a canonical IP address")
        elif ip is None and not is_valid_name(host):
            self._deny(flow, v, 400, "invalid host", "CONNECT target is not a host name")
        else:
            grants = [g for g in ident.allow.host_ports(host, ip)
                      if not (g.bootstrap and g.bootstrap in closed)]
            ok = [g for g in grants if g.port_ok(port, True)]
            if not grants:
                self._deny(flow, v, 403, "no rule names this host", f"{host} is not allowed")
            elif not ok:
                self._deny(flow, v, 403, "port not allowed", f"port {port} of {host} is not allowed")
            else:
                v.action, v.rule, v.status_code = "allow", ok[0].label, 200
        self._write(v, flow.client_conn.peername[0])  # one line for the tunnel decision

    # --------------------------------------------------------------- requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._requestheaders(flow)
        except Exception:
            log.exception("policy error; denying the request")
            v = flow.metadata.get(_META) or Verdict(UNKNOWN_AGENT, "tunnel")
            flow.metadata[_META] = v
            self._deny(flow, v, 500, "internal error", "the proxy failed to decide; denied")

    def _requestheaders(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        client = flow.client_conn
        mode = mode_name(client.proxy_mode)
        ident = self._identify(client)
        sni = normalize_host(client.sni) if client.sni else None
        path, _query = split_target(req.path)
        v = Verdict(ident.name if ident else UNKNOWN_AGENT, mode, sni=sni,
                    method=req.method, path=path, identity=ident)
        flow.metadata[_META] = v
        # never forwarded, whatever happens next
        req.headers.pop("proxy-authorization", None)
        tls = client.tls
        v.tls = tls

        if mode == "http":  # DNS mode, plain HTTP: the Host header is the only routing input
            try:
                req.host, req.port = split_host_port(req.host_header or "", 80)
            except ValueError:
                return self._deny(flow, v, 400, "invalid host", "malformed Host header")
        target = normalize_host(req.host)
        v.host, v.port = target, req.port

        if mode == "tunnel" and not tls and target == CONTROL_HOST:
            return self._control(flow, v)
        if ident is None:
            return self._deny(flow, v, 403, "unknown client", "this client address belongs to no agent")
        problem = self._header_problem(req)
        if problem:
            return self._deny(flow, v, 400, "malformed request", problem)
        hosts = req.headers.get_all("host")
        authority = req.host_header
        if len(hosts) > 1 or not authority:
            return self._deny(flow, v, 400, "host mismatch", "expected exactly one Host header")
        try:
            h_host, h_port = split_host_port(authority, 443 if tls else 80)
        except ValueError:
            return self._deny(flow, v, 400, "host mismatch", "malformed Host header")
        if (h_host, h_port) != (target, req.port):
            return self._deny(flow, v, 403, "host mismatch",
                              f"Host {h_host} does not match the target {target}")
        if tls and sni is not None and sni != target:
            return self._deny(flow, v, 403, "host mismatch", "SNI does not match the target")
        if (req.scheme == "https") != tls:
            return self._deny(flow, v, 403, "scheme mismatch", "scheme does not match the connection")
        ip = parse_ip_literal(target)
        v.ip = ip
        if ip is not None and not is_canonical_ip(target):
            return self._deny(flow, v, 403, "non-canonical IP literal", f"{target} is not a canonical IP address")
        if ip is None and not is_valid_name(target):
            return self._deny(flow, v, 400, "invalid host", "target is not a host name")
        upgrade = req.headers.get("upgrade")
        if upgrade is not None and upgrade.lower() != "websocket":
            return self._deny(flow, v, 403, "upgrade not allowed", "only WebSocket upgrades are relayed")
        verdict = check_path(path)
        if not verdict.ok:
            return self._deny(flow, v, 403, "non-canonical path", f"path refused: {verdict.reason}")
        closed = self.rt.policy.closed_set()
        d = ident.allow.decide(target, ip, req.port, tls, req.method, path, verdict.encoded_slash, closed)
        if d.grant is None:
            return self._deny(flow, v, 403, d.reason, f"not allowed: {d.reason}")
        v.rule = d.grant.label
        if d.grant.rate_limit and not self.rt.rates.allow((ident.name, d.grant.label), d.grant.rate_limit):
            self._deny(flow, v, 429, "rate_limit", f"rate limit of {d.grant.rate_limit}/min for {d.grant.label}")
            flow.response.headers["retry-after"] = "60"
            return None
        v.transforms.append("allowlist")
        v.action = "allow"
        return None

    @staticmethod
    def _header_problem(req: http.Request) -> str | None:
        for name, value in req.headers.fields:
            if any(c in value for c in b"\r\n\x00") or any(c in name for c in b"\r\n\x00: "):
                return "header with CR, LF or NUL"
        if "transfer-encoding" in req.headers and "content-length" in req.headers:
            return "both Content-Length and Transfer-Encoding"
        lengths = req.headers.get_all("content-length")
        if len(set(lengths)) > 1 or any(not x.strip().isdigit() for x in lengths):
            return "conflicting or malformed Content-Length"
        te = req.headers.get_all("transfer-encoding")
        if te and (len(te) > 1 or te[0].strip().lower() != "chunked"):
            return "Transfer-Encoding other than chunked"
        return None

    def _control(self, flow: http.HTTPFlow, v: Verdict) -> None:
        """POST http://agentctl-proxy.internal/v1/ready: close this agent's bootstrap."""
        v.mode = "control"
        ident = v.identity
        if flow.request.method != "POST" or v.path != "/v1/ready":
            return self._deny(flow, v, 404, "unknown control endpoint", "unknown control endpoint")
        if ident is None or ident.bootstrap_deadline is None:
            return self._deny(flow, v, 403, "no bootstrap", "this client has no bootstrap window")
        self.rt.policy.close_bootstrap(ident.name)
        v.rule, v.status_code = "control/ready", 200
        flow.response = http.Response.make(
            200, json.dumps({"agent": ident.name, "bootstrap": "closed"}) + "\n",
            {"content-type": "application/json"})
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.get(_META)
        if flow.response is not None:
            return  # already answered (denied, or the control endpoint)
        if v is None or v.action != "allow":  # no decision was made: fail closed
            v = v or Verdict(UNKNOWN_AGENT, mode_name(flow.client_conn.proxy_mode))
            flow.metadata[_META] = v
            return self._deny(flow, v, 500, "internal error", "no policy decision; denied")
        try:
            await self._prepare_upstream(flow, v)
        except Exception:
            log.exception("policy error; denying the request")
            self._deny(flow, v, 500, "internal error", "the proxy failed to decide; denied")

    async def _prepare_upstream(self, flow: http.HTTPFlow, v: Verdict) -> None:
        try:
            await self.rt.resolver.resolve(v.host, v.port)
        except UpstreamDenied as e:
            return self._deny(flow, v, 403, "upstream_deny_cidrs", str(e))
        ident = v.identity
        assert ident is not None
        # The agent holds no credential by design: whatever it sends as one is dropped,
        # whether or not a secret of ours replaces it.
        flow.request.headers.pop("authorization", None)
        d = ident.secrets.decide(v.host, v.ip, v.port, v.tls, flow.request.method, v.path,
                                 check_path(v.path).encoded_slash)
        if d.grant is None:
            return None
        spec = d.grant.payload
        inject = spec.inject
        if not v.tls:
            return self._deny(flow, v, 403, "secret over cleartext",
                              f"secret {spec.label!r} is never injected into cleartext HTTP")
        if inject.header:
            flow.request.headers.pop(inject.header, None)
        else:
            flow.request.query.pop(inject.query_param, None)
        try:
            value = self.rt.secrets.get_cached(spec.source, spec.label)
            if value is None:
                value = await asyncio.to_thread(self.rt.secrets.get, spec.label, spec.source)
        except SecretUnavailable as e:
            return self._deny(flow, v, 503, "secret unavailable", str(e))
        rendered = render(inject.formatter, value)
        if inject.header:
            if any(ch in rendered for ch in "\r\n\x00"):
                return self._deny(flow, v, 503, "secret unavailable",
                                  f"secret {spec.label!r} is not a valid header value")
            flow.request.headers[inject.header] = rendered
        else:
            flow.request.query[inject.query_param] = rendered
        v.transforms.append("secrets")
        return None

    # -------------------------------------------------------------- responses

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        assert resp is not None
        cap = self.rt.config.proxy.max_response_body_bytes
        v: Verdict | None = flow.metadata.get(_META)
        if cap is not None and v is not None and v.action == "allow":
            length = resp.headers.get("content-length", "")
            if length.isdigit() and int(length) > cap:
                v.action, v.rejected_by, v.status_code = "deny", "max_response_body_bytes", 502
                flow.kill()
                return
            resp.stream = _Capped(cap, flow)
        else:
            resp.stream = True  # streamed, never buffered: SSE and long downloads

    def response(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.pop(_META, None)
        if v is None or flow.request.method == "CONNECT":
            return
        v.status_code = flow.response.status_code if flow.response else v.status_code
        self._write(v, flow.client_conn.peername[0])

    def error(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.pop(_META, None)
        if v is None or flow.request.method == "CONNECT":
            return
        msg = flow.error.msg if flow.error else "error"
        if msg == limits.MESSAGE:
            v.action, v.rejected_by, v.status_code = "deny", limits.REJECTED_BY, 413
        elif v.action == "allow":
            v.status_code = 502
            v.rejected_by = f"upstream error: {msg}"[:200]
        self._write(v, flow.client_conn.peername[0])

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        pass  # the upgrade request was decided and audited like any request

    # ---------------------------------------------------------- connections

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        """Connect to the address that passed upstream_deny_cidrs, never re-resolve."""
        host, port = data.server.address
        try:
            ip = await self.rt.resolver.resolve(normalize_host(host), port)
        except UpstreamDenied as e:
            data.server.error = str(e)
            return
        _ORIGINAL[data.server.id] = data.server.address
        data.server.address = (str(ip), port)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        self._restore(data.server)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self._restore(data.server)

    @staticmethod
    def _restore(server: connection.Server) -> None:
        # Connection reuse compares addresses by name: give the name back (the IP
        # stays in server.peername). Server forbids changing address once open to
        # stop addons from redirecting live connections; this only undoes our own
        # substitution from server_connect, so we step around that guard.
        original = _ORIGINAL.pop(server.id, None)
        if original is not None:
            object.__setattr__(server, "address", original)


_ORIGINAL: dict[str, tuple[str, int]] = {}


class _Capped:
    """Streams a response body, cutting the connection once it passes the cap."""

    def __init__(self, cap: int, flow: http.HTTPFlow) -> None:
        self.left = cap
        self.flow = flow

    def __call__(self, chunk: bytes) -> bytes:
        self.left -= len(chunk)
        if self.left < 0:
            v = self.flow.metadata.get(_META)
            if v is not None:
                v.action, v.rejected_by = "deny", "max_response_body_bytes"
            raise ConnectionAbortedError("response exceeds max_response_body_bytes")
        return chunk


def _is(stack: list, *below_top: type) -> bool:
    """The layers under the top-level mode layer are exactly these types."""
    rest = stack[1:]
    return len(rest) == len(below_top) and all(isinstance(x, t) for x, t in zip(rest, below_top))


def _waiting(nl: layer.NextLayer) -> bool:
    """True while a ClientHello is still arriving (the decision is deferred)."""
    data = nl.data_client()
    return bool(data) and starts_like_tls_record(data) and _incomplete(data)


def _incomplete(data: bytes) -> bool:
    try:
        return parse_client_hello(data) is None
    except ValueError:
        return False
