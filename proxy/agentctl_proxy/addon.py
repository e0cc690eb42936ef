"""agentctl-proxy's addon: one concern per class, each in its own module, as
mitmproxy's own addons/ are written; EgressAddon composes them into one addon.

Decision points, in the order a request meets them:
  client_connected  at most N open connections per agent (connections.py)
  next_layer        which protocol runs on a connection (layer_choice.py)
  http_connect      CONNECT target named by a grant, on an allowed port (before TLS)
  requestheaders    identity, request-target and Host = target, canonical path, grant,
                    rate, body size
  request           upstream address vs upstream_deny_cidrs, secret injection; the
                    decision line of an allowed request is written here, before upstream
  server_connect    the connection goes to the address that was checked (pinning.py)
  responseheaders.. streamed, capped, completed (responses.py)
The last three hooks are RequestPolicy's, below. How decisions reach the audit file:
verdict.py.

Why one addon in the chain and not five: mitmproxy's AddonManager visits every addon for
every event, and again for the `update` that follows each flow event, whether or not it
has a handler (~5 us per addon per event here; bench/results/proxy.md): five entries
would add about 0.15 ms of dispatch to each keep-alive request. Composed, each hook still
lives in exactly one class, and mitmproxy's dispatch is untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging

from mitmproxy import http

from agentctl_proxy import bounds, internals
from agentctl_proxy.connections import Connections
from agentctl_proxy.hosts import is_canonical_ip, is_valid_name, normalize_host, parse_ip_literal, split_host_port
from agentctl_proxy.inbound import (authority_problem, drop_header, frame_for_upstream, header_get, header_problem,
                                    is_absolute_form)
from agentctl_proxy.layer_choice import LayerChoice
from agentctl_proxy.netguard import UpstreamDenied
from agentctl_proxy.paths import check_path, check_query, split_target
from agentctl_proxy.pinning import UpstreamPin
from agentctl_proxy.policy import UNKNOWN_AGENT
from agentctl_proxy.responses import UNREFLECTED, Responses
from agentctl_proxy.secrets import SecretUnavailable, Unreflected, inject_path, render
from agentctl_proxy.verdict import META, AuditTrail, Verdict, mode_name

log = logging.getLogger("agentctl_proxy")

CONTROL_HOST = "agentctl-proxy.internal"
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


class RequestPolicy(AuditTrail):
    """The decision on each CONNECT and request: policy, credentials, the decision line."""

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
                    method="CONNECT", path=f"{host}:{port}", identity=ident, **self.ids(flow))
        flow.metadata[META] = v
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
        if v.action == "allow":  # what goes through the tunnel names this CONNECT
            self.tunnels[flow.client_conn.id] = flow.id

    # --------------------------------------------------------------- requests

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._requestheaders(flow)
        except Exception:
            log.exception("policy error; denying the request")
            v = flow.metadata.get(META) or Verdict(UNKNOWN_AGENT, "tunnel", **self.ids(flow))
            flow.metadata[META] = v
            self._deny(flow, v, 500, "internal error", "the proxy failed to decide; denied")
        v = flow.metadata[META]
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
                    method=req.method, path=path, identity=ident, **self.ids(flow))
        flow.metadata[META] = v
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

        if internals.oversized(flow):  # mitmproxy answers 413 whatever we say: record that
            return self._deny(flow, v, 413, internals.REJECTED_BY, internals.MESSAGE)
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
        v: Verdict | None = flow.metadata.get(META)
        if flow.response is not None:
            return  # already answered (denied, or the control endpoint)
        if v is None or v.action != "allow":  # no decision was made: fail closed
            v = v or Verdict(UNKNOWN_AGENT, mode_name(flow.client_conn.proxy_mode), **self.ids(flow))
            flow.metadata[META] = v
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
            flow.metadata[UNREFLECTED] = Unreflected(rendered, stand_in)  # responses.py keeps it out
        elif inject.header:
            if any(ch in rendered for ch in "\r\n\x00"):
                return self._deny(flow, v, 503, "secret unavailable",
                                  f"secret {spec.label!r} is not a valid header value")
            flow.request.headers[inject.header] = rendered
        else:
            flow.request.query[inject.query_param] = rendered
        v.transforms.append("secrets")
        return None


class EgressAddon(RequestPolicy, Responses, Connections, UpstreamPin, LayerChoice):
    """The one addon agentctl-proxy adds to mitmproxy's chain (see the module docstring)."""

    # the only layer-choosing addon, in place of mitmproxy's NextLayer (internals.py, 5)
    name = internals.NEXT_LAYER
