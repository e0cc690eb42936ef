"""The one pydantic-error formatter of both distributions: a ValidationError as the
key path, what is wrong and what is expected (with an example), read from the model
itself so it cannot drift. Never pydantic's own wording or a regular expression.

An unknown key is reported before anything else at once wrong (a typo `method:` is
what also makes `methods` look missing), with the nearest known key.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from agentctl_proxy.schema.policy import SOURCE_TYPES, describe_source_type


@dataclass(frozen=True)
class Problem:
    loc: tuple[Any, ...]  # as the user wrote it: keys and list indices
    problem: str
    expected: str = ""
    kind: str = ""  # pydantic's error type, for a caller with a case of its own

    def key_path(self, root: str = "") -> str:
        out = root
        for p in self.loc:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out and not out.endswith(":") else str(p))
        return out

    def line(self) -> str:
        """'problem; expected ...', one line whatever the input held (a newline would forge a second)."""
        text = self.problem + (f"; expected {self.expected}" if self.expected else "")
        return text.replace("\n", "\\n")


_TYPES = {"string": "text (in quotes if it looks like a number)", "int": "a whole number", "float": "a number",
          "bool": "true or false", "list": "a list", "dict": "a mapping", "model": "a mapping"}


def explain(exc: ValidationError, root: type[BaseModel], drop: typing.Callable[[Any], bool] = lambda p: False,
            more: bool = True) -> Problem:
    """The error to show first. `drop` names location parts that are no key the user
    wrote (beyond pydantic's union tags, which are always dropped)."""
    errors = exc.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    raw = first["loc"]
    loc = tuple(p for i, p in enumerate(raw)
                if not (isinstance(p, str) and (_is_tag(p, raw[i - 1] if i else None) or p == "[key]" or drop(p))))
    problem, expected = _describe(first, root, loc)
    others = len(errors) - 1
    if more and others:
        problem += f" (and {others} more problem{'s' * (others > 1)})"
    return Problem(loc, problem, expected, first["type"])


def _is_tag(part: str, before: Any) -> bool:
    """pydantic names the member of a union in the location: a tag right after a list
    index (transforms) or a source key, a class name, or a validator's name."""
    if part in SOURCE_TYPES or part in {"allowlist", "secrets"}:
        return isinstance(before, int) or "source" in str(before)
    return part == "ConfigSecretRef" or "[" in part


def _describe(err: dict[str, Any], root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, str]:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    field = _field_at(root, loc)
    example = _example(field)
    want = (field.description if field and field.description else "") + example
    if kind == "extra_forbidden":
        parent = _models(types_at(root, loc[:-1]))
        key = str(loc[-1]) if loc else "?"
        if any(key in m.iron_only for m in parent if hasattr(m, "iron_only")):
            return f"iron-proxy key {key!r} is not supported by agentctl-proxy; remove it", ""
        known = sorted({f.alias or n for m in parent for n, f in m.model_fields.items()} - {"secureKeys"})
        near = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"unknown key{hint}", f"one of: {', '.join(known)}" if known else ""
    if kind == "missing":
        return "required key is missing", want or _keys_of(root, loc)
    if kind == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        problem, _, exp = msg.partition("; expected ")
        return problem, exp
    if kind in {"union_tag_invalid", "literal_error"}:
        tag = ctx.get("tag", value)
        if kind == "union_tag_invalid" and "type" in str(ctx.get("discriminator")):
            return describe_source_type(tag), f"one of {', '.join(SOURCE_TYPES)}"
        expected = str(ctx.get("expected_tags") or ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        what = str(ctx.get("discriminator", "")).strip("'") or "value"
        return f"unknown {what} {tag!r}" if kind == "union_tag_invalid" else f"{tag!r} is not allowed", \
            f"one of {expected}"
    if kind == "union_tag_not_found":
        return f"has no {ctx.get('discriminator', '').strip(chr(39))}: key", f"one of {', '.join(SOURCE_TYPES)}"
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"{_shown(value)} is not a mapping", _keys_of(root, loc)
    if kind == "too_short":
        least = ctx.get("min_length")
        return "is empty", (want or ("at least one entry" if least == 1 else f"at least {least} entries"))
    if kind == "too_long":
        return f"has too many items (at most {ctx.get('max_length')})", want
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"{_shown(value)} is out of range", f"a number {op} {bound}" + example
    if kind == "string_pattern_mismatch":
        return f"{_shown(value)} is not in the expected form", want or "the form the documentation shows"
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if base in _TYPES:
        return f"{_shown(value)} is not {_TYPES[base].split(' (')[0]}", (want or _TYPES[base])
    return err["msg"], want


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _example(field: FieldInfo | None) -> str:
    if field is None or not field.examples:
        return ""
    ex = field.examples[0]
    return f", e.g. {json.dumps(ex) if not isinstance(ex, str) else ex}"


def _keys_of(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    keys = sorted({f.alias or n for m in _models(types_at(root, loc)) for n, f in m.model_fields.items()}
                  - {"secureKeys"})
    return f"a mapping with keys: {', '.join(keys)}" if keys else ""


def _models(tps: list[Any]) -> list[type[BaseModel]]:
    return [t for t in tps if isinstance(t, type) and issubclass(t, BaseModel)]


def _field_at(root: type[BaseModel], loc: tuple[Any, ...]) -> FieldInfo | None:
    if not loc or isinstance(loc[-1], int):
        return None
    for m in _models(types_at(root, loc[:-1])):
        for name, f in m.model_fields.items():
            if loc[-1] in (name, f.alias):
                return _merged(f)
    return None


def _merged(f: FieldInfo) -> FieldInfo:
    """A field whose description sits on an Annotated alias (e.g. `Duration`): read it there."""
    if f.description or f.examples:
        return f
    for arg in typing.get_args(f.annotation):
        for meta in getattr(arg, "__metadata__", ()):
            if isinstance(meta, FieldInfo) and (meta.description or meta.examples):
                return meta
    return f


def types_at(root: type[BaseModel], loc: tuple[Any, ...]) -> list[Any]:
    """The types the model allows at a location (several where a union is)."""
    tps: list[Any] = [root]
    for part in loc:
        tps = [t for tp in tps for t in _step(tp, part)]
    return [t for tp in tps for t in _members(tp)]


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
