"""The search-space grammar: one key's YAML value -> a checked parameter spec.

``search_spaces/README.md`` is the user's reference. A value is fixed (a plain scalar or
list) or a distribution (``{float: [low, high], log, step}``, ``{int: [low, high], log,
step}``, ``{choice: [...]}``); the model's block structure takes ``per_block`` /
``per_route`` / ``divisor_of`` wrappers (:mod:`~mrnet_ray.search.structure`). Every field's
spec is checked against the field's type and the checks of :mod:`mrnet_ray.config`: every
choice, both ends of every range and all values of small integer ranges must be accepted, so
a sampled trial never fails on a value the file allowed.

>>> parse_spec({"float": [1e-4, 1e-2], "log": True})
Float(low=0.0001, high=0.01, log=True, step=None)
>>> parse_spec({"int": [4, 2]})
Traceback (most recent call last):
...
mrnet_ray.search.specs.SpecError: bad range [4, 2]: low must be below high (write one value plainly)
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from mrnet_ray.config import ConfigError, MRNetConfig, TrainConfig

SECTIONS: dict[str, type[MRNetConfig] | type[TrainConfig]] = {
    "model": MRNetConfig,
    "train": TrainConfig,
}
STRUCTURAL = ("n_blocks", "routes_per_block")  # model keys that are not config fields
FROM_DATA = ("n_mels", "n_classes")  # set by the prepared data, never searched
DEFAULT_MODEL = MRNetConfig()  # the paper-like defaults: Optuna's first trial
STRUCTURE_FIELDS = ("dilations", "route_depths", "res2_scale")  # checked with STRUCTURAL
HINTS = {cls: typing.get_type_hints(cls) for cls in SECTIONS.values()}


@dataclass(frozen=True)
class Fixed:
    """A plain value: never drawn."""

    value: Any


@dataclass(frozen=True)
class Float:
    """``{float: [low, high], log: bool, step: s}``, inclusive like Optuna's suggest_float."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class Int:
    """``{int: [low, high], log: bool, step: k}``, inclusive like Optuna's suggest_int."""

    low: int
    high: int
    log: bool = False
    step: int = 1


@dataclass(frozen=True)
class Choice:
    """``{choice: [a, b]}``: Optuna's categorical (plain scalars only)."""

    choices: tuple[Any, ...]


Spec = Fixed | Float | Int | Choice


@dataclass(frozen=True)
class PerItem:
    """``{per_block: SPEC}`` / ``{per_route: SPEC}``: one draw of SPEC per block or route."""

    spec: Spec


@dataclass(frozen=True)
class DivisorOf:
    """``{divisor_of: channels, choice|int: ...}``: the candidates that divide channels."""

    candidates: Choice | Int


def values(spec: Spec, limit: int | None = None) -> list[Any]:
    """Every value a spec can draw (ranges: both ends, or all values if fewer than limit)."""
    match spec:
        case Fixed(value):
            return [value]
        case Choice(choices):
            return list(choices)
        case Int(low, high, _, step) if limit is None or (high - low) // step < limit:
            return list(range(low, high + 1, step))
        case Int() | Float():
            return [spec.low, spec.high]
    raise TypeError(spec)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def show(spec: Spec) -> str:
    match spec:
        case Fixed(value):
            return repr(value)
        case Choice(choices):
            return f"{{choice: {list(choices)}}}"
        case Int() | Float():
            return f"{{{type(spec).__name__.lower()}: [{spec.low}, {spec.high}]}}"
    raise TypeError(spec)


def default_dilation(i: int) -> int:
    return DEFAULT_MODEL.dilations[min(i, len(DEFAULT_MODEL.dilations) - 1)]


def default_depth(i: int, j: int) -> int:
    block = DEFAULT_MODEL.route_depths[min(i, len(DEFAULT_MODEL.route_depths) - 1)]
    return block[j] if j < len(block) else j + 1


class SpecError(Exception):
    """One mistake in one key; the caller adds file, line and key."""


def did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(options)}"


