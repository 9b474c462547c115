"""The structure rules of a search space: sections and fields, and the model's blocks.

:func:`parse` checks a space given as plain values key by key (the grammar of each value is
:mod:`~mrnet_ray.search.specs`), and the block structure together: ``n_blocks``,
``dilations``, ``routes_per_block``, ``route_depths`` and ``res2_scale`` must agree on how
many blocks and routes there are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mrnet_ray.config import MRNetConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search.specs import (
    DEFAULT_MODEL,
    FROM_DATA,
    HINTS,
    SECTIONS,
    STRUCTURAL,
    STRUCTURE_FIELDS,
    Choice,
    DivisorOf,
    Fixed,
    Float,
    Int,
    PerItem,
    Spec,
    SpecError,
    accepts,
    check_value,
    default_dilation,
    describe,
    did_you_mean,
    field_spec,
    parse_spec,
    show,
    values,
)
from mrnet_ray.search.yaml_file import Problems

LIMITS = ("params", "flops")
"""What a space's ``limits:`` section may bound: trainable parameters, and forward FLOPs of
one segment (as :func:`mrnet_ray.nn.model_cost` counts them)."""


@dataclass(frozen=True)
class Parsed:
    """A space's specs, checked key by key; ``problems`` collects the cross-field checks."""

    fields: dict[str, dict[str, Spec]]
    structure: dict[str, Any]
    problems: Problems
    limits: dict[str, float]


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
    limits = _parse_limits(raw.get("limits"), problems)
    for section, body in raw.items():
        if section == "limits":
            continue
        if section not in SECTIONS:
            options = [*SECTIONS, "limits"]
            problems.add((str(section),), f"unknown section{did_you_mean(str(section), options)}")
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
            elif section == "model" and key in (*STRUCTURAL, *STRUCTURE_FIELDS):
                structural[key] = value
            elif key not in cls.field_names():
                problems.add(where, _unknown_field(section, str(key)))
            else:
                try:
                    fields[section][key] = field_spec(cls, key, value)
                except SpecError as e:
                    problems.add(where, str(e))
    structure = _parse_structure(structural, problems)
    problems.raise_if_any()
    return Parsed(fields, structure, problems, limits)


def _parse_limits(body: Any, problems: Problems) -> dict[str, float]:
    """``limits: {params: 5.0e6, flops: 2.0e9}``: positive numbers, known keys only."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        problems.add(("limits",), "must be a mapping like {params: 5.0e6, flops: 2.0e9}")
        return {}
    limits = {}
    for key, value in body.items():
        where = ("limits", str(key))
        if key not in LIMITS:
            problems.add(where, f"unknown limit{did_you_mean(str(key), LIMITS)}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.add(where, f"{value!r} must be a positive number, e.g. {key}: 5.0e6")
        else:
            limits[key] = float(value)
    return limits


def _unknown_field(section: str, key: str) -> str:
    cls = SECTIONS[section]
    for other, other_cls in SECTIONS.items():
        if other != section and key in other_cls.field_names() and key not in FROM_DATA:
            return f"unknown {cls.__name__} field; {key} belongs under {other}:"
    valid = [*cls.field_names(), *(STRUCTURAL if section == "model" else ())]
    valid = [v for v in valid if v not in FROM_DATA]
    return f"unknown {cls.__name__} field{did_you_mean(key, valid)}"


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
    if isinstance(spec, Float) or not all(accepts(int, v) for v in values(spec)):
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
    if not accepts(HINTS[MRNetConfig][key], value):
        raise SpecError(f"{value!r} is not {describe(HINTS[MRNetConfig][key])}")
    check_value(MRNetConfig, key, value, **context)
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
