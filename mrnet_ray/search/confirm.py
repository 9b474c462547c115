"""Confirming a search's winner: its top configurations retrained with new seeds, before export.

On small data the single best trial of a search is mostly luck: the same configuration with
another seed can land far from it. :func:`confirm` retrains the top ``k`` distinct
configurations of a finished search with ``n`` new seeds each (``train.seed`` + 1 ... + n), as
Tune trials of the search's own trainable, in a Tune experiment of its own beside the search's
(``<name>-confirm-<k>x<n>``, in the same Ray storage), on the same shared data, each run
nested under the search's MLflow run and tagged as a confirmation. Every seed trains all its
epochs (FIFO). The configuration with the best mean validation track accuracy wins (ties: fewer
parameters); its best-validating seed is what ``best --export`` exports.

A confirmation that is interrupted resumes where it stopped when ``best`` runs again with the
same ``k`` and ``n``: finished seeds are not trained again. The result is kept in
``search.json`` under ``confirmation``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrnet_ray import ranking, tracking
from mrnet_ray.errors import UserError
from mrnet_ray.search import outcomes as outcomes_mod
from mrnet_ray.search.planned import Search, run_planned
from mrnet_ray.search.record import update_record
from mrnet_ray.search.settings import METRIC, SearchSettings
from mrnet_ray.search.trial import SEED_KEY
from mrnet_ray.text import format_table, human

CONFIRMS_KEY = "confirm.of"
"""The Tune config key of a confirmation run naming the search trial it retrains."""
ROLE = "confirmation"
STARTUP_S = 5.0
"""Allowed per run when estimating a confirmation's time (start-up and checkpoints)."""


@dataclass(frozen=True)
class Confirmed:
    """One configuration of the search, retrained with new seeds."""

    trial: str
    """The search trial it came from."""
    config: dict[str, Any]
    """Its drawn parameters."""
    seeds: list[int]
    runs: list[str] = field(default_factory=list)
    """The confirmation trial of each seed (Tune trial ids)."""
    valid_track_acc: list[float] = field(default_factory=list)
    """Each seed's best validation track accuracy (NaN for a seed that failed)."""
    best_epochs: list[int] = field(default_factory=list)
    """The epoch of each seed's best validation track accuracy."""
    params: float = math.nan

    @property
    def mean(self) -> float:
        scores = [v for v in self.valid_track_acc if math.isfinite(v)]
        return statistics.fmean(scores) if scores else math.nan

    @property
    def sd(self) -> float:
        scores = [v for v in self.valid_track_acc if math.isfinite(v)]
        return statistics.stdev(scores) if len(scores) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        """As ``metrics.json`` and ``search.json`` keep it."""
        return {
            "trial": self.trial, "config": self.config, "seeds": self.seeds, "runs": self.runs,
            "valid_track_acc": self.valid_track_acc, "mean": self.mean, "sd": self.sd,
            "best_epochs": self.best_epochs, "params": self.params,
        }  # fmt: skip


@dataclass(frozen=True)
class Confirmation:
    """What a confirmation found: every configuration's seeds, and the chosen run."""

    table: list[Confirmed]
    """Best mean first."""
    chosen: Confirmed
    chosen_run: str
    """The chosen configuration's best-validating seed's confirmation trial."""
    location: str
    """Where that run's checkpoints are."""
    experiment_path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_path": self.experiment_path,
            "table": [c.to_json() for c in self.table],
            "chosen": self.chosen.trial,
            "chosen_run": self.chosen_run,
            "location": self.location,
        }


def plan(
    ranked_ids: list[str], outcomes: list[outcomes_mod.TrialOutcome], k: int, n: int, to_trial: Any
) -> list[Confirmed]:
    """The top ``k`` distinct configurations among the trials (best first) and their seeds."""
    by_id = {o.trial_id: o for o in outcomes}
    chosen: list[Confirmed] = []
    seen: set[str] = set()
    for trial_id in ranked_ids:
        outcome = by_id.get(trial_id)
        if outcome is None or outcome.accuracy is None or outcome.status == "failed":
            continue
        key = repr(sorted(outcome.config.items()))
        if key in seen:
            continue
        seen.add(key)
        base = to_trial(outcome.config).train.seed
        seeds = [base + 1 + i for i in range(n)]
        chosen.append(Confirmed(trial_id, outcome.config, seeds))
        if len(chosen) == k:
            break
    if not chosen:
        raise UserError("the search has no scored trial to confirm; run the search first")
    return chosen


