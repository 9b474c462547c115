"""A search's trials as it left them, read back from Tune's experiment state.

``ExperimentAnalysis`` keeps every trial's status and reported history; each trial counts
with its best epoch (:mod:`mrnet_ray.ranking`), the checkpoint an export would take.
"""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ray.tune import ExperimentAnalysis

from mrnet_ray import ranking
from mrnet_ray.config import TrialConfig
from mrnet_ray.search.settings import METRIC

TUNE_KEYS = {
    "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
    "iterations_since_restore", "pid", "done", "trial_id", "date", "hostname", "node_ip",
}  # fmt: skip
"""Tune's bookkeeping in a result row; the rest are the metrics training reported."""
Status = Literal["completed", "early-stopped", "failed", "unfinished"]


@dataclass(frozen=True)
class TrialOutcome:
    """One Tune trial as the search left it."""

    trial_id: str
    status: Status
    """completed: every epoch; early-stopped: ASHA ended it sooner; failed: it raised;
    unfinished: pending or running when the search stopped."""
    epochs: int
    """Epochs it reported (the highest ``epoch``)."""
    max_epochs: int
    """Epochs its config asked for."""
    best: dict[str, float] = field(default_factory=dict)
    """Metrics of its epoch with the highest ``valid_track_acc`` (the kept checkpoint's)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The drawn parameters."""
    error: str = ""
    path: str = ""
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """Every epoch it reported: (Tune's timestamp in ms, the metrics), in order."""
    name: str = ""
    """Tune's name of the trial."""

    @property
    def accuracy(self) -> float | None:
        value = self.best.get(METRIC)
        return None if value is None or math.isnan(value) else float(value)


def collect(
    experiment_path: str, to_trial: Callable[[dict[str, Any]], TrialConfig]
) -> list[TrialOutcome]:
    """Every trial of the Tune experiment at ``experiment_path``, in creation order."""
    analysis = ExperimentAnalysis(experiment_path)
    outcomes = []
    for trial in analysis.trials:
        config = {k: v for k, v in trial.config.items() if not k.startswith("_")}
        try:
            max_epochs = to_trial(config).train.epochs
        except Exception:  # a config the trainable rejected; it failed with the reason
            max_epochs = 0
        frame = analysis.trial_dataframes.get(trial.trial_id)
        best: dict[str, float] = {}
        history: list[tuple[int, dict[str, float]]] = []
        epochs = 0
        if frame is not None and METRIC in getattr(frame, "columns", ()):
            epochs = int(frame["epoch"].max())
            history = [
                (
                    int(row.get("timestamp", 0) * 1000),
                    {
                        k: v.item() if hasattr(v, "item") else v
                        for k, v in row.items()
                        if is_number(v) and k not in TUNE_KEYS and "/" not in k
                    },
                )
                for _, row in frame.iterrows()
            ]
            best = ranking.best_of(rows for _, rows in history) or {}
        error = ""
        if trial.status == "ERROR":
            status: Status = "failed"
            error = _last_line(trial.get_error())
        elif trial.status == "TERMINATED":
            status = "completed" if epochs >= max_epochs else "early-stopped"
        else:
            status = "unfinished"
        outcome = TrialOutcome(
            trial.trial_id, status, epochs, max_epochs, best, config, error, trial.path, history,
            str(trial),
        )  # fmt: skip
        outcomes.append(outcome)
    return outcomes


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _last_line(error: Any) -> str:
    lines = [ln.strip() for ln in str(error or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "failed"


def best_trial(outcomes: Sequence[TrialOutcome]) -> TrialOutcome | None:
    """The best trial by its best epoch (:mod:`mrnet_ray.ranking`), if any trial scored."""
    scored = [o for o in outcomes if o.accuracy is not None]
    return ranking.best_of(scored, metrics_of=lambda o: o.best)


def counts(outcomes: Sequence[TrialOutcome]) -> dict[str, int]:
    statuses = ("completed", "early-stopped", "failed", "unfinished")
    return {s: sum(o.status == s for o in outcomes) for s in statuses}


def write_trials_csv(outcomes: Sequence[TrialOutcome], path: Path) -> Path:
    """One row per trial: status, epochs, best metrics and drawn parameters."""
    metric_keys = [METRIC, "valid_loss", "valid_acc", "valid_macro_f1", "params", "flops"]
    params = sorted({k for o in outcomes for k in o.config})
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["trial_id", "status", "epochs", *metric_keys, *params, "error"])
        for o in outcomes:
            out.writerow(
                [o.trial_id, o.status, o.epochs]
                + [o.best.get(k, "") for k in metric_keys]
                + [o.config.get(k, "") for k in params]
                + [o.error]
            )
    return path
