"""The --out folder of `agentctl render`: refuse any folder agentctl did not write
(it is replaced whole), then swap the new output in atomically.

A marker file inside every output says "agentctl wrote this"; without it a
non-empty folder is someone's data (`--out .` once deleted a project's stack files).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

from agentctl.errors import ConfigError

MARKER = ".agentctl-render"
_MARKER_TEXT = "Written by `agentctl render`; the next render replaces this whole folder.\n"
_RENAME_EXCHANGE = 2


def check_out(out: Path, project_dir: Path) -> None:
    """Exit 2 (ConfigError) unless `out` is new, empty, or a previous render output."""
    if out.is_symlink():
        raise ConfigError("--out", str(out), "is a symbolic link", "a real folder (new, empty, or a previous render)")
    project, resolved = Path(project_dir).resolve(), out.resolve()
    if resolved == project or resolved in project.parents:
        raise ConfigError("--out", str(out), "is the project folder or one of its parents, and render replaces "
                          "the whole --out folder", "a folder of its own, e.g. --out build/render")
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "is a file, not a folder", "a folder (new, empty, or a previous render)")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError("--out", str(out), f"is a non-empty folder that agentctl did not write (no {MARKER} in it), "
                          "and render replaces the whole folder", "a new or empty folder, or a previous render output")


def write_atomically(files: dict[str, str], out: Path) -> None:
    """Write `files` (relative path -> text) into a sibling temp folder, then swap it
    with `out` in one rename: a reader sees the old output or the new, never a mix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, text in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        (staging / MARKER).write_text(_MARKER_TEXT)
        os.chmod(staging, 0o755)
        if out.exists():
            _exchange(staging, out)  # staging now holds the previous output
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): both names swap in one step (Linux >= 3.15)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    at_fdcwd = -100
    if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return
    # No renameat2 (old libc, a filesystem without exchange): move aside, then in.
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.old.", dir=b.parent))
    os.rename(b, aside / "old")
    os.rename(a, b)
    os.rename(aside / "old", a)
    aside.rmdir()
