"""The trials of a search as ``best`` ranks them, from MLflow or from Tune's results.

Trials come from the search's MLflow runs (the trial runs nested under its search run); when
the store cannot be read they come from Tune's results in the run directory instead. Each
trial counts with its best epoch for the ranking metric, and trials are ordered by
:mod:`mrnet_ray.ranking` (ties: lower ``valid_loss``, then the smaller model).

>>> c = Candidate("a1", "finished", {1: {"valid_track_acc": 0.5, "valid_loss": 0.5},
...     2: {"valid_track_acc": 0.75, "valid_loss": 0.9}, 3: {"valid_track_acc": 0.75,
...     "valid_loss": 0.8}}, {"model.arch": "mrnet"}, {})
>>> c.best("valid_track_acc"), c.best("valid_loss")
((3, 0.75), (1, 0.5))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mrnet_ray import ranking
from mrnet_ray.errors import UserError
from mrnet_ray.text import format_table, human

COLUMNS = {  # table header -> flat TrialConfig key (as MLflow params name them)
    "arch": "model.arch",
    "channels": "model.channels",
    "dilations": "model.dilations",
    "route depths": "model.route_depths",
    "res2": "model.res2_scale",
    "lr": "train.lr",
}
TIE_METRIC = "valid_loss"


@dataclass(frozen=True)
class Candidate:
    """One trial of the search, as ranked."""

    trial_id: str
    status: str
    history: dict[int, dict[str, float]]
    """Epoch -> that epoch's ranking metric (and ``valid_loss``, the tie-break)."""
    params: dict[str, str]
    """The flat TrialConfig (``model.channels`` -> "24"), else the drawn parameters."""
    size: dict[str, float]
    """``params`` and ``flops``, when reported."""
    run_id: str | None = None
    """The trial's MLflow run, when ranked from MLflow."""

    def best_epoch(self, metric: str) -> dict[str, float] | None:
        """The metrics (with ``epoch`` and the size) of the trial's best epoch for ``metric``;
        None if no epoch has a finite value of it."""
        rows = [{**m, **self.size, "epoch": e} for e, m in sorted(self.history.items())]
        row = ranking.best_of(rows, metric)
        value = row.get(metric) if row else None
        return row if isinstance(value, int | float) and math.isfinite(value) else None

    def best(self, metric: str) -> tuple[int, float] | None:
        """``(epoch, value)`` of the best epoch (the earliest of equals)."""
        row = self.best_epoch(metric)
        return (int(row["epoch"]), float(row[metric])) if row else None


def rank(candidates: Sequence[Candidate], metric: str) -> list[Candidate]:
    """Best first; trials without a value last; trials equal in every respect by trial id, so
    MLflow and Tune's results (which list trials in different orders) rank alike."""
    by_id = sorted(candidates, key=lambda c: c.trial_id)
    return ranking.ranked(by_id, metric, lambda c: c.best_epoch(metric) or {})


class StoreUnavailable(Exception):
    """The MLflow store cannot list the search's trials; the message says why."""


def _merge(*histories: dict[int, float], names: Sequence[str]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for name, history in zip(names, histories, strict=True):
        for epoch, value in history.items():
            out.setdefault(epoch, {})[name] = value
    return out


def from_mlflow(search: dict[str, Any], uri: str, metric: str) -> list[Candidate]:
    """The search's trial runs with each one's history of ``metric`` (and ``valid_loss``)."""
    from mlflow.exceptions import MlflowException

    from mrnet_ray import tracking

    missing = tracking.missing_local_store(uri)
    if missing:
        raise StoreUnavailable(f"no store file {missing}")
    parent = search.get("parent_run_id")
    if not parent:
        raise StoreUnavailable("search.json names no search run")
    names = list(dict.fromkeys([metric, TIE_METRIC]))
    try:
        tracking.check_reachable(uri)
        runs = [  # the search's own trials, not the runs that confirmed its winners
            r for r in tracking.list_trial_runs(uri, search["experiment"], parent)
            if tracking.TAG_ROLE not in r.tags
        ]  # fmt: skip
        histories = [tracking.metric_histories(uri, [r.run_id for r in runs], n) for n in names]
    except (UserError, MlflowException, OSError) as e:
        raise StoreUnavailable(" ".join(str(e).split())[:300]) from None
    if not runs:
        raise StoreUnavailable(f"no trial runs under search run {parent}")
    return [
        Candidate(
            r.trial_id,
            r.status.lower(),
            _merge(*(h[r.run_id] for h in histories), names=names),
            dict(r.params),
            {k: r.metrics[k] for k in ("params", "flops") if k in r.metrics},
            r.run_id,
        )
        for r in runs
    ]


def _flattener(search: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, str]]:
    """Drawn Tune config -> flat TrialConfig, as the MLflow params have it (needs the space
    file and the prepared data; without them, the drawn values as they are)."""
    from mrnet_ray.search.space import load_space
    from mrnet_ray.shards import open_prepared

    try:
        space = load_space(search["space"])
        prepared = open_prepared(search["data"])
    except (UserError, KeyError):
        return lambda config: {k: str(v) for k, v in config.items()}
    n_mels, n_classes = prepared.feature.n_mels, len(prepared.labels)

    def flat(config: dict[str, Any]) -> dict[str, str]:
        try:
            trial = space.to_trial(config, n_mels=n_mels, n_classes=n_classes)
        except (KeyError, ValueError, UserError):
            return {k: str(v) for k, v in config.items()}
        return {k: str(v) for k, v in trial.flat().items()}

    return flat


