"""One decision and its audit lines: what the proxy decided, recorded before it acts.

Every decision is one audit line (event "decision"), written when it is made; a
decision that cannot be written is a refusal. An exchange that was forwarded adds an
event "complete" line when it ends (status and duration), so a proxy killed
mid-stream still leaves its decision behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from agentctl_proxy.audit import AuditLog, BudgetedAudit, RefusalBudget, new_id
from agentctl_proxy.policy import Identity
from agentctl_proxy.runtime import Runtime

log = logging.getLogger("agentctl_proxy")
META = "agentctl"  # the flow.metadata key of a flow's Verdict


@dataclass
class Verdict:
    """What the proxy decided about one request: its decision line, and a complete
    line if it was forwarded."""

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
    encoded_slash: bool = False  # the path check's finding, for the secrets match
    recorded: bool = False  # its decision line is in the audit file
    forwarded: bool = False  # recorded as allowed: the upstream exchange may start
    completed: bool = False  # its "complete" line is written
    # docs/audit.md: how lines are tied together
    request_id: str | None = None  # mitmproxy's flow id; a fresh one for a connection-level refusal
    conn_id: str | None = None  # mitmproxy's client connection id
    connect_id: str | None = None  # the request_id of the CONNECT whose tunnel carried this


def mode_name(proxy_mode: mode_specs.ProxyMode) -> str:
    if isinstance(proxy_mode, mode_specs.ReverseMode):
        return "https" if proxy_mode.scheme == "https" else "http"
    return "tunnel"


class AuditTrail:
    """Writing verdicts; the addon's base, holding the live runtime and the audit file."""

    def __init__(self, runtime: Runtime, audit: AuditLog) -> None:
        self.rt = runtime
        self.audit = audit
        budget = RefusalBudget()  # the config's defaults (a trail without a runtime: unit tests)
        if runtime is not None:
            budget.configure(runtime.config.log.refusal_burst, runtime.config.log.refusal_rate)
        self.refusals = BudgetedAudit(lambda: self.audit, budget)
        # client connection id -> request_id of the CONNECT that made it a tunnel (one per
        # connection: after CONNECT the connection is the tunnel); dropped on disconnect
        self.tunnels: dict[str, str] = {}

    def ids(self, flow: http.HTTPFlow) -> dict[str, str | None]:
        """The audit ids of a request (Verdict keyword arguments)."""
        client = flow.client_conn
        return {"request_id": flow.id, "conn_id": client.id, "connect_id": self.tunnels.get(client.id)}

    def _identify(self, client: connection.Client) -> Identity | None:
        return self.rt.policy.identify(client.peername[0])

    def _write(self, v: Verdict, remote: str, event: str = "decision") -> bool:
        """One audit line; False if it could not be written (the caller then refuses)."""
        try:
            self.audit.write_values(  # audit.KEYS order
                event, v.request_id, v.conn_id, v.connect_id, remote, v.agent, v.mode, v.host, v.sni, v.method, v.path, v.action, v.rule,
                v.rejected_by, v.status_code, round((time.monotonic() - v.start) * 1000, 3),
                v.transforms,
            )
        except (OSError, ValueError) as e:  # ValueError: stdout closed under us
            log.error("audit write failed (%s); nothing is allowed until it works",
                      getattr(e, "strerror", None) or e)
            return False
        return True

    def _record(self, v: Verdict, remote: str) -> bool:
        """Write the decision line, once; False if it is not on disk."""
        if v.recorded:
            return True
        if v.action != "allow" and not self.refusals.admit(v.agent, remote, v.mode, v.rejected_by or ""):
            v.recorded = True  # over the agent's audit budget: counted in its next summary line
            return True
        v.recorded = self._write(v, remote)
        v.forwarded = v.recorded and v.action == "allow"
        return v.recorded

    def _complete(self, flow: http.HTTPFlow, v: Verdict) -> None:
        """The end of an exchange that was allowed: final status and duration."""
        if v.forwarded and not v.completed:
            v.completed = True
            self._write(v, flow.client_conn.peername[0], "complete")

    def _deny_conn(self, client: connection.Client, mode: str, host: str, sni: str | None,
                   reason: str, agent: str) -> None:
        v = Verdict(agent, mode, host=host, sni=sni, action="deny", rejected_by=reason,
                    request_id=new_id(), conn_id=client.id, connect_id=self.tunnels.get(client.id))
        self._record(v, client.peername[0])
