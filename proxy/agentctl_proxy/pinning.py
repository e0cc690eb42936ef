"""Upstream pinning: a connection goes to the address that passed upstream_deny_cidrs.

server_connect resolves the name once more through the same Resolver (its answer for
this name was checked in `request`, and is cached) and connects to that address, never
letting the name be re-resolved between the check and the connect (DNS rebinding). Once
connected, the name is put back (internals.py, 4) so mitmproxy can reuse the connection.
"""

from __future__ import annotations

from mitmproxy import connection
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from agentctl_proxy import internals
from agentctl_proxy.hosts import normalize_host
from agentctl_proxy.netguard import UpstreamDenied
from agentctl_proxy.verdict import AuditTrail


class UpstreamPin(AuditTrail):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._names: dict[str, tuple[str, int]] = {}  # server id -> the address it was asked by

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        """Connect to the address that passed upstream_deny_cidrs, never re-resolve."""
        host, port = data.server.address
        try:
            ip = await self.rt.resolver.resolve(normalize_host(host), port)
        except UpstreamDenied as e:
            data.server.error = str(e)
            return
        self._names[data.server.id] = data.server.address
        data.server.address = (str(ip), port)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        self._restore(data.server)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self._restore(data.server)

    def _restore(self, server: connection.Server) -> None:
        # connection reuse compares addresses by name: give the name back (internals.py, 4)
        original = self._names.pop(server.id, None)
        if original is not None:
            internals.restore_address(server, original)