def estimate_s(planned: list[Confirmed], outcomes: list[outcomes_mod.TrialOutcome],
               concurrency: int, to_trial: Any) -> float:  # fmt: skip
    """Seconds the confirmation should take: each configuration's epoch time in the search
    times its epochs, per seed, spread over the trials that run at once."""
    by_id = {o.trial_id: o for o in outcomes}
    total = 0.0
    for c in planned:
        times = [m.get("epoch_time_s", math.nan) for _, m in by_id[c.trial].history]
        epoch_s = statistics.fmean(t for t in times if math.isfinite(t)) if times else 0.0
        total += len(c.seeds) * (epoch_s * to_trial(c.config).train.epochs + STARTUP_S)
    return total / max(1, concurrency)


def confirm(
    record: dict[str, Any], run_dir: Path, ranked_ids: list[str], k: int, n: int
) -> Confirmation | None:
    """Retrain the top ``k`` configurations of the recorded search with ``n`` new seeds each
    (module docstring); None when interrupted (run it again to resume)."""
    search = Search.open(record)
    settings, to_trial = search.settings, search.to_trial
    outcomes = search.outcomes()
    planned = plan(ranked_ids, outcomes, k, n, to_trial)
    runs = sum(len(c.seeds) for c in planned)
    minutes = estimate_s(planned, outcomes, settings.max_concurrent or 1, to_trial) / 60
    print(
        f"\nconfirming the top {len(planned)} configuration(s) of search {settings.name} with "
        f"{n} new seed(s) each: {runs} more trials, about {minutes:.1f} min at "
        f"{settings.max_concurrent or 1} at once"
    )
    points = [
        {**c.config, SEED_KEY: seed, CONFIRMS_KEY: c.trial} for c in planned for seed in c.seeds
    ]
    ran = run_planned(
        search, run_dir, f"{settings.name}-confirm-{k}x{n}", points, ROLE,
        config_tags={CONFIRMS_KEY: tracking.TAG_CONFIRMS},
    )  # fmt: skip
    result = collect(search.outcomes(ran.experiment_path), planned, ran)
    if result is not None:
        update_record(run_dir, confirmation={"k": k, "n": n, **result.to_json()})
    return result


def collect(
    done: list[outcomes_mod.TrialOutcome], planned: list[Confirmed], settings: SearchSettings
) -> Confirmation | None:
    """The confirmation's outcome from its trials; None while seeds are unfinished."""
    path = settings.experiment_path
    expected = sum(len(c.seeds) for c in planned)
    if len(done) < expected or any(o.status == "unfinished" for o in done):
        return None
    table = []
    for c in planned:
        mine = sorted(
            (o for o in done if o.config.get(CONFIRMS_KEY) == c.trial),
            key=lambda o: c.seeds.index(int(o.config[SEED_KEY])),
        )
        scores = [o.accuracy if o.accuracy is not None else math.nan for o in mine]
        size = next((o.best.get("params") for o in mine if "params" in o.best), math.nan)
        epochs = [int(o.best.get("epoch", 0)) for o in mine]
        table.append(dataclasses.replace(
            c, runs=[o.trial_id for o in mine], valid_track_acc=scores, params=size,
            best_epochs=epochs,
        ))  # fmt: skip
    table = ranking.ranked(table, METRIC, lambda c: {METRIC: c.mean, "params": c.params})
    chosen = table[0]
    if not math.isfinite(chosen.mean):
        raise UserError(f"{path}: every confirmation run failed; see its trials' errors")
    seeds = [o for o in done if o.trial_id in chosen.runs]
    best = ranking.best_of(seeds, METRIC, lambda o: o.best)
    assert best is not None
    return Confirmation(table, chosen, best.trial_id, settings.checkpoints(best.trial_id), path)


def confirmation_table(confirmation: Confirmation) -> str:
    """The confirmation as printed: per configuration its seeds' scores, mean and sd."""
    rows = [
        [
            c.trial, ", ".join(f"{v:.4f}" for v in c.valid_track_acc), f"{c.mean:.4f}",
            f"{c.sd:.4f}", human(c.params) if math.isfinite(c.params) else "-",
            "chosen" if c is confirmation.chosen else "",
        ]
        for c in confirmation.table
    ]  # fmt: skip
    headers = ["trial", "valid_track_acc per new seed", "mean", "sd", "params", ""]
    return (
        f"confirmation ({len(confirmation.table)} configurations x "
        f"{len(confirmation.chosen.seeds)} seeds; best mean wins, ties to fewer parameters):\n"
        + format_table(headers, rows)
        + f"\nchosen: {confirmation.chosen.trial}'s best seed, run {confirmation.chosen_run}"
    )
