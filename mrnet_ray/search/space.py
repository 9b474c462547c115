"""Declarative search spaces: a YAML file -> Optuna define-by-run function -> TrialConfig.

A space has a ``model:`` and a ``train:`` section whose keys are :class:`MRNetConfig` and
:class:`TrainConfig` fields. A plain value is fixed; a mapping is a distribution::

    model:
      channels: {choice: [256, 384, 512]}
      n_blocks: {int: [2, 4]}                          # structural: how many blocks
      dilations: {per_block: {int: [1, 5]}}            # one draw per block
      routes_per_block: {per_block: {int: [1, 3]}}     # or {int: [1, 3]}: one for all blocks
      route_depths: {per_route: {int: [1, 3]}}         # one draw per route
      res2_scale: {divisor_of: channels, choice: [2, 4, 8]}
    train:
      lr: {float: [1.0e-4, 3.0e-3], log: true}
      epochs: 30

:func:`load_space` checks everything before a trial starts (``search_spaces/README.md`` is the
format reference; :mod:`~mrnet_ray.search.yaml_file` reads the file,
:mod:`~mrnet_ray.search.structure` checks it, :mod:`~mrnet_ray.search.specs` is the grammar).
Optuna parameter names are ``section.field``; conditional ones carry an index, as in optuna-
examples: ``model.dilation_0``, ``model.block1_routes``, ``model.block0_route2_depth``. Names
never contain ``/``, which Ray Tune would nest.

Optuna refuses a categorical whose choices change under one name within a study
("CategoricalDistribution does not support dynamic value space"). The Res2 scale's choices
depend on the drawn width, so each distinct set of allowed scales gets its own name: with
``channels: {choice: [24, 32]}`` and candidates ``[3, 4, 8]``, widths 24 and 32 allow
``[3, 4, 8]`` and ``[4, 8]``, drawn as ``model.res2_scale_in_3_4_8`` and
``model.res2_scale_in_4_8``; when all widths allow the same set the name is plain
``model.res2_scale``. Each name keeps one distribution for the whole study, and TPE learns
it from the trials of those widths only.

>>> space = SearchSpace.from_dict({"model": {"channels": {"choice": [24, 32]},
...     "res2_scale": {"divisor_of": "channels", "choice": [3, 4, 8]}}})
>>> space.default_point()
{'model.channels': 32, 'model.res2_scale_in_4_8': 8}
>>> space.to_trial(space.default_point(), n_mels=40, n_classes=4).model.res2_scale
8
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrnet_ray.config import ConfigError, TrainConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search.specs import (
    DEFAULT_MODEL,
    SECTIONS,
    Choice,
    DivisorOf,
    Fixed,
    Float,
    Int,
    PerItem,
    Spec,
    default_depth,
    default_dilation,
    is_number,
    show,
    values,
)
from mrnet_ray.search.structure import parse
from mrnet_ray.search.yaml_file import Problems, read_yaml


def _suggest(trial: Any, name: str, spec: Spec) -> Any:
    """Draw ``name`` from an Optuna trial, or read it from a dict of drawn values."""
    match spec:
        case Fixed(value):
            return value
        case _ if isinstance(trial, dict):
            return trial[name]
        case Float(low, high, log, step):
            return trial.suggest_float(name, low, high, log=log, step=step)
        case Int(low, high, log, step):
            return trial.suggest_int(name, low, high, log=log, step=step)
        case Choice(choices):
            return trial.suggest_categorical(name, list(choices))


def _nearest(spec: Spec, target: Any) -> Any:
    """The value of ``spec`` closest to ``target``: how the paper-like default lands in a space."""
    match spec:
        case Fixed(value):
            return value
        case Choice(choices):
            if target in choices:
                return target
            numbers = [c for c in choices if is_number(c)]
            if is_number(target) and numbers:
                return min(numbers, key=lambda c: abs(c - target))
            return choices[0]
        case Int(low, high, _, step):
            t = low if not is_number(target) else min(max(target, low), high)
            return low + round((t - low) / step) * step
        case Float(low, high, _, step):
            t = low if not is_number(target) else min(max(float(target), low), high)
            return t if step is None else min(low + round((t - low) / step) * step, high)
    raise TypeError(spec)


@dataclass(frozen=True)
class SearchSpace:
    """A checked search space; build it with :func:`load_space` (or ``from_dict`` in tests)."""

    source: str
    """Where the space came from (a file path), for error messages."""
    fields: dict[str, dict[str, Spec]]
    """Per section, the plain config fields and their specs."""
    n_blocks: Spec
    dilations: Fixed | PerItem
    routes: Spec | PerItem | None
    """None when route depths are one fixed list."""
    depths: Fixed | PerItem
    res2_scale: Spec | DivisorOf
    limits: dict[str, float] = dataclasses.field(default_factory=dict)
    """Largest ``params`` / ``flops`` a trained configuration may have (``limits:``)."""

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<space>") -> SearchSpace:
        """Parse and check a space given as plain values; raises :class:`UserError`."""
        return _build_space(raw, source, {})

    def define_by_run(self, trial: Any) -> None:
        """Optuna define-by-run function (``OptunaSearch(space=...)``): suggests, computes nothing.

        Returns None: the Tune config holds the drawn parameters only; :meth:`to_trial` adds
        the fixed ones back from the space.
        """
        self._walk(lambda name, spec, _: _suggest(trial, name, spec))

    def to_trial(self, config: dict[str, Any], *, n_mels: int, n_classes: int) -> TrialConfig:
        """Map the flat parameters Tune passes to a trainable back to a checked TrialConfig.

        Keys the space does not draw (e.g. Tune's own) are ignored; fixed values come from
        the space.
        """
        try:
            return self._build(config, n_mels=n_mels, n_classes=n_classes)
        except KeyError as e:
            raise UserError(
                f"{self.source}: the trial config has no {e.args[0]!r}; resume a search with the "
                "space file it started with"
            ) from None
        except ValueError as e:
            raise UserError(
                f"{self.source}: a trial's parameters are not a valid config: {e}"
            ) from None

    def _build(self, config: dict[str, Any], *, n_mels: int, n_classes: int) -> TrialConfig:
        sections = self._walk(lambda name, spec, _: _suggest(config, name, spec))
        sections["model"] |= {"n_mels": n_mels, "n_classes": n_classes}
        return TrialConfig.from_dict(sections)

    def default_point(self) -> dict[str, Any]:
        """The paper-like MRNet (config defaults) moved into the space: Optuna's first trial."""
        point: dict[str, Any] = {}

        def nearest(name: str, spec: Spec, target: Any) -> Any:
            value = _nearest(spec, target)
            if not isinstance(spec, Fixed):
                point[name] = value
            return value

        self._walk(nearest)
        return point

    def fits(self, point: dict[str, Any]) -> str:
        """Why drawn parameters (another search's, say) are no point of this space, or "" when
        they are: every parameter this space draws must be there, within its distribution.

        >>> space = SearchSpace.from_dict({"train": {"lr": {"float": [1e-3, 1e-2]}}})
        >>> space.fits({"train.lr": 3e-3}), space.fits({"train.lr": 0.5})
        ('', 'train.lr=0.5 is outside {float: [0.001, 0.01]}')
        """
        problems: list[str] = []

        def check(name: str, spec: Spec, target: Any) -> Any:
            if isinstance(spec, Fixed):
                return spec.value
            if name not in point:
                problems.append(f"{name} is not given")
                return _nearest(spec, target)
            value = point[name]
            if not _contains(spec, value):
                problems.append(f"{name}={value!r} is outside {show(spec)}")
                return _nearest(spec, target)
            return value

        self._walk(check)
        return problems[0] if problems else ""

    @functools.cached_property
    def _res2_uniform(self) -> bool:
        """Whether every channel width allows the same Res2 scales (then one Optuna name)."""
        assert isinstance(self.res2_scale, DivisorOf)
        widths = values(self.fields["model"].get("channels", Fixed(DEFAULT_MODEL.channels)))
        return len({tuple(_divisors(self.res2_scale.candidates, c)) for c in widths}) == 1

    def _walk(self, draw: Callable[[str, Spec, Any], Any]) -> dict[str, dict[str, Any]]:
        """Draw every parameter in a fixed order; ``draw(name, spec, paper_default)``."""
        sections: dict[str, dict[str, Any]] = {}
        for section, specs in self.fields.items():
            defaults = SECTIONS[section]()
            sections[section] = {
                key: draw(f"{section}.{key}", spec, getattr(defaults, key))
                for key, spec in specs.items()
            }
        model = sections["model"]
        n = draw("model.n_blocks", self.n_blocks, DEFAULT_MODEL.n_blocks)
        if isinstance(self.dilations, PerItem):
            model["dilations"] = [
                draw(f"model.dilation_{i}", self.dilations.spec, default_dilation(i))
                for i in range(n)
            ]
        else:
            model["dilations"] = self.dilations.value
        if isinstance(self.depths, PerItem):
            shared = None
            if self.routes is not None and not isinstance(self.routes, PerItem):
                shared = draw(
                    "model.routes_per_block", self.routes, len(DEFAULT_MODEL.route_depths[0])
                )
            model["route_depths"] = []
            for i in range(n):
                routes = shared
                if isinstance(self.routes, PerItem):
                    routes = draw(
                        f"model.block{i}_routes",
                        self.routes.spec,
                        len(DEFAULT_MODEL.route_depths[0]),
                    )
                model["route_depths"].append(
                    [
                        draw(
                            f"model.block{i}_route{j}_depth", self.depths.spec, default_depth(i, j)
                        )
                        for j in range(routes)
                    ]
                )
        else:
            model["route_depths"] = self.depths.value
        if isinstance(self.res2_scale, DivisorOf):
            allowed = _divisors(
                self.res2_scale.candidates, model.get("channels", DEFAULT_MODEL.channels)
            )
            name = "model.res2_scale"
            if not self._res2_uniform:
                name += "_in_" + "_".join(map(str, allowed))
            model["res2_scale"] = draw(name, Choice(tuple(allowed)), DEFAULT_MODEL.res2_scale)
        else:
            model["res2_scale"] = draw(
                "model.res2_scale", self.res2_scale, DEFAULT_MODEL.res2_scale
            )
        return sections


def _contains(spec: Spec, value: Any) -> bool:
    """Whether ``spec`` can draw ``value``."""
    match spec:
        case Choice(choices):
            return value in choices
        case Int(low, high, _, step):
            return isinstance(value, int) and low <= value <= high and (value - low) % step == 0
        case Float(low, high, _, _):
            return is_number(value) and low <= value <= high
    return False


def _divisors(candidates: Choice | Int, channels: int) -> list[int]:
    return [v for v in values(candidates) if channels % v == 0]


def load_space(path: str | Path) -> SearchSpace:
    """Read and check a space file before any trial starts; :class:`UserError` lists every
    mistake as ``FILE:LINE: section.key: problem; fix``."""
    raw, lines = read_yaml(path)
    return _build_space(raw, str(path), lines)


def _build_space(raw: Any, source: str, lines: dict[tuple[str, ...], int]) -> SearchSpace:
    parsed = parse(raw, source, lines)
    space = SearchSpace(source, parsed.fields, **parsed.structure, limits=parsed.limits)
    _check_joint(space, parsed.problems)
    parsed.problems.raise_if_any()
    return space


def _check_joint(space: SearchSpace, problems: Problems) -> None:
    """Checks across fields: Res2 scale vs channels, then the whole default point."""
    channels = values(space.fields["model"].get("channels", Fixed(DEFAULT_MODEL.channels)))
    res2 = space.res2_scale
    if isinstance(res2, DivisorOf):
        missing = [c for c in channels if not _divisors(res2.candidates, c)]
        if missing:
            problems.add(
                ("model", "res2_scale"),
                f"no candidate of {show(res2.candidates)} divides channels={missing[0]}; "
                f"add a divisor of {missing[0]} or drop that width from channels",
            )
    else:
        bad = next(((v, c) for c in channels for v in values(res2) if c % v), None)
        if bad:
            problems.add(
                ("model", "res2_scale"),
                f"res2_scale={bad[0]} does not divide channels={bad[1]}; "
                "use res2_scale: {divisor_of: channels, choice: [...]}",
            )
    if problems.items:
        return
    try:
        space._build(
            space.default_point(), n_mels=DEFAULT_MODEL.n_mels, n_classes=DEFAULT_MODEL.n_classes
        )
    except ConfigError as e:
        section = "train" if e.field in TrainConfig.field_names() else "model"
        problems.add((section, e.field), f"the space's fields do not fit together: {e}")
