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


# --- a secret in the URL path (Telegram's Bot API: /bot<token>/<method>) -------------------

_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~:@!$&'()*+,;=-]+$")  # RFC 3986 pchar, nothing percent-encoded


def inject_path(path: str, prefix: str, value: str, label: str = "") -> tuple[str, str] | None:
    """(the path with the segment after `prefix` replaced by `value`, the segment the
    agent sent), or None when the path has no such segment. Whatever the agent put
    there (it holds no credential: a stand-in) is dropped, as for a header."""
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix):]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    if end == 0:
        return None
    if not _PATH_SEGMENT.match(value):
        raise SecretUnavailable(f"secret {label!r} is not a valid URL path segment")
    return prefix + value + rest[end:], rest[:end]


class Unreflected:
    """A response body stream in which the secret never reaches the agent: each
    occurrence becomes the stand-in the agent sent, also across chunk boundaries (the
    last len(secret)-1 bytes wait for the next chunk; mitmproxy flushes with b"").
    `then` is the stream callable it feeds (the body cap). The body's length changes,
    so the proxy drops Content-Length (chunked to an HTTP/1 client)."""

    def __init__(self, secret: str, stand_in: str, then=None) -> None:
        self.secret, self.stand_in = secret.encode(), stand_in.encode()
        self.tail = b""
        self.then = then

    def __call__(self, chunk: bytes) -> list[bytes]:
        data = (self.tail + chunk).replace(self.secret, self.stand_in)
        keep = 0 if chunk == b"" else len(self.secret) - 1
        data, self.tail = (data[:-keep], data[-keep:]) if keep and len(data) > keep else \
            ((b"", data) if keep else (data, b""))
        out = self.then(data) if self.then is not None else data
        # never an empty chunk mid-body: chunked to an HTTP/1 client, it would end the body
        return [out] if out else []

    def header(self, value: str) -> str:
        return value.replace(self.secret.decode(), self.stand_in.decode())
