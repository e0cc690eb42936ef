"""Checks for config strings that end up in root scripts, unit files and URLs.

Pure functions that raise ValueError with a message that never repeats the value
(it may be a credential pasted by mistake, or hold a newline that would break the
one-line error). The model calls them at the boundary; the templates still quote at
the sink (agentctl.escape), so either one alone keeps a value from becoming code.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

# C0 and C1 controls, and the Unicode line separators some parsers split lines on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# RFC 3986 path/query characters minus the ones a shell or a unit file gives a
# meaning to ($ ' ( ) * [ ]): no heartbeat or git URL needs them, and percent-encoding
# spells any of them.
_URL_REST = re.compile(r"[A-Za-z0-9._~/?&=%+,;:@!-]*")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# Words that mark an environment variable as a credential (compared per `_`-separated
# part, so KEYBOARD_LAYOUT passes and OPENAI_API_KEY does not).
_CREDENTIAL_WORDS = {"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASS", "PASSPHRASE", "PAT",
                     "CREDENTIAL", "CREDENTIALS", "COOKIE", "SIGNATURE"}


def no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains a control character (newline, tab, NUL, ...); expected one line of text")
    return value


def https_url(value: str, *, query: bool = True) -> str:
    """A plain https URL: a DNS host name, an optional port, a path (and query)."""
    no_control(value)
    if any(c.isspace() for c in value):
        raise ValueError("contains whitespace; expected a URL (percent-encode spaces as %20)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("is not a valid URL; expected https://HOST[:PORT]/PATH") from None
    if parts.scheme != "https":
        raise ValueError("must use https; expected https://HOST[:PORT]/PATH")
    if parts.username is not None or parts.password is not None:
        raise ValueError("carries credentials (user:password@); expected a URL without them: "
                         "credentials belong in the proxy's secrets")
    host = parts.hostname
    if not host or not _HOSTNAME.fullmatch(host) or parts.netloc.lower() not in (host, f"{host}:{port}"):
        raise ValueError("has no valid host name; expected https://HOST[:PORT]/PATH with a DNS name")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("has a port outside 1-65535")
    if parts.fragment or "#" in value:
        raise ValueError("has a #fragment; expected a URL without one")
    if not query and parts.query:
        raise ValueError("has a ?query; expected a URL without one")
    if not _URL_REST.fullmatch(parts.path + ("?" + parts.query if parts.query else "")):
        raise ValueError("contains characters a URL must percent-encode (quotes, $, (), *, [], <>, {}, |, \\, `)")
    return value


def git_ref(value: str) -> str:
    """A tag or branch name as git allows it, never an option (`-...`)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+/-]{0,99}", value) or ".." in value or value.endswith((".", "/", ".lock")):
        raise ValueError("is not a git tag name; expected letters, digits and . _ + - /, starting with a letter or digit")
    return value


def env_name(name: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise ValueError("is not an environment variable name; expected [A-Z_][A-Z0-9_]*")
    if looks_like_credential(name):
        raise ValueError("looks like a credential, and the agent host holds none (its unit file is world-readable); "
                         "expected the credential as an egress secret of this agent (egress.secrets with "
                         "from: {config: NAME}), which the proxy injects on the way out")
    return name


def looks_like_credential(name: str) -> bool:
    parts = set(name.upper().split("_"))
    return bool(parts & _CREDENTIAL_WORDS)


def shell_word(value: str) -> str:
    """Text quoted into a shell command: one line, no quote or backslash to break out."""
    no_control(value)
    bad = set(value) & set("'\"`\\$")
    if bad:
        raise ValueError("contains a quote, backslash, backtick or $; expected none of them")
    return value
