"""Client connections: at most bounds.MAX_CLIENT_CONNECTIONS open per agent, and what a
connection leaves behind when it closes (its count, the tunnel it became)."""

from __future__ import annotations

from mitmproxy import connection

from agentctl_proxy import bounds
from agentctl_proxy.policy import UNKNOWN_AGENT
from agentctl_proxy.verdict import AuditTrail, mode_name


class Connections(AuditTrail):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._open: dict[str, int] = {}  # open client connections per agent
        self._counted: dict[str, str] = {}  # client id -> the agent it is counted for

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
        self.tunnels.pop(client.id, None)
        agent = self._counted.pop(client.id, None)
        if agent is not None:
            self._open[agent] -= 1
