"""The search-space file format: YAML -> checked parameter specs.

``search_spaces/README.md`` is the user's reference. A value is fixed (a plain scalar or
list) or a distribution (``{float: [low, high], log, step}``, ``{int: [low, high], log,
step}``, ``{choice: [...]}``); the model's block structure takes ``per_block`` /
``per_route`` / ``divisor_of`` wrappers. Every key is checked here, against the field types
and the checks of :mod:`mrnet_ray.config`: every choice, both ends of every range and all
values of small integer ranges must be accepted, so a sampled trial never fails on a value
the file allowed. :mod:`mrnet_ray.search_space` adds the cross-field checks and the sampling.

>>> parse_spec({"float": [1e-4, 1e-2], "log": True})
Float(low=0.0001, high=0.01, log=True, step=None)
>>> parse_spec({"int": [4, 2]})
Traceback (most recent call last):
...
mrnet_ray.space_file.SpecError: bad range [4, 2]: low must be below high (write one value plainly)
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from mrnet_ray.config import MRNetConfig, TrainConfig
from mrnet_ray.errors import UserError

SECTIONS: dict[str, type[MRNetConfig] | type[TrainConfig]] = {
    "model": MRNetConfig,
    "train": TrainConfig,
}
STRUCTURAL = ("n_blocks", "routes_per_block")  # model keys that are not config fields
FROM_DATA = ("n_mels", "n_classes")  # set by the prepared data, never searched
DEFAULT_MODEL = MRNetConfig()  # the paper-like defaults: Optuna's first trial
_STRUCTURE_FIELDS = ("dilations", "route_depths", "res2_scale")  # checked with STRUCTURAL
_HINTS = {cls: typing.get_type_hints(cls) for cls in SECTIONS.values()}


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


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The file's plain values and the line of every mapping key (by key path)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UserError(
            f"{path}: cannot read the search space ({e.strerror}); check the path"
        ) from None
    try:
        raw = yaml.load(text, Loader=_Loader)
        lines = _key_lines(yaml.compose(text, Loader=_Loader), str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{where}: not valid YAML ({problem}); fix the syntax") from None
    return raw, lines


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML alone reads ``1e-4`` (no dot) as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _key_lines(node: yaml.Node | None, source: str) -> dict[tuple[str, ...], int]:
    """Line of every mapping key, by key path; PyYAML silently keeps the last duplicate."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node, prefix: tuple[str, ...]) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        for k, v in n.value:
            key = (*prefix, str(k.value))
            if key in lines:
                raise UserError(
                    f"{source}:{k.start_mark.line + 1}: {'.'.join(key)}: given twice; keep one"
                )
            lines[key] = k.start_mark.line + 1
            walk(v, key)

    if node is not None:
        walk(node, ())
    return lines


class SpecError(Exception):
    """One mistake in one key; the caller adds file, line and key."""


class Problems:
    """Every mistake found, reported together, in file order."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]):
        self.source, self.lines = source, lines
        self.items: list[tuple[int, str]] = []

    def add(self, where: tuple[str, ...], message: str) -> None:
        line = self.lines.get(where, 0)
        loc = f"{self.source}:{line}" if line else self.source
        self.items.append((line, f"{loc}: {'.'.join(where)}: {message}"))

    def raise_if_any(self) -> None:
        lines = [text for _, text in sorted(self.items, key=lambda item: item[0])]
        if len(lines) == 1:
            raise UserError(lines[0])
        if lines:
            raise UserError(f"{len(lines)} problems in the search space:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Parsed:
    """A space's specs, checked key by key; ``problems`` collects the cross-field checks."""

    fields: dict[str, dict[str, Spec]]
    structure: dict[str, Any]
    problems: Problems


