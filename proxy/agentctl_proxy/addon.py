"""The mitmproxy addon: policy, credentials, limits and audit on each request.

Decision points, in the order a request meets them:
  next_layer     which protocol runs on a connection (layer_choice.py)
  http_connect   CONNECT target named by a grant, on an allowed port (before TLS)
  requestheaders identity, request-target and Host = target, canonical path, grant,
                 rate, body size
  request        upstream address vs upstream_deny_cidrs, secret injection; the
                 decision line of an allowed request is written here, before upstream
  server_connect the connection goes to the address that was checked
How decisions reach the audit file: verdict.py.
"""

from __future__ import annotations

import asyncio
import json
import logging

from mitmproxy import connection, http
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from agentctl_proxy import bounds, limits
from agentctl_proxy.hosts import is_canonical_ip, is_valid_name, normalize_host, parse_ip_literal, split_host_port
from agentctl_proxy.inbound import (authority_problem, drop_header, frame_for_upstream, header_get, header_problem,
                                    is_absolute_form)
from agentctl_proxy.layer_choice import LayerChoice
from agentctl_proxy.netguard import UpstreamDenied
from agentctl_proxy.paths import check_path, check_query, split_target
from agentctl_proxy.policy import UNKNOWN_AGENT
from agentctl_proxy.secrets import SecretUnavailable, Unreflected, inject_path, render
from agentctl_proxy.verdict import Verdict, mode_name

log = logging.getLogger("agentctl_proxy")

CONTROL_HOST = "agentctl-proxy.internal"
_META = "agentctl"
_UNREFLECTED = "agentctl.unreflected"  # a secret injected into the path (secrets.Unreflected)
AUDIT_DOWN = "audit unavailable"


def _error_response(status: int, reason: str) -> http.Response:
    body = json.dumps({"error": reason}) + "\n"
    return http.Response.make(status, body, {"content-type": "application/json", "connection": "close"})


def _host_refusal(host: str, ip: object, what: str) -> tuple[int, str, str] | None:
    """(status, rejected_by, reason) for a target that is neither a canonical IP literal
    nor a valid host name: the same refusal at CONNECT and for the inner request."""
    if ip is not None and not is_canonical_ip(host):
        return 403, "non-canonical IP literal", f"{host} is not a canonical IP address"
    if ip is None and not is_valid_name(host):
        return 400, "invalid host", f"{what} is not a host name"
    return None


