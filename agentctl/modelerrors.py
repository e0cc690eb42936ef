"""A pydantic ValidationError as the one line a user needs: the key path, what is
wrong, and what is expected there, read from the model itself so it cannot drift."""
from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from agentctl.errors import ConfigError
from agentctl.model import ConfigSecretRef, Deployment

NAMESPACE = "agentctl"
_SECRET_REF = "a reference to a Pulumi secret, {config: NAME} (set with: pulumi config set --secret NAME ...)"


def one_line(exc: ValidationError, source: str) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and (_is_union_tag(p) or p == "[key]"))]
    key_path = f"{NAMESPACE}:" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    msg = err["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    kind = err["type"]
    targets = _types_at(loc)
    expected = _expected(err)
    if kind in {"literal_error", "union_tag_invalid", "enum"}:
        msg = f"{err.get('input', (err.get('ctx') or {}).get('tag'))!r} is not allowed"
    elif kind == "extra_forbidden":
        msg = "unknown key"
        expected = _keys_of(_types_at(loc[:-1]))
    elif kind == "missing":
        msg = "is required but missing"
    elif kind in {"model_type", "model_attributes_type"}:
        if ConfigSecretRef in targets:
            msg, expected = "is a plain value, but this must name a Pulumi secret", _SECRET_REF
        else:
            msg, expected = "is not a mapping", _keys_of(targets)
    problem = msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")
    # One line, whatever the input held: a newline here would forge a second message.
    return ConfigError(source, key_path.replace("\n", "\\n"), problem.replace("\n", "\\n"), expected)


def _is_union_tag(part: str) -> bool:
    # pydantic names the member of a tagged union in the location ('file', 'aws_ssm', ...)
    return part in {"env", "file", "aws_ssm", "ConfigSecretRef"}


def _expected(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        return ctx.get("expected", "")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return kind.removesuffix("_type").removesuffix("_parsing").replace("_", " ")
    if kind == "string_pattern_mismatch":
        return f"a value matching {ctx.get('pattern')}"
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if kind in {"greater_than_equal", "less_than_equal"}:
        return f"a number {'>=' if kind == 'greater_than_equal' else '<='} {ctx.get('ge', ctx.get('le'))}"
    if kind == "union_tag_invalid":
        return ctx.get("expected_tags", "")
    return ""


def _keys_of(types: list[Any]) -> str:
    models = [t for t in types if isinstance(t, type) and issubclass(t, BaseModel)]
    keys = sorted({f.alias or name for m in models for name, f in m.model_fields.items()} - {"secureKeys"})
    return f"one of: {', '.join(keys)}" if keys else ""


def _types_at(loc: list[Any]) -> list[Any]:
    """The types the model allows at a location (several where a union is)."""
    types: list[Any] = [Deployment]
    for part in loc:
        types = [t for tp in types for t in _step(tp, part)]
    return [t for tp in types for t in _members(tp)]


def _members(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _step(tp: Any, part: Any) -> list[Any]:
    out = []
    for t in _members(tp):
        origin = typing.get_origin(t)
        if isinstance(part, int) and origin is list:
            out.append(typing.get_args(t)[0])
        elif isinstance(part, str) and origin is dict:
            out.append(typing.get_args(t)[1])
        elif isinstance(part, str) and isinstance(t, type) and issubclass(t, BaseModel):
            for name, field in t.model_fields.items():
                if part in (name, field.alias):
                    out.append(field.annotation)
    return out

