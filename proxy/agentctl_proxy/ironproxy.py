"""Configs written for iron-proxy, read as iron-proxy reads them.

iron-proxy (github.com/ironsh/iron-proxy) reads its file in internal/config/config.go
(listeners, tls, log, dns), internal/transform/allowlist/allowlist.go (`domains:`,
`cidrs:`, `rules:`) and internal/hostmatch (rule.go: a missing `methods` or `paths`
means all; hostmatch.go: host patterns are Go path.Match globs, so `*openai.com` also
matches evilopenai.com). Most of that is the shared schema's own reading. Where our
pinned semantics are stricter, a file without our `agents:` extension (an iron-proxy
file) still loads, and `check` prints one warning line per difference:

- a host glob other than an exact name, `*` or `*.example.com` is refused: the rule
  (or `domains:` entry) is left out, so what it would have allowed stays closed;
- an unset `https_listen`/`http_listen` is not listened on (iron-proxy: :443 and :80);
- an unset `upstream_deny_cidrs` refuses private ranges too (iron-proxy's default
  refuses only loopback and the metadata address: its internal/dnsguard);
- `tls.cert_cache_size` is accepted but not applied (mitmproxy caches its own).

A file with `agents:` (what `agentctl render` writes) gets no leniency: a glob there
is an error, as in the stack file.
"""

from __future__ import annotations

import re
from typing import Any

from agentctl_proxy.schema.values import host_pattern

# iron-proxy's internal/dnsguard DefaultDenyCIDRs
IRON_DEFAULT_DENY = ("169.254.169.254/32", "fd00:ec2::254/128", "127.0.0.0/8", "::1/128")
Dropped = dict[tuple[Any, ...], list[int]]  # list location -> original indices left out


def is_iron_file(data: Any) -> bool:
    return isinstance(data, dict) and "agents" not in data


def adapt(data: dict[str, Any]) -> tuple[dict[str, Any], Dropped, list[str]]:
    """A copy of an iron-proxy file without the rules we refuse, what was left out
    (to name keys as the user wrote them), and the warning lines (key path: text)."""
    warnings: list[str] = []
    dropped: Dropped = {}
    out = dict(data)
    transforms = data.get("transforms")
    if isinstance(transforms, list):
        out["transforms"] = [_transform(t, ("transforms", i), dropped, warnings) for i, t in enumerate(transforms)]
    proxy = data.get("proxy") if isinstance(data.get("proxy"), dict) else {}
    for key, port in (("https_listen", 443), ("http_listen", 80)):
        if proxy.get(key) is None:
            warnings.append(f"proxy.{key}: not set; iron-proxy would listen on :{port}, agentctl-proxy does not")
    if "upstream_deny_cidrs" not in proxy:
        warnings.append("proxy.upstream_deny_cidrs: not set; iron-proxy would refuse only "
                        f"{', '.join(IRON_DEFAULT_DENY)}, here private, link-local and multicast ranges too")
    tls = data.get("tls") if isinstance(data.get("tls"), dict) else {}
    if "cert_cache_size" in tls:
        warnings.append("tls.cert_cache_size: accepted but not applied; mitmproxy keeps its own certificate cache")
    return out, dropped, warnings


def _transform(t: Any, loc: tuple[Any, ...], dropped: Dropped, warnings: list[str]) -> Any:
    if not isinstance(t, dict) or not isinstance(t.get("config"), dict):
        return t
    config = dict(t["config"])
    here = (*loc, "config")
    for key in ("domains", "rules"):
        if isinstance(config.get(key), list):
            config[key] = _kept(config[key], (*here, key), key == "rules", dropped, warnings)
    if isinstance(config.get("secrets"), list):
        secrets = []
        for i, s in enumerate(config["secrets"]):
            if isinstance(s, dict) and isinstance(s.get("rules"), list):
                s = dict(s, rules=_kept(s["rules"], (*here, "secrets", i, "rules"), True, dropped, warnings))
            secrets.append(s)
        config["secrets"] = secrets
    return dict(t, config=config)


def _kept(items: list[Any], loc: tuple[Any, ...], rules: bool, dropped: Dropped, warnings: list[str]) -> list[Any]:
    kept = []
    for i, item in enumerate(items):
        host = item.get("host") if rules and isinstance(item, dict) else item
        if isinstance(host, str) and re.search(r"[*?\[]", host) and not _ours(host):
            dropped.setdefault(loc, []).append(i)
            example = re.sub(r"\[[^]]*\]", "x", host).replace("*", "evil").replace("?", "x")
            warnings.append(f"{_path((*loc, i))}: iron-proxy would also match {example}; here {host!r} is refused"
                            " (left out; expected an exact name, '*' or '*.example.com')")
            continue
        kept.append(item)
    return kept


def _ours(host: str) -> bool:
    try:
        host_pattern(host)
    except ValueError:
        return False
    return True


def _path(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def original_loc(loc: tuple[Any, ...], dropped: Dropped) -> tuple[Any, ...]:
    """An error location in the adapted copy, as the user's file numbers it."""
    out = list(loc)
    for i, part in enumerate(out):
        if isinstance(part, int) and (gone := dropped.get(tuple(loc[:i]))):
            for d in sorted(gone):
                if d <= part:
                    part += 1
            out[i] = part
    return tuple(out)
