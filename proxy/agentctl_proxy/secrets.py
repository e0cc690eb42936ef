"""Secret sources (env, file, aws_ssm) behind one TTL cache.

A value is cached for `ttl`; a failure is remembered for `failure_ttl` so a dead
source is not hammered. Errors carry the secret's label and the kind of failure,
never the value (nor anything read from the source).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass

from agentctl_proxy import config as c


class SecretUnavailable(Exception):
    """str() is safe to show to a client and to write to the audit file."""


def _fetch_env(src: c.EnvSource) -> str:
    value = os.environ.get(src.var)
    if not value:
        raise SecretUnavailable(f"environment variable {src.var} is not set")
    return value


def _fetch_file(src: c.FileSource) -> str:
    try:
        with open(src.path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        raise SecretUnavailable(f"cannot read {src.path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SecretUnavailable(f"{src.path} is not UTF-8 text") from None
    if not value:
        raise SecretUnavailable(f"{src.path} is empty")
    return value


def _fetch_ssm(src: c.SsmSource) -> str:
    import boto3  # boto3 import costs ~0.3 s; only configs using SSM pay it
    import botocore.exceptions

    try:
        client = boto3.client("ssm", region_name=src.region)
        resp = client.get_parameter(Name=src.name, WithDecryption=src.with_decryption)
        return resp["Parameter"]["Value"]
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "ClientError")
        raise SecretUnavailable(f"SSM parameter {src.name}: {code}") from None
    except botocore.exceptions.BotoCoreError as e:
        raise SecretUnavailable(f"SSM parameter {src.name}: {type(e).__name__}") from None


def fetch(src: c.EnvSource | c.FileSource | c.SsmSource) -> str:
    if isinstance(src, c.EnvSource):
        return _fetch_env(src)
    if isinstance(src, c.FileSource):
        return _fetch_file(src)
    return _fetch_ssm(src)


@dataclass
class _Entry:
    value: str | None
    error: str | None
    expires: float


class SecretCache:
    """Thread-safe: SSM fetches run in a worker thread, off the event loop."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[object, _Entry] = {}
        self._lock = threading.Lock()

    def get_cached(self, src: c.EnvSource | c.FileSource | c.SsmSource, label: str = "") -> str | None:
        """The fresh cached value, or None when a fetch is due (never blocks)."""
        with self._lock:
            entry = self._entries.get(src)
        if entry is None or self._clock() >= entry.expires:
            return None
        if entry.value is None:
            raise SecretUnavailable(f"secret {label!r} is unavailable: {entry.error}")
        return entry.value

    def get(self, label: str, src: c.EnvSource | c.FileSource | c.SsmSource) -> str:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(src)
        if entry is None or now >= entry.expires:
            try:
                value = fetch(src)
            except SecretUnavailable as e:
                entry = _Entry(None, str(e), now + src.failure_ttl)
            except Exception as e:  # a source must fail closed, whatever broke
                entry = _Entry(None, type(e).__name__, now + src.failure_ttl)
            else:
                entry = _Entry(value, None, now + src.ttl)
            with self._lock:
                self._entries[src] = entry
        if entry.value is None:
            raise SecretUnavailable(f"secret {label!r} is unavailable: {entry.error}")
        return entry.value


def render(formatter: str, value: str) -> str:
    return re.sub(r"\{\{\s*\.Value\s*\}\}", lambda _: value, formatter, count=1)
