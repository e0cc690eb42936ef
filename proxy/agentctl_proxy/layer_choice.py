"""Which protocol runs on a connection (the next_layer hook), refusing all else.

No raw TCP, no cleartext inside a tunnel, TLS only where it is expected, SNI equal
to the CONNECT target, DNS-mode TLS routed by SNI, HTTP only as HTTP/1.1 or h2.
Every refusal here is a decision with its audit line.
"""

from __future__ import annotations

import logging

from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import ClientTLSLayer, HttpLayer, ServerTLSLayer, modes
from mitmproxy.proxy.layers.http import HTTPMode, HttpStream
from mitmproxy.proxy.layers.tls import parse_client_hello

from agentctl_proxy.hosts import normalize_host, parse_ip_literal
from agentctl_proxy.policy import UNKNOWN_AGENT
from agentctl_proxy.internals import ClientProtocolError, RequestRefused
from agentctl_proxy.verdict import AuditTrail, Verdict, mode_name

log = logging.getLogger("agentctl_proxy")

HTTP_ALPNS = (b"http/1.1", b"h2")


class Refuse(layer.Layer):
    """Closes the client connection: the answer for anything we do not relay."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
        else:
            yield from ()


class LayerChoice(AuditTrail):
    """The addon's next_layer hook and the protocol refusals it makes."""

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
                nl.layer = self._plain_http(ctx, data, HTTPMode.regular)
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
                nl.layer = self._plain_http(ctx, data, HTTPMode.transparent)
            elif _is(stack, ServerTLSLayer, ClientTLSLayer):
                nl.layer = self._http_after_tls(ctx)
        if nl.layer is None and data and not _waiting(nl):
            names = [type(x).__name__ for x in stack]
            log.warning("refusing unexpected protocol stack %s", names)
            self._deny_conn(ctx.client, mode, _target(ctx), None,
                            f"unexpected protocol stack {'/'.join(names)}", self._agent(ctx))
            nl.layer = Refuse(ctx)

    def _plain_http(self, ctx, data: bytes, http_mode: HTTPMode) -> layer.Layer:
        if starts_like_tls_record(data):
            self._deny_conn(ctx.client, mode_name(ctx.client.proxy_mode), "", None,
                            "TLS on a plain-HTTP port", self._agent(ctx))
            return Refuse(ctx)
        return HttpLayer(ctx, http_mode)

    def _client_hello(self, data: bytes):
        if not data:
            return None
        if not starts_like_tls_record(data):
            raise ValueError("not TLS")
        return parse_client_hello(data)  # None: need more bytes; ValueError: garbage

    def _tunnel_tls(self, ctx, data: bytes) -> layer.Layer | None:
        target = _target(ctx)
        try:
            ch = self._client_hello(data)
        except ValueError:
            self._deny_conn(ctx.client, "tunnel", target, None, "no raw TCP in tunnels; expected TLS", self._agent(ctx))
            return Refuse(ctx)
        if ch is None:
            return None
        sni = normalize_host(ch.sni) if ch.sni else None
        if sni is not None and sni != target:
            self._deny_conn(ctx.client, "tunnel", target, sni, "SNI differs from CONNECT target", self._agent(ctx))
            return Refuse(ctx)
        # The upstream is asked for, and verified as, the name without its trailing dot.
        # Left unset, mitmproxy's TlsConfig.tls_start_server takes `client.sni or
        # server.address[0]` as sent, and `api.example.test.` matches no certificate: 502.
        # An IP target keeps mitmproxy's default (no SNI, the address verified).
        if parse_ip_literal(target) is None:
            ctx.server.sni = target  # normalized; equal to the SNI when there is one
        server_tls = ServerTLSLayer(ctx)
        server_tls.child_layer = ClientTLSLayer(ctx)
        return server_tls

    def _sni_routed(self, ctx, data: bytes) -> layer.Layer | None:
        agent = self._agent(ctx)
        try:
            ch = self._client_hello(data)
        except ValueError:
            self._deny_conn(ctx.client, "https", "", None, "not TLS", agent)
            return Refuse(ctx)
        if ch is None:
            return None
        sni = normalize_host(ch.sni) if ch.sni else ""
        ident = self._identify(ctx.client)
        ip = parse_ip_literal(sni) if sni else None
        closed = self.rt.policy.closed_set()
        if not sni or ident is None or not ident.allow.host_allowed(sni, ip, 443, True, closed):
            reason = "no SNI" if not sni else ("unknown client" if ident is None else "no rule names this host")
            self._deny_conn(ctx.client, "https", sni, sni or None, reason, agent)
            return Refuse(ctx)
        ctx.server.address = (sni, 443)  # routed by SNI; connected lazily, after policy
        ctx.server.sni = sni
        server_tls = ServerTLSLayer(ctx)
        server_tls.child_layer = ClientTLSLayer(ctx)
        return server_tls

    def _http_after_tls(self, ctx) -> layer.Layer:
        if ctx.client.alpn and ctx.client.alpn not in HTTP_ALPNS:  # no ALPN means HTTP/1.1
            alpn = ctx.client.alpn.decode("ascii", "backslashreplace")[:40]
            self._deny_conn(ctx.client, mode_name(ctx.client.proxy_mode), _target(ctx),
                            ctx.client.sni, f"ALPN {alpn!r} is not HTTP/1.1 or h2", self._agent(ctx))
            return Refuse(ctx)
        return HttpLayer(ctx, HTTPMode.transparent)

    def client_protocol_error(self, data: ClientProtocolError) -> None:
        """mitmproxy refused broken HTTP from a client before any request existed."""
        client = data.client
        ident = self._identify(client)
        sni = normalize_host(client.sni) if client.sni else None
        self._deny_conn(client, mode_name(client.proxy_mode), sni or "", sni,
                        f"{data.protocol} {data.reason}", ident.name if ident else UNKNOWN_AGENT)

    def request_refused(self, data: RequestRefused) -> None:
        """mitmproxy answered a parsed request with an error before any flow hook (e.g.
        origin-form without Host on the explicit proxy): its one audit line."""
        f = data.flow
        client = f.client_conn
        ident = self._identify(client)
        sni = normalize_host(client.sni) if client.sni else None
        v = Verdict(ident.name if ident else UNKNOWN_AGENT, mode_name(client.proxy_mode),
                    host=normalize_host(f.request.host) if f.request.host else "", sni=sni,
                    method=f.request.method, path=f.request.path, action="deny",
                    rejected_by=f"mitmproxy: {data.message}", status_code=data.status, **self.ids(f))
        self._record(v, client.peername[0])

    def _agent(self, ctx) -> str:
        ident = self._identify(ctx.client)
        return ident.name if ident else UNKNOWN_AGENT


def _target(ctx) -> str:
    return normalize_host(ctx.server.address[0]) if ctx.server.address else ""


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
