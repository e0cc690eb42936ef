"""Quoting at the sink: jinja filters for the languages the templates write.

The model already refuses values that cannot be legitimate (agentctl.values); these
make sure any value that passes is still data, never code, in the file it lands in.
"""
from __future__ import annotations

import shlex

_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def sh(value: object) -> str:
    """One shell word (POSIX sh and bash)."""
    return shlex.quote(str(value))


def systemd_specifiers(value: str) -> str:
    """Literal text in a unit file: `%` starts a specifier (%h, %u, ...) otherwise."""
    return value.replace("%", "%%")


def systemd_env(name: str, value: str) -> str:
    """The value of one `Environment=` assignment: a double-quoted word, C escapes
    inside (so no newline can start a new directive and no trailing backslash can
    continue the line), `%` doubled for the specifier pass systemd runs first."""
    out = []
    for ch in f"{name}={value}":
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + systemd_specifiers("".join(out)) + '"'


FILTERS = {"sh": sh, "systemd_specifiers": systemd_specifiers}