def from_results(search: dict[str, Any], metric: str) -> list[Candidate]:
    """The trials as Tune's experiment state in the run directory records them."""
    from ray.tune import ExperimentAnalysis

    path = search["experiment_path"]
    try:
        analysis = ExperimentAnalysis(path)
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(
            f"{path}: no readable Tune results ({' '.join(str(e).split())[:200]}); "
            "and the MLflow store is unavailable, so there is nothing to rank"
        ) from None
    flat = _flattener(search)
    names = list(dict.fromkeys([metric, TIE_METRIC]))
    out = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        columns = getattr(frame, "columns", ())
        history: dict[int, dict[str, float]] = {}
        if metric in columns and "epoch" in columns:
            for _, row in frame.iterrows():
                values = {n: float(row[n]) for n in names if n in columns and row[n] == row[n]}
                if metric in values:  # row[n] == row[n] drops NaN
                    history[int(row["epoch"])] = values
        size = {k: float(frame[k].iloc[-1]) for k in ("params", "flops") if k in columns}
        config = {k: v for k, v in trial.config.items() if not k.startswith("_")}
        out.append(Candidate(trial.trial_id, trial.status.lower(), history, flat(config), size))
    return out


def _cell(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.3g}"


def ranking_table(
    ranked: Sequence[Candidate], metric: str, top: int, baseline: dict[str, Any] | None = None
) -> str:
    """The top trials, and the data's linear baseline below them to read them against."""
    headers = ["rank", "trial", metric, "epoch", "params", "FLOPs", *COLUMNS, "status"]
    rows = []
    for i, c in enumerate(ranked[:top], start=1):
        best = c.best(metric)
        rows.append(
            [
                str(i),
                c.trial_id,
                f"{best[1]:.4f}" if best else "-",
                str(best[0]) if best else "-",
                human(c.size["params"]) if "params" in c.size else "-",
                human(c.size["flops"]) if "flops" in c.size else "-",
                *(_cell(c.params.get(key)) for key in COLUMNS.values()),
                c.status,
            ]
        )
    if baseline is not None:
        value = baseline.get(metric)
        score = f"{value:.4f}" if isinstance(value, float) else "-"
        rows.append(["-", "baseline", score, *["-"] * (len(headers) - 4), baseline["model"]])
    return format_table(headers, rows)


def load_candidates(
    search: dict[str, Any], uri: str, metric: str
) -> tuple[list[Candidate], str, bool]:
    """The search's trials best first, where they came from, and whether MLflow answered
    (else they come from the Ray results, and a note on stderr says why)."""
    import sys

    try:
        candidates = from_mlflow(search, uri, metric)
        source, store = f"MLflow {uri}", True
    except StoreUnavailable as e:
        print(
            f"note: MLflow at {uri} is unavailable ({e}); ranking from the Ray results",
            file=sys.stderr,
        )
        candidates = from_results(search, metric)
        source, store = f"Ray results {search['experiment_path']}", False
    ranked = rank(candidates, metric)
    if not ranked or ranked[0].best(metric) is None:
        raise UserError(
            f"--metric {metric}: no trial of search {search['name']} reported it; use "
            "valid_track_acc, valid_acc, valid_macro_f1, valid_loss, params or flops"
        )
    return ranked, source, store


def data_baseline(data: str) -> dict[str, Any] | None:
    """The prepared data's linear baseline (fitted now if it has none yet); None when the
    data cannot be opened (ranking goes on without it)."""
    from mrnet_ray.shards import open_prepared
    from mrnet_ray.shards.baseline import ensure_baseline

    try:
        return ensure_baseline(open_prepared(data))
    except UserError:
        return None