def parse_spec(raw: Any) -> Spec:
    """A plain value -> Fixed; ``{float|int: [low, high], log, step}`` / ``{choice: [...]}``."""
    if not isinstance(raw, dict):
        return Fixed(raw)
    kinds = [k for k in ("float", "int", "choice") if k in raw]
    options = {"float": {"log", "step"}, "int": {"log", "step"}, "choice": set()}
    allowed = {kinds[0], *options[kinds[0]]} if len(kinds) == 1 else {*options, "log", "step"}
    for key in raw:
        if key not in allowed:
            raise SpecError(
                f"unknown key {key!r} in a distribution{did_you_mean(str(key), allowed)}"
            )
    if len(kinds) != 1:
        raise SpecError(
            "a distribution needs exactly one of {float: [low, high]}, {int: [low, high]} "
            "or {choice: [a, b]}"
        )
    kind = kinds[0]
    if kind == "choice":
        choices = raw["choice"]
        if not isinstance(choices, list) or not choices:
            raise SpecError("empty choice; list at least one value, e.g. {choice: [3, 5]}")
        for c in choices:
            if not (c is None or isinstance(c, bool | int | float | str)):
                raise SpecError(
                    f"choice values must be numbers, strings, true/false or null, not {c!r}; "
                    "search a list one item at a time with per_block / per_route"
                )
        if len({repr(c) for c in choices}) != len(choices):
            raise SpecError(f"choice {choices} lists a value twice; list each value once")
        return Choice(tuple(choices))
    bounds, log, step = raw[kind], raw.get("log", False), raw.get("step")
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(is_number, bounds))):
        raise SpecError(f"{kind} needs two numbers [low, high], e.g. {{{kind}: [1, 4]}}")
    low, high = bounds
    if not isinstance(log, bool):
        raise SpecError(f"log must be true or false, not {log!r}")
    if low >= high:
        raise SpecError(
            f"bad range [{low}, {high}]: low must be below high (write one value plainly)"
        )
    if log and low <= 0:
        raise SpecError(f"log: true needs low > 0, got [{low}, {high}]; raise low or drop log")
    if step is not None:
        if not is_number(step) or step <= 0:
            raise SpecError(f"step must be a positive number, not {step!r}")
        if log:
            raise SpecError("log: true and step cannot be combined; drop one")
        if (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)):
            raise SpecError(f"step {step} does not fit [{low}, {high}]; make high - low a multiple")
    if kind == "float":
        return Float(float(low), float(high), log, None if step is None else float(step))
    if not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise SpecError(
            f"int needs integer low, high and step, got {raw!r}; use float: for fractions"
        )
    return Int(low, high, log, step or 1)


def field_spec(cls: type, key: str, raw: Any) -> Spec:
    """Parse one field's spec and prove every value it can draw is accepted by ``cls``."""
    spec = parse_spec(raw)
    hint = HINTS[cls][key]
    if isinstance(spec, Float) and not accepts(hint, 0.5):
        raise SpecError(f"{{float: ...}} draws fractions but {key} takes {describe(hint)}")
    if isinstance(spec, Int) and not accepts(hint, spec.low):
        raise SpecError(
            f"{{int: ...}} draws integers but {key} takes {describe(hint)}; use choice:"
        )
    for v in values(spec, limit=256):
        if not isinstance(spec, Int | Float) and not accepts(hint, v):
            raise SpecError(f"{v!r} is not {describe(hint)}")
        check_value(cls, key, v)
    return spec


def check_value(cls: type, key: str, value: Any, **context: Any) -> None:
    """Raise SpecError if the config rejects ``key=value`` (checks of other fields are ignored)."""
    try:
        cls.from_dict({key: value, **context})
    except ConfigError as e:
        if e.field == key:
            raise SpecError(f"{value!r} is rejected by {cls.__name__}: {e}") from None


def accepts(hint: Any, v: Any) -> bool:
    origin = get_origin(hint)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return is_number(v)
    if hint in (bool, str):
        return isinstance(v, hint)
    if hint is type(None):
        return v is None
    if origin is Literal:
        return isinstance(v, str) and v in get_args(hint)
    if origin in (Union, types.UnionType):
        return any(accepts(a, v) for a in get_args(hint))
    if origin is tuple:
        return isinstance(v, list | tuple) and all(accepts(get_args(hint)[0], x) for x in v)
    raise TypeError(hint)


def describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(hint))
    if origin is tuple:
        inner = describe(get_args(hint)[0])
        return "a list of " + {"an integer": "integers"}.get(
            inner, inner.replace("a list", "lists")
        )
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    return names.get(hint, "null")
