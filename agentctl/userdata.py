"""User-data as each cloud takes it, and the size each one accepts.

EC2 takes base64 of at most 16 KB of raw user-data ("limited to 16 KB, in raw form, before
it is base64-encoded": the EC2 User Guide, instancedata-add-user-data; the API's length
constraint on the base64 text is 21847); Hetzner takes text, at most 32 KiB. Where the plain
document is too big it goes gzip-compressed: cloud-init reads gzip user-data as it is,
and its Hetzner datasource base64-decodes user-data first (maybe_b64decode).
"""
from __future__ import annotations

import base64
import gzip
from typing import Callable, Protocol

from agentctl.errors import ConfigError
from agentctl.model import Deployment

EC2_USER_DATA_LIMIT = 16384
HCLOUD_USER_DATA_LIMIT = 32 * 1024


class _Host(Protocol):
    name: str
    role: str
    user_data: str


def ec2_user_data_base64(user_data: str) -> str:
    encoded = ec2_encode(user_data)
    if ec2_size(encoded) > EC2_USER_DATA_LIMIT:
        raise ValueError(f"user-data is {ec2_size(encoded)} bytes after compression; EC2 takes {EC2_USER_DATA_LIMIT}")
    return encoded


def ec2_size(encoded: str) -> int:
    """What EC2's limit counts: the raw bytes, before base64."""
    return len(base64.b64decode(encoded))


def hcloud_user_data(user_data: str) -> str:
    """Plain when it fits Hetzner's 32 KiB; else base64 of gzip."""
    encoded = hcloud_encode(user_data)
    if len(encoded.encode()) > HCLOUD_USER_DATA_LIMIT:
        raise ValueError(f"user-data is {len(encoded)} bytes after compression; Hetzner takes "
                         f"{HCLOUD_USER_DATA_LIMIT}")
    return encoded


def _gzip(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def ec2_encode(user_data: str) -> str:
    raw = user_data.encode()
    return base64.b64encode(raw if len(raw) <= EC2_USER_DATA_LIMIT else _gzip(user_data)).decode()


def hcloud_encode(user_data: str) -> str:
    if len(user_data.encode()) <= HCLOUD_USER_DATA_LIMIT:
        return user_data
    return base64.b64encode(_gzip(user_data)).decode()


# cloud -> (the size its limit counts, of the encoding its stack hands over; the limit in
# bytes; the provider's name)
LIMITS: dict[str, tuple[Callable[[str], int], int, str]] = {
    "aws": (lambda text: ec2_size(ec2_encode(text)), EC2_USER_DATA_LIMIT, "EC2"),
    "hcloud": (lambda text: len(hcloud_encode(text).encode()), HCLOUD_USER_DATA_LIMIT, "Hetzner"),
}


def check_user_data_limits(d: Deployment, hosts: list[_Host], source: str, proxy_with: Callable[[int], str]) -> None:
    """Refuse (exit 2), before anything is written, user-data the cloud would reject
    inside `pulumi up`; the lab's NoCloud seed has no limit. `proxy_with(n)` renders
    the proxy's user-data for the first n agents, to say how many fit."""
    if d.cloud not in LIMITS:
        return
    measure, limit, provider = LIMITS[d.cloud]
    for host in hosts:
        size = measure(host.user_data)
        if size <= limit:
            continue
        if host.role == "agent":
            i = next(i for i, a in enumerate(d.agents) if a.name == host.name)
            raise ConfigError(source, f"agentctl:agents[{i}]", f"host {host.name}'s user-data is {size} bytes as "
                              f"{provider} receives it (limit {limit})", "fewer egress rules and secrets on it")
        fits = _agents_that_fit(len(d.agents), lambda n: measure(proxy_with(n)) <= limit)
        raise ConfigError(source, "agentctl:agents", f"the proxy's user-data is {size} bytes as {provider} receives "
                          f"it (limit {limit}) with {len(d.agents)} agents; at most {fits} fit",
                          f"at most {fits} agents per stack on {d.cloud}: split the agents into several stacks")


def _agents_that_fit(total: int, fits: Callable[[int], bool]) -> int:
    """The proxy's user-data grows with each agent's grants: bisect on the count."""
    lo, hi = 0, total - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo
