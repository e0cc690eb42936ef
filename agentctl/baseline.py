"""dev-sec's baselines as the yardstick (docs/baseline.md): the one file of waivers,
roles/baseline-waivers.yaml, that the role suites read to let a control fail on purpose
and `agentctl verify` prints. A waiver names the control, the roles it covers and why."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentctl.errors import ConfigError
from agentctl.resources import ROLES
from agentctl_proxy.schema import yamlload

WAIVERS = ROLES / "baseline-waivers.yaml"
CONTROL = r"^(sshd|ssh|os|sysctl|package)-[0-9]{2}[ab]?$"  # linux-baseline's and ssh-baseline's ids
Role = Literal["proxy", "agent"]


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    roles: tuple[Role, ...] = Field(("proxy", "agent"), min_length=1)
    reason: str = Field(min_length=20)


def load_waivers(path: Path = WAIVERS) -> dict[str, Waiver]:
    """Control id -> its waiver; a bad file is ConfigError (exit 2, one line)."""
    try:
        doc = yamlload.load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot be read ({exc.strerror})", "the baseline waivers file") from None
    except yamlload.DuplicateKey as exc:
        raise ConfigError(str(path), exc.key_path, "is waived twice", "one entry per control") from None
    except yaml.YAMLError:
        raise ConfigError(str(path), "", "is not valid YAML", "a mapping of control id to roles and reason") from None
    if not isinstance(doc, dict):
        raise ConfigError(str(path), "", "is not a mapping", "control id: {roles: [...], reason: ...}")
    waivers = {}
    for control, body in doc.items():
        if not isinstance(control, str) or not re.match(CONTROL, control):
            raise ConfigError(str(path), str(control), "is not a dev-sec control id", "e.g. sshd-09 or os-05")
        try:
            waivers[control] = Waiver.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in (control, *err["loc"]))
            raise ConfigError(str(path), where, err["msg"].lower(),
                              "roles from proxy/agent and a reason of a sentence") from None
    return waivers


def waived(waivers: dict[str, Waiver], control: str, role: str) -> Waiver | None:
    w = waivers.get(control)
    return w if w is not None and role in w.roles else None


def verdict(waivers: dict[str, Waiver], role: str, control: str, ok: bool, detail: str) -> None:
    """A role-suite test's end: fail a broken control unless it is waived; skip a waived
    one with its reason; fail a waiver whose control passes (stale)."""
    import pytest  # the role suites only; the CLI reads waivers without it
    waiver = waived(waivers, control, role)
    if ok and waiver:
        pytest.fail(f"{control} passes: its waiver in {WAIVERS.name} is stale")
    if not ok and waiver:
        pytest.skip(f"{control} waived: {waiver.reason}")
    assert ok, f"{control}: {detail}"


def report(waivers: dict[str, Waiver], roles: set[str]) -> list[str]:
    """One line per waiver that covers one of `roles`, for verify's output."""
    return [f"{control} ({', '.join(w.roles)}): {w.reason}" for control, w in sorted(waivers.items())
            if roles & set(w.roles)]