def parse(raw: Any, source: str, lines: dict[tuple[str, ...], int]) -> Parsed:
    """Check a space given as plain values, key by key; raise on malformed structure."""
    if raw is None:
        raise UserError(f"{source}: the search space is empty; give model: and train: sections")
    if not isinstance(raw, dict):
        raise UserError(
            f"{source}: a search space is a mapping with model: and train: sections, "
            f"not a {type(raw).__name__}"
        )
    problems = Problems(source, lines)
    fields: dict[str, dict[str, Spec]] = {"model": {}, "train": {}}
    structural: dict[str, Any] = {}
    for section, body in raw.items():
        if section not in SECTIONS:
            problems.add((str(section),), f"unknown section{_did_you_mean(str(section), SECTIONS)}")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.add((section,), "must be a mapping of field: value")
            continue
        cls = SECTIONS[section]
        for key, value in body.items():
            where = (section, str(key))
            if section == "model" and key in FROM_DATA:
                problems.add(where, "is set by the prepared data; remove it from the space")
            elif section == "model" and key in (*STRUCTURAL, *_STRUCTURE_FIELDS):
                structural[key] = value
            elif key not in cls.field_names():
                problems.add(where, _unknown_field(section, str(key)))
            else:
                try:
                    fields[section][key] = _field_spec(cls, key, value)
                except SpecError as e:
                    problems.add(where, str(e))
    structure = _parse_structure(structural, problems)
    problems.raise_if_any()
    return Parsed(fields, structure, problems)


def _unknown_field(section: str, key: str) -> str:
    cls = SECTIONS[section]
    for other, other_cls in SECTIONS.items():
        if other != section and key in other_cls.field_names() and key not in FROM_DATA:
            return f"unknown {cls.__name__} field; {key} belongs under {other}:"
    valid = [*cls.field_names(), *(STRUCTURAL if section == "model" else ())]
    valid = [v for v in valid if v not in FROM_DATA]
    return f"unknown {cls.__name__} field{_did_you_mean(key, valid)}"


def _did_you_mean(word: str, options: Any) -> str:
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
                f"unknown key {key!r} in a distribution{_did_you_mean(str(key), allowed)}"
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


def _field_spec(cls: type, key: str, raw: Any) -> Spec:
    """Parse one field's spec and prove every value it can draw is accepted by ``cls``."""
    spec = parse_spec(raw)
    hint = _HINTS[cls][key]
    if isinstance(spec, Float) and not _accepts(hint, 0.5):
        raise SpecError(f"{{float: ...}} draws fractions but {key} takes {_describe(hint)}")
    if isinstance(spec, Int) and not _accepts(hint, spec.low):
        raise SpecError(
            f"{{int: ...}} draws integers but {key} takes {_describe(hint)}; use choice:"
        )
    for v in values(spec, limit=256):
        if not isinstance(spec, Int | Float) and not _accepts(hint, v):
            raise SpecError(f"{v!r} is not {_describe(hint)}")
        _check_value(cls, key, v)
    return spec


def _check_value(cls: type, key: str, value: Any, **context: Any) -> None:
    """Raise SpecError if the config rejects ``key=value`` (checks of other fields are ignored)."""
    try:
        cls.from_dict({key: value, **context})
    except ValueError as e:
        if re.match(rf"{re.escape(key)}\b", str(e)):
            raise SpecError(f"{value!r} is rejected by {cls.__name__}: {e}") from None