class EgressAddon(LayerChoice):
    # the only layer-choosing addon; the name keeps mitmproxy's proxyserver from
    # warning that no "nextlayer" addon is loaded
    name = "nextlayer"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[str, int] = {}  # open client connections per agent
        self._counted: dict[str, str] = {}  # client id -> the agent it is counted for

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _deny(flow: http.HTTPFlow, v: Verdict, status: int, rejected_by: str, reason: str) -> None:
        """Decide a refusal; the hook that decided it records it before it is sent."""
        v.action, v.rejected_by, v.status_code = "deny", rejected_by, status
        flow.response = _error_response(status, reason)

    def _allow_or_refuse(self, flow: http.HTTPFlow, v: Verdict) -> None:
        """Record the decision; if the audit file cannot take it, refuse instead."""
        if not self._record(v, flow.client_conn.peername[0]) and v.action == "allow":
            self._deny(flow, v, 503, AUDIT_DOWN, "the audit log cannot be written; denied")

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
        elif (refusal := _host_refusal(host, ip, "CONNECT target")) is not None:
            self._deny(flow, v, *refusal)
        else:
            # the first open grant of this host, in host_ports() order, that allows the
            # port (tests/test_matcher.py checks it against that scan)
            d = ident.allow.host_grant(host, ip, port, True, closed)
            if d.grant is not None:
                v.action, v.rule, v.status_code = "allow", d.grant.label, 200
            elif d.reason == "port not allowed":
                self._deny(flow, v, 403, "port not allowed", f"port {port} of {host} is not allowed")
            else:
                self._deny(flow, v, 403, "no rule names this host", f"{host} is not allowed")
        self._allow_or_refuse(flow, v)  # one line for the tunnel decision, before the 200

    # --------------------------------------------------------------- requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._requestheaders(flow)
        except Exception:
            log.exception("policy error; denying the request")
            v = flow.metadata.get(_META) or Verdict(UNKNOWN_AGENT, "tunnel")
            flow.metadata[_META] = v
            self._deny(flow, v, 500, "internal error", "the proxy failed to decide; denied")
        v = flow.metadata[_META]
        if flow.response is not None:  # refused (or answered by the proxy) here: final
            self._record(v, flow.client_conn.peername[0])
        # an allow is final only in `request`, after the upstream and secret checks

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
        drop_header(req.headers, b"proxy-authorization")
        tls = client.tls
        v.tls = tls

        # Where the connection names the target (TLS in a tunnel, DNS mode) mitmproxy
        # keeps an absolute-form request-target and forwards it as sent, to the host the
        # connection was checked for, with that host's credentials. We refuse it outright
        # rather than compare its authority: no client sends it there, and nothing that
        # names another host can then slip through a normalisation difference.
        if is_absolute_form(req):
            v.host = normalize_host(req.host) if tls else ""  # tunnel target or SNI
            return self._deny(flow, v, 400, "absolute-form request",
                              "absolute-form request-target inside TLS or in DNS mode")
        if mode == "http":  # DNS mode, plain HTTP: the Host header is the only routing input
            try:
                req.host, req.port = split_host_port(req.host_header or "", 80)
            except ValueError:
                return self._deny(flow, v, 400, "invalid host", "malformed Host header")
        target = normalize_host(req.host)
        v.host, v.port = target, req.port

        if limits.oversized(flow):  # mitmproxy answers 413 whatever we say: record that
            return self._deny(flow, v, 413, limits.REJECTED_BY, limits.MESSAGE)
        if (too_big := bounds.head_problem(req)) is not None:
            return self._deny(flow, v, *too_big)
        if mode == "tunnel" and not tls and target == CONTROL_HOST:
            return self._control(flow, v)
        if ident is None:
            return self._deny(flow, v, 403, "unknown client", "this client address belongs to no agent")
        problem = header_problem(req)
        if problem:
            return self._deny(flow, v, 400, "malformed request", problem)
        mismatch = authority_problem(req, target, req.port, tls)
        if mismatch:
            return self._deny(flow, v, mismatch[0], "host mismatch", mismatch[1])
        if tls and sni is not None and sni != target:
            return self._deny(flow, v, 403, "host mismatch", "SNI does not match the target")
        if (req.scheme == "https") != tls:
            return self._deny(flow, v, 403, "scheme mismatch", "scheme does not match the connection")
        ip = parse_ip_literal(target)
        v.ip = ip
        refusal = _host_refusal(target, ip, "target")
        if refusal is not None:
            return self._deny(flow, v, *refusal)
        upgrade = header_get(req.headers, b"upgrade")
        if upgrade is not None and upgrade.lower() != "websocket":
            return self._deny(flow, v, 403, "upgrade not allowed", "only WebSocket upgrades are relayed")
        verdict = check_path(path)
        if not verdict.ok:
            return self._deny(flow, v, 403, "non-canonical path", f"path refused: {verdict.reason}")
        query_problem = check_query(_query)
        if query_problem:
            return self._deny(flow, v, 403, "non-canonical path", f"query refused: {query_problem}")
        closed = self.rt.policy.closed_set()
        v.encoded_slash = verdict.encoded_slash  # the secrets match reuses it
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

    def _control(self, flow: http.HTTPFlow, v: Verdict) -> None:
        """POST http://agentctl-proxy.internal/v1/ready: close this agent's bootstrap."""
        v.mode = "control"
        ident = v.identity
        if flow.request.method != "POST" or v.path != "/v1/ready":
            return self._deny(flow, v, 404, "unknown control endpoint", "unknown control endpoint")
        if ident is None or ident.bootstrap_deadline is None:
            return self._deny(flow, v, 403, "no bootstrap", "this client has no bootstrap window")
        v.action, v.rule, v.status_code = "allow", "control/ready", 200
        if not self._record(v, flow.client_conn.peername[0]):  # recorded before it closes anything
            return self._deny(flow, v, 503, AUDIT_DOWN, "the audit log cannot be written; denied")
        v.forwarded = False  # answered here: no upstream exchange follows
        self.rt.policy.close_bootstrap(ident.name)
        flow.response = http.Response.make(
            200, json.dumps({"agent": ident.name, "bootstrap": "closed"}) + "\n",
            {"content-type": "application/json"})
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        # In place of mitmproxy's DisableH2C addon (not loaded): an h2c upgrade was refused
        # in requestheaders (only WebSocket upgrades pass), and so was an HTTP/2 preface
        # (`PRI *` is no origin-form path); like DisableH2C, the preface is killed, not answered.
        req = flow.request
        if req.method == "PRI" and req.path == "*" and req.http_version == "HTTP/2.0":
            flow.kill()
            return
        v: Verdict | None = flow.metadata.get(_META)
        if flow.response is not None:
            return  # already answered (denied, or the control endpoint)
        if v is None or v.action != "allow":  # no decision was made: fail closed
            v = v or Verdict(UNKNOWN_AGENT, mode_name(flow.client_conn.proxy_mode))
            flow.metadata[_META] = v
            self._deny(flow, v, 500, "internal error", "no policy decision; denied")
        else:
            try:
                await self._prepare_upstream(flow, v)
            except Exception:
                log.exception("policy error; denying the request")
                self._deny(flow, v, 500, "internal error", "the proxy failed to decide; denied")
        self._allow_or_refuse(flow, v)  # the decision line, before anything goes upstream

    async def _prepare_upstream(self, flow: http.HTTPFlow, v: Verdict) -> None:
        problem = frame_for_upstream(flow.request)
        if problem:
            return self._deny(flow, v, 400, "unframed request", problem)
        try:
            await self.rt.resolver.resolve(v.host, v.port)
        except UpstreamDenied as e:
            return self._deny(flow, v, 403, "upstream_deny_cidrs", str(e))
        ident = v.identity
        assert ident is not None
        # The agent holds no credential by design: whatever it sends as one is dropped,
        # whether or not a secret of ours replaces it.
        drop_header(flow.request.headers, b"authorization")
        if not ident.secrets.grants:  # decide() would find no rule naming the host
            return None
        d = ident.secrets.decide(v.host, v.ip, v.port, v.tls, flow.request.method, v.path, v.encoded_slash)
        if d.grant is None:
            return None
        spec = d.grant.payload
        inject = spec.inject
        if not v.tls:
            return self._deny(flow, v, 403, "secret over cleartext",
                              f"secret {spec.label!r} is never injected into cleartext HTTP")
        if inject.header:
            flow.request.headers.pop(inject.header, None)
        elif inject.query_param:
            flow.request.query.pop(inject.query_param, None)
        try:
            value = self.rt.secrets.get_cached(spec.source, spec.label)
            if value is None:
                value = await asyncio.to_thread(self.rt.secrets.get, spec.label, spec.source)
        except SecretUnavailable as e:
            return self._deny(flow, v, 503, "secret unavailable", str(e))
        rendered = render(inject.formatter, value)
        if inject.path_prefix:
            try:
                injected = inject_path(flow.request.path, inject.path_prefix, rendered, spec.label)
            except SecretUnavailable as e:
                return self._deny(flow, v, 503, "secret unavailable", str(e))
            if injected is None:
                return self._deny(flow, v, 403, "secret path",
                                  f"secret {spec.label!r} goes after {inject.path_prefix}; the path has no place for it")
            flow.request.path, stand_in = injected
            flow.metadata[_UNREFLECTED] = Unreflected(rendered, stand_in)  # see responseheaders
        elif inject.header:
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
        unreflected: Unreflected | None = flow.metadata.get(_UNREFLECTED)
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
        v: Verdict | None = flow.metadata.get(_META)
        if v is None or flow.request.method == "CONNECT":
            return
        if v.action == "allow" and flow.response is not None:
            v.status_code = flow.response.status_code
        if flow.websocket is None:  # a WebSocket completes at websocket_end
            self._complete(flow, v)

    def error(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.get(_META)
        if v is None or flow.request.method == "CONNECT":
            return
        msg = flow.error.msg if flow.error else "error"
        if not v.recorded:  # refused before a decision was final (body cap, client gone)
            if msg == limits.MESSAGE:
                v.action, v.rejected_by, v.status_code = "deny", limits.REJECTED_BY, 413
            else:
                v.action, v.rejected_by = "deny", f"request not completed: {msg}"[:200]
            self._record(v, flow.client_conn.peername[0])
            return
        if v.action == "allow":
            v.status_code = flow.response.status_code if flow.response else 502
            v.rejected_by = f"upstream error: {msg}"[:200]
        self._complete(flow, v)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        v: Verdict | None = flow.metadata.get(_META)
        if v is not None:
            self._complete(flow, v)

    # ---------------------------------------------------------- connections

    def client_connected(self, client: connection.Client) -> None:
        """At most bounds.MAX_CLIENT_CONNECTIONS open connections per agent (every client
        that is no agent shares one count): each connection may hold a request head and
        body in memory. mitmproxy closes a client whose `error` is set here."""
        ident = self._identify(client)
        agent = ident.name if ident else UNKNOWN_AGENT
        if self._open.get(agent, 0) >= bounds.MAX_CLIENT_CONNECTIONS:
            client.error = "too many connections"
            self._deny_conn(client, mode_name(client.proxy_mode), "", None,
                            f"over {bounds.MAX_CLIENT_CONNECTIONS} open connections", agent)
            return
        self._open[agent] = self._open.get(agent, 0) + 1
        self._counted[client.id] = agent

    def client_disconnected(self, client: connection.Client) -> None:
        agent = self._counted.pop(client.id, None)
        if agent is not None:
            self._open[agent] -= 1

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
