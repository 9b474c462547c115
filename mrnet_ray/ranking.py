"""What "better" means: each metric's direction, and the one order of epochs and trials.

Every comparison in mrnet_ray goes through here: Optuna's and ASHA's modes, a search's best
trial, the checkpoint a training run or an export takes, ``best``'s ranking table and the
winner of a confirmation. One order, everywhere: a finite value of the ranking metric beats
none; then the better value; ties go to the lower ``valid_loss``, then to the smaller model
(``params``). Among items that tie on all of it the first wins, so in a history the earliest
epoch does.

>>> mode("valid_loss"), mode("valid_track_acc")
('min', 'max')
>>> a = {"epoch": 1, "valid_track_acc": 0.8, "valid_loss": 0.9, "params": 10}
>>> b = {"epoch": 2, "valid_track_acc": 0.8, "valid_loss": 0.7, "params": 10}
>>> best_of([a, b])["epoch"]  # tied accuracy: the lower valid loss
2
>>> [m["epoch"] for m in ranked([a, b, {"epoch": 3}])]  # no value: last
[2, 1, 3]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

from mrnet_ray.errors import UserError

Mode = Literal["max", "min"]
T = TypeVar("T")

PRIMARY = "valid_track_acc"
"""What a search optimises and ranks by unless told otherwise."""
DIRECTIONS: dict[str, Mode] = {
    "valid_track_acc": "max",
    "valid_acc": "max",
    "valid_macro_f1": "max",
    "valid_loss": "min",
    "train_acc": "max",
    "train_loss": "min",
    "test_track_acc": "max",
    "test_acc": "max",
    "test_macro_f1": "max",
    "test_loss": "min",
    "params": "min",
    "flops": "min",
}
"""Every metric a trial reports that can rank trials, and whether higher or lower is better."""
TIE_BREAKS = ("valid_loss", "params")
"""After the ranking metric, in this order; lower is better for both."""


def mode(metric: str) -> Mode:
    """``'max'`` or ``'min'``; UserError naming the known metrics for any other name."""
    try:
        return DIRECTIONS[metric]
    except KeyError:
        known = ", ".join(DIRECTIONS)
        raise UserError(
            f"--metric {metric}: not a metric trials report; use one of {known}"
        ) from None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def order_key(metrics: Mapping[str, Any], metric: str = PRIMARY) -> tuple[float, ...]:
    """Sort key of one epoch's (or one trial's best epoch's) metrics: larger is better."""
    value = metrics.get(metric)
    sign = 1.0 if mode(metric) == "max" else -1.0
    key = [1.0 if _finite(value) else 0.0, sign * value if _finite(value) else -math.inf]
    for tie in TIE_BREAKS:
        if tie != metric:
            v = metrics.get(tie)
            key.append(-v if _finite(v) else -math.inf)
    return tuple(key)


def ranked(
    items: Iterable[T],
    metric: str = PRIMARY,
    metrics_of: Callable[[T], Mapping[str, Any]] = lambda x: x,  # type: ignore[assignment,return-value]
) -> list[T]:
    """``items`` best first by :func:`order_key` (stable: equal items keep their order)."""
    return sorted(items, key=lambda item: order_key(metrics_of(item), metric), reverse=True)


def best_of(
    items: Iterable[T],
    metric: str = PRIMARY,
    metrics_of: Callable[[T], Mapping[str, Any]] = lambda x: x,  # type: ignore[assignment,return-value]
) -> T | None:
    """The best of ``items`` (the first of equals), or None when there are none."""
    order = ranked(items, metric, metrics_of)
    return order[0] if order else None