def _accepts(hint: Any, v: Any) -> bool:
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
        return any(_accepts(a, v) for a in get_args(hint))
    if origin is tuple:
        return isinstance(v, list | tuple) and all(_accepts(get_args(hint)[0], x) for x in v)
    raise TypeError(hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin is tuple:
        inner = _describe(get_args(hint)[0])
        return "a list of " + {"an integer": "integers"}.get(
            inner, inner.replace("a list", "lists")
        )
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    return names.get(hint, "null")


def _parse_structure(raw: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """n_blocks, dilations, routes_per_block, route_depths and res2_scale, checked together."""
    out: dict[str, Any] = {}

    def take(key: str, fn: Callable[[Any], Any]) -> None:
        if key in raw:
            try:
                out[key] = fn(raw[key])
            except SpecError as e:
                problems.add(("model", key), str(e))

    take("n_blocks", lambda v: _item_spec("n_blocks", v))
    take(
        "routes_per_block",
        lambda v: _per_item("routes_per_block", v, "per_block") or _item_spec("routes", v),
    )
    take(
        "dilations",
        lambda v: (
            _per_item("dilations", v, "per_block")
            or _list_spec("dilations", v, route_depths=[[1]] * _len(v))
        ),
    )
    take(
        "route_depths",
        lambda v: (
            _per_item("route_depths", v, "per_route")
            or _list_spec("route_depths", v, dilations=[1] * _len(v))
        ),
    )
    take("res2_scale", _res2_spec)
    if problems.items:
        return {}

    # How many blocks: n_blocks, else the length of a fixed list, else the config default.
    lists = {
        k: len(out[k].value) for k in ("dilations", "route_depths") if isinstance(out.get(k), Fixed)
    }
    n_blocks = out.get("n_blocks") or Fixed(next(iter(lists.values()), DEFAULT_MODEL.n_blocks))
    if "n_blocks" not in out and len(set(lists.values())) > 1:
        problems.add(
            ("model", "route_depths"),
            f"lists {lists['route_depths']} blocks but dilations lists {lists['dilations']}; "
            "give both one entry per block",
        )
    for key, length in lists.items():
        if "n_blocks" in out and n_blocks != Fixed(length):
            wrapper = "per_block" if key == "dilations" else "per_route"
            problems.add(
                ("model", key),
                f"lists {length} blocks but n_blocks is {show(n_blocks)}; "
                f"make them agree or use {{{wrapper}: SPEC}}",
            )
    fixed_n = n_blocks.value if isinstance(n_blocks, Fixed) else None
    dilations, depths = out.get("dilations"), out.get("route_depths")
    routes = out.get("routes_per_block")
    if dilations is None:
        if fixed_n is None:
            problems.add(("model", "n_blocks"), "varies, so give dilations: {per_block: SPEC}")
        else:
            dilations = Fixed([default_dilation(i) for i in range(fixed_n)])
    if isinstance(depths, PerItem) and routes is None:
        problems.add(
            ("model", "route_depths"),
            "per_route needs routes_per_block, e.g. routes_per_block: {int: [1, 3]}",
        )
    elif routes is not None and not isinstance(depths, PerItem):
        problems.add(
            ("model", "routes_per_block"),
            "needs route_depths: {per_route: SPEC} to give each route a depth",
        )
    elif depths is None:
        if fixed_n is None:
            problems.add(
                ("model", "n_blocks"),
                "varies, so give route_depths: {per_route: SPEC} and routes_per_block",
            )
        else:
            depths = Fixed([list(DEFAULT_MODEL.route_depths[min(i, 2)]) for i in range(fixed_n)])
    return {
        "n_blocks": n_blocks,
        "dilations": dilations,
        "routes": routes,
        "depths": depths,
        "res2_scale": out.get("res2_scale", Fixed(DEFAULT_MODEL.res2_scale)),
    }


def _item_spec(key: str, value: Any) -> Spec:
    """The spec of one integer >= 1 (a block count, a route count, a dilation, a depth)."""
    spec = parse_spec(value)
    if isinstance(spec, Float) or not all(_accepts(int, v) for v in values(spec)):
        raise SpecError(f"{key} takes integers >= 1, got {value!r}")
    if min(values(spec)) < 1:
        raise SpecError(f"{key} takes integers >= 1, and {min(values(spec))} can be drawn")
    return spec


def _per_item(key: str, value: Any, wrapper: str) -> PerItem | None:
    """``{per_block: SPEC}`` / ``{per_route: SPEC}``, or None if ``value`` is not one."""
    if not (isinstance(value, dict) and wrapper in value):
        return None
    if len(value) != 1:
        raise SpecError(f"{{{wrapper}: SPEC}} takes no other keys, got {sorted(value)}")
    return PerItem(_item_spec(key, value[wrapper]))


def _list_spec(key: str, value: Any, **context: Any) -> Fixed:
    wrapper = "per_block" if key == "dilations" else "per_route"
    if not isinstance(value, list):
        raise SpecError(
            f"takes a list with one entry per block or {{{wrapper}: SPEC}}, not {value!r}"
        )
    if not _accepts(_HINTS[MRNetConfig][key], value):
        raise SpecError(f"{value!r} is not {_describe(_HINTS[MRNetConfig][key])}")
    _check_value(MRNetConfig, key, value, **context)
    return Fixed(value)


def _len(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def _res2_spec(value: Any) -> Spec | DivisorOf:
    """res2_scale: a plain spec, or ``{divisor_of: channels, choice|int: ...}``."""
    if not (isinstance(value, dict) and "divisor_of" in value):
        return _item_spec("res2_scale", value)
    if value["divisor_of"] != "channels":
        raise SpecError(
            f"divisor_of: {value['divisor_of']!r} is not supported; use divisor_of: channels"
        )
    rest = {k: v for k, v in value.items() if k != "divisor_of"}
    if not rest:
        raise SpecError("divisor_of: channels needs candidates, e.g. choice: [2, 4, 8]")
    spec = _item_spec("res2_scale", rest)
    if not isinstance(spec, Choice | Int):
        raise SpecError("divisor_of: channels takes choice: [...] or int: [low, high] candidates")
    return DivisorOf(spec)
