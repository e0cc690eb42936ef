"""Pure naming and selection rules of staging stacks: which stack a CI run uses, and
which left-behind stacks `stage reap` may destroy. No I/O here; tests are tables."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from agentctl.errors import ConfigError

PREFIX = "staging-"
# The Pulumi stack tag `stage up` sets on every stack it provisions; `stage reap` selects
# by it alone (a stack's name says nothing about who made it). Stack tags are kept by
# Pulumi Cloud and, since Pulumi CLI 3.211.0, by the DIY backends (file, S3, ...).
STAGING_TAG = "agentctl-staging"
# Pulumi stack names: letters, digits, '-', '_', '.' (Pulumi's own rule); we keep to
# lower case and '-' so the name is also a valid cloud tag value and host label part.
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
MAX_LEN = 63
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def slug(text: str) -> str:
    return _NOT_NAME.sub("-", text.lower()).strip("-")


def stack_name(given: str | None, env: dict[str, str]) -> str:
    """--stack when given; else from GitHub Actions' environment: a pull request ->
    staging-pr-<number> (one stack per PR, reused by its pushes), another ref ->
    staging-<ref>. Outside CI with no --stack: bad input."""
    if given:
        return given
    ref = env.get("GITHUB_REF", "")
    m = re.fullmatch(r"refs/pull/(\d+)/(merge|head)", ref)
    if m:
        return f"{PREFIX}pr-{m.group(1)}"
    name = slug(env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or "")
    if name:
        return (PREFIX + name)[:MAX_LEN].rstrip("-")
    raise ConfigError("--stack", "", "not given, and no CI environment to derive it from",
                      "--stack NAME, or GITHUB_REF / GITHUB_HEAD_REF set (GitHub Actions)")


def parse_age(text: str) -> timedelta:
    """'6h' -> 6 hours. Raises ValueError (the caller names the option)."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


@dataclass(frozen=True)
class StackInfo:
    name: str
    last_update: datetime | None  # None: never updated (created, never deployed)
    update_in_progress: bool = False
    tags: dict[str, str] | None = None  # None: not read (yet)


def stale(stacks: list[StackInfo], now: datetime, older_than: timedelta) -> list[str]:
    """Old enough to reap: not being updated right now, last updated before
    now - older_than. A stack never updated has nothing to destroy in the cloud and is
    left to whoever created it."""
    cutoff = now - older_than
    return sorted(s.name for s in stacks
                  if not s.update_in_progress and s.last_update is not None and s.last_update < cutoff)


def made_by_stage(s: StackInfo) -> bool:
    """Selected by its tag only: `stage up` tagged it (names.STAGING_TAG = "true")."""
    return (s.tags or {}).get(STAGING_TAG) == "true"
