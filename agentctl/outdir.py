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
    """Write `files` (relative path -> text) and swap them in as `out` in one step."""
    stage(files, out).commit()


class Staged:
    """The whole output, written beside `out` but not yet in place: commit() swaps it in
    with one rename (a reader sees the old output or the new, never a mix); discard()
    removes it and every folder made for it, leaving no trace."""

    def __init__(self, out: Path, staging: Path, made: list[Path]):
        self.out, self.staging, self.made = out, staging, made

    def commit(self) -> None:
        try:
            if self.out.exists():
                _exchange(self.staging, self.out)  # staging now holds the previous output
            else:
                self.staging.rename(self.out)
        finally:
            if self.staging.exists():
                shutil.rmtree(self.staging)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self.made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break


def stage(files: dict[str, str], out: Path) -> Staged:
    """Write everything beside `out`; any failure (a parent that is a file, a folder that
    cannot be written, /proc) is one ConfigError and leaves nothing behind."""
    out = Path(out)
    made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]  # innermost first
    staging: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        for rel, text in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        (staging / MARKER).write_text(_MARKER_TEXT)
        os.chmod(staging, 0o755)
    except OSError as exc:
        Staged(out, staging or out.parent / ".nonexistent", made).discard()
        raise ConfigError("--out", str(out), f"cannot be written ({exc.strerror or exc})",
                          "a folder that can be made and written here") from None
    return Staged(out, staging, made)


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
