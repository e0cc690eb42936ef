"""Everything a config compiles into, swapped as one object on reload."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from agentctl_proxy import config as c
from agentctl_proxy import upgrade_grants
from agentctl_proxy.bootstrap_ledger import BootstrapLedger
from agentctl_proxy.netguard import Resolver
from agentctl_proxy.policy import Policy
from agentctl_proxy.secrets import SecretCache


class RateLimiter:
    """Token bucket per (agent, grant): `rate` requests per minute, burst of `rate`."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def allow(self, key: tuple[str, str], per_minute: int) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


@dataclass
class Runtime:
    config: c.Config
    policy: Policy
    resolver: Resolver
    secrets: SecretCache = field(default_factory=SecretCache)
    rates: RateLimiter = field(default_factory=RateLimiter)

    @classmethod
    def build(cls, cfg: c.Config, previous: Runtime | None = None) -> Runtime:
        records: dict[str, list[str]] = defaultdict(list)
        for r in cfg.dns.records if cfg.dns else []:
            records[r.name.lower().rstrip(".")].append(r.value)
        ledger = previous.policy.ledger if previous is not None else BootstrapLedger(cfg.proxy.state_path)
        policy = Policy(cfg, ledger=ledger, upgrade_grants=upgrade_grants.read())  # re-read on every reload
        rt = cls(cfg, policy, Resolver(cfg.proxy.upstream_deny_cidrs, dict(records)))
        if previous is not None:
            rt.policy.carry_state(previous.policy)
            rt.rates = previous.rates  # a reload must not refill every bucket
            rt.secrets = previous.secrets  # keyed by source; TTLs still apply
        return rt
