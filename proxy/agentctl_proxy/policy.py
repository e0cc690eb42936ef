"""Who may do what: grants per agent, compiled from the config.

Without `agents:` (iron-proxy compatible) the top-level transforms apply to every
client. With `agents:`, a client is identified by its source address; an unknown
client gets nothing (fail closed); a known one gets its own rules, its bootstrap
rules while that window is open, and the top-level "system" rules.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from agentctl_proxy import config as c
from agentctl_proxy.bootstrap_ledger import BootstrapLedger
from agentctl_proxy.kept import KeptAnswers
from agentctl_proxy.matcher import Grant, Matcher
from agentctl_proxy.upgrade_grants import UpgradeGrant

UNKNOWN_AGENT = "-"
ANY_AGENT = "*"  # the identity every client has when there is no agents: section


@dataclass(frozen=True)
class SecretSpec:
    label: str  # safe to log: the configured name, or where it comes from
    source: c.EnvSource | c.FileSource | c.SsmSource
    inject: c.Inject


def secret_label(secret: c.Secret, owner: str, index: int) -> str:
    return secret.name or f"{owner}/secrets[{index}]"


def _grant(rule: c.Rule, label: str, order: int, **extra) -> Grant:
    return Grant(
        label=label,
        host=rule.host,
        methods=frozenset(rule.methods),
        paths=tuple(rule.paths),
        ports=frozenset(rule.ports) if rule.ports is not None else None,
        cidr=ipaddress.ip_network(rule.cidr) if rule.cidr else None,
        allow_encoded_slashes=rule.allow_encoded_slashes,
        rate_limit=rule.rate_limit,
        order=order,
        **extra,
    )


@dataclass
class Identity:
    """The compiled grants of one agent (or of everyone, without agents:)."""

    name: str
    allow: Matcher
    secrets: Matcher  # grants whose payload is a SecretSpec
    bootstrap_deadline: float | None  # monotonic; None = no bootstrap rules


def _compile_transforms(
    transforms: list, owner: str, counter: list[int], allow: list[Grant], secrets: list[Grant]
) -> None:
    for t in transforms:
        if isinstance(t, c.AllowlistTransform):
            for i, rule in enumerate(t.config.every_rule):
                label = f"{owner}/{rule.name}" if rule.name else f"{owner}/allowlist[{i}]"
                allow.append(_grant(rule, label, counter[0]))
                counter[0] += 1
        else:
            for si, secret in enumerate(t.config.secrets):
                spec = SecretSpec(secret_label(secret, owner, si), secret.source, secret.inject)
                for rule in secret.rules:
                    secrets.append(_grant(rule, spec.label, counter[0], payload=spec))
                    counter[0] += 1


class Policy:
    """Maps a client address to an Identity; holds bootstrap state across requests."""

    def __init__(self, cfg: c.Config, now: float | None = None, ledger: BootstrapLedger | None = None,
                 upgrade_grants: list[UpgradeGrant] = ()) -> None:
        now = time.monotonic() if now is None else now
        wall = time.time()
        # Open upgrade grants (upgrade_grants.py), gated like bootstrap rules under the
        # key "upgrade:AGENT": {key: monotonic deadline}.
        self.upgrade_deadlines: dict[str, float] = {}
        self.ledger = ledger if ledger is not None else BootstrapLedger(None)
        self.has_agents = cfg.agents is not None
        self.identities: dict[str, Identity] = {}
        self._nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self.closed: set[str] = set()  # agents whose bootstrap window ended
        self._who: KeptAnswers = KeptAnswers()  # client address -> identity
        self._closed_now: frozenset[str] | None = None  # closed_set()'s answer ...
        self._recheck_at = float("-inf")  # ... until the next open window's deadline
        sys_allow: list[Grant] = []
        sys_secrets: list[Grant] = []
        if not self.has_agents:
            counter = [0]
            _compile_transforms(cfg.transforms, "system", counter, sys_allow, sys_secrets)
            self.identities[ANY_AGENT] = Identity(
                ANY_AGENT, Matcher(sys_allow), Matcher(sys_secrets), None
            )
            return
        for agent in cfg.agents or []:
            counter = [0]
            allow: list[Grant] = []
            secrets: list[Grant] = []
            _compile_transforms(agent.transforms, agent.name, counter, allow, secrets)
            deadline = None
            if agent.bootstrap:
                deadline = now + self.ledger.remaining(agent.name, agent.bootstrap.max_duration)
                for i, rule in enumerate(agent.bootstrap.rules):
                    label = f"{agent.name}/bootstrap[{i}]"
                    allow.append(_grant(rule, label, counter[0], bootstrap=agent.name))
                    counter[0] += 1
            for grant in upgrade_grants:
                if grant.agent != agent.name or not grant.open_at(wall):
                    continue
                key = f"upgrade:{agent.name}"
                self.upgrade_deadlines[key] = now + (grant.deadline - wall)
                for i, rule in enumerate(grant.rules):
                    allow.append(_grant(c.Rule.model_validate(rule), f"{agent.name}/upgrade[{i}]", counter[0],
                                        bootstrap=key))
                    counter[0] += 1
            # system grants come last so an agent's own grant names the match first
            _compile_transforms(cfg.transforms, "system", counter, allow, secrets)
            self.identities[agent.name] = Identity(
                agent.name, Matcher(allow), Matcher(secrets), deadline
            )
            for s in agent.sources:
                self._nets.append((ipaddress.ip_network(s), agent.name))
        self.closed |= {n for n in self.ledger.closed if n in self.identities}
        self.ledger.save()  # records when each window opened

    def identify(self, remote_ip: str) -> Identity | None:
        if not self.has_agents:
            return self.identities[ANY_AGENT]
        # the same client asks request after request
        return self._who.answer(remote_ip, self._identify, remote_ip)

    def _identify(self, remote_ip: str) -> Identity | None:
        try:
            ip = ipaddress.ip_address(remote_ip.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # dual-stack listeners report ::ffff:a.b.c.d
        for net, name in self._nets:
            if ip.version == net.version and ip in net:
                return self.identities[name]
        return None

    def closed_set(self, now: float | None = None) -> frozenset[str]:
        """Agents whose bootstrap grants no longer apply (ready, or timed out)."""
        now = time.monotonic() if now is None else now
        if self._closed_now is not None and now < self._recheck_at:
            return self._closed_now  # no open window has reached its deadline since
        for ident in self.identities.values():
            if ident.bootstrap_deadline is not None and now >= ident.bootstrap_deadline \
                    and ident.name not in self.closed:
                self.closed.add(ident.name)
                self.ledger.close({ident.name})
        expired = {k for k, deadline in self.upgrade_deadlines.items() if now >= deadline}
        self._closed_now = frozenset(self.closed | expired)
        self._recheck_at = min([i.bootstrap_deadline for i in self.identities.values()
                                if i.bootstrap_deadline is not None and i.name not in self.closed]
                               + [d for k, d in self.upgrade_deadlines.items() if k not in expired],
                               default=float("inf"))
        return self._closed_now

    def close_bootstrap(self, agent: str) -> None:
        self.closed.add(agent)  # only ever closes; nothing reopens a window
        self._closed_now = None
        self.ledger.close({agent})

    def carry_state(self, old: Policy) -> None:
        """On reload, a closed bootstrap window stays closed and deadlines are kept."""
        self.closed |= {n for n in old.closed if n in self.identities}
        for name, ident in self.identities.items():
            prev = old.identities.get(name)
            if prev and prev.bootstrap_deadline is not None and ident.bootstrap_deadline is not None:
                ident.bootstrap_deadline = min(prev.bootstrap_deadline, ident.bootstrap_deadline)
        self._closed_now = None

    def all_names(self) -> set[str]:
        """Every host name some grant names exactly (for DNS), and the suffixes."""
        names: set[str] = set()
        for ident in self.identities.values():
            for g in ident.allow.grants:
                if g.host:
                    names.add(g.host)
        return names
