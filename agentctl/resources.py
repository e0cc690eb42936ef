"""Where the templates and role folders are: in a checkout (and an editable install)
at the project root, in a wheel inside the package (pyproject maps them there)."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _folder(name: str) -> Path:
    installed = _PACKAGE / f"_{name}"
    return installed if installed.is_dir() else _PACKAGE.parent / name


TEMPLATES = _folder("templates")
ROLES = _folder("roles")
