"""Export a search's winner: its best checkpoint, one test evaluation, a bundle, the registry.

The winner is a :class:`Choice`: the best trial of the search (``best --confirm 0``), or the
best-validating seed of the configuration a confirmation found best on average
(:mod:`mrnet_ray.search.confirm`). :func:`export_winner` takes its best checkpoint
(:mod:`~mrnet_ray.export.checkpoints`), evaluates it once on the test split
(:mod:`~mrnet_ray.export.evaluate`), writes the bundle (:mod:`~mrnet_ray.export.bundle`) with
``metrics.json``, ``confusion_matrix.png`` and ``MODEL_CARD.md``
(:mod:`~mrnet_ray.export.card`), and registers it (:mod:`~mrnet_ray.export.champion`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

import mrnet_ray
from mrnet_ray import tracking
from mrnet_ray.config import TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.export.bundle import export_bundle
from mrnet_ray.export.candidates import Candidate
from mrnet_ray.export.card import CardFacts, render_card
from mrnet_ray.export.champion import register
from mrnet_ray.export.checkpoints import best_checkpoint
from mrnet_ray.export.evaluate import class_report, evaluate_test, held_out_metrics, held_out_report
from mrnet_ray.export.plots import confusion_matrix_png
from mrnet_ray.nn import model_cost
from mrnet_ray.search.confirm import Confirmation, confirm, confirmation_table
from mrnet_ray.search.planned import Search
from mrnet_ray.search.record import trial_location
from mrnet_ray.search.refit import final_fit
from mrnet_ray.shards import Prepared, open_prepared
from mrnet_ray.shards.baseline import ensure_baseline, margin_sentence
from mrnet_ray.training.checkpoint import model_from_checkpoint
from mrnet_ray.training.metrics import EvalStats


@dataclass(frozen=True)
class Choice:
    """The run an export takes, and how it was chosen."""

    trial_id: str
    """The Tune trial whose checkpoints are exported."""
    location: str
    """Where they are (a Tune trial directory or a Ray Train run)."""
    rule: str
    """How it was chosen, in words (the model card says it)."""
    score: float
    """What it was chosen by: the confirmed mean validation track accuracy, or the trial's
    best (``best --confirm 0``); the champion rule compares it."""
    run_id: str | None = None
    """The trial's MLflow run, when known."""
    confirmation: dict[str, Any] | None = None
    """``Confirmation.to_json()`` when a confirmation chose it."""
    final_fit: dict[str, Any] | None = None
    """``FinalFit.to_json()`` when the run is a final fit on train + valid (its last
    checkpoint is exported; its validation metrics measure nothing held out)."""


def best_trial_choice(search: dict[str, Any], winner: Candidate, metric: str) -> Choice:
    """The search's best trial as it stands (no confirmation)."""
    run_id, recorded = winner.run_id, search.get("best") or {}
    if run_id is None and recorded.get("trial_id") == winner.trial_id:
        run_id = recorded.get("mlflow_run_id")  # ranked without MLflow; the search noted it
    best = winner.best(metric)
    return Choice(
        winner.trial_id, trial_location(search, winner.trial_id),
        f"the search's best trial by {metric} (one run, no confirmation)",
        best[1] if best else float("nan"), run_id,
    )  # fmt: skip


def confirmed_choice(confirmation: Confirmation) -> Choice:
    """The best-validating seed of the configuration with the best confirmed mean."""
    c = confirmation.chosen
    rule = (
        f"the best mean validation track accuracy over {len(c.seeds)} new seeds among the top "
        f"{len(confirmation.table)} configurations of the search (ties: fewer parameters); "
        "the exported run is that configuration's best-validating seed"
    )
    return Choice(
        confirmation.chosen_run, confirmation.location, rule, c.mean,
        confirmation=confirmation.to_json(),
    )  # fmt: skip


def choose(
    search: dict[str, Any],
    run_dir: Path,
    ranked: list[Candidate],
    metric: str,
    k: int,
    n: int,
    refit: bool = True,
) -> Choice | None:
    """The run to export: with ``k`` > 0 a confirmation of the top ``k`` configurations with
    ``n`` new seeds each picks the configuration, else the search's best trial; with ``refit``
    it is then trained once more on train + valid (:mod:`mrnet_ray.search.refit`) and that run
    is exported. None: interrupted (the same command resumes)."""
    if not k:
        choice = best_trial_choice(search, ranked[0], metric)
        if not refit:
            return choice
        opened = Search.open(search)
        (outcome,) = [o for o in opened.outcomes() if o.trial_id == choice.trial_id]
        seed = opened.to_trial(outcome.config).train.seed
        source, config, epochs = choice.trial_id, outcome.config, [int(outcome.best["epoch"])]
    else:
        confirmation = confirm(search, run_dir, [c.trial_id for c in ranked], k, n)
        if confirmation is None:
            return None
        print(confirmation_table(confirmation))
        choice = confirmed_choice(confirmation)
        if not refit:
            return choice
        c = confirmation.chosen
        seed = c.seeds[c.runs.index(confirmation.chosen_run)]
        source, config, epochs = c.trial, c.config, c.best_epochs
    fitted = final_fit(search, run_dir, source, config, seed, epochs)
    if fitted is None:
        return None
    rule = (
        f"{choice.rule}; then trained once more on train + valid for {fitted.epochs} epochs "
        f"(the median of the best epochs {fitted.best_epochs}), whose last checkpoint is exported"
    )
    return dataclasses.replace(
        choice, trial_id=fitted.trial_id, location=fitted.location, rule=rule, run_id=None,
        final_fit=fitted.to_json(),
    )  # fmt: skip


def report_files(
    name: str,
    prepared: Prepared,
    trial: TrialConfig,
    state: dict[str, Any],
    stats: EvalStats,
    lineage: dict[str, Any],
    choice: Choice,
) -> dict[str, str | bytes]:
    """``metrics.json``, ``confusion_matrix.png`` and ``MODEL_CARD.md`` of the bundle."""
    labels = prepared.labels
    test, cm = held_out_metrics(stats), stats.track_confusion
    per_class = class_report(cm, labels)
    valid = {k: v for k, v in state.get("metrics", {}).items() if k.startswith("valid_")}
    if choice.final_fit:  # it trained on valid: the held-out figure is the selection's
        valid = {"valid_track_acc": choice.score}
    cost = model_cost(trial.model, prepared.feature.segment_frames)
    confirmation = (choice.confirmation or {}).get("table", [])
    baseline = ensure_baseline(prepared)
    beats, margin = margin_sentence(test["test_track_acc"], baseline)
    margin = f"The model {margin}." if beats else f"**Warning:** the model {margin}."
    facts = CardFacts(
        title=name, manifest=prepared.manifest, prepared=prepared.path, trial=trial.to_dict(),
        valid=valid, test=test, per_class=per_class, lineage=lineage, params=cost.params,
        flops=cost.flops, chosen_by=choice.rule, confirmation=confirmation, baseline=margin,
        trained_on="train + valid (a final fit)" if choice.final_fit else "train",
    )  # fmt: skip
    metrics = {
        "split": "test", "data_hash": prepared.content_hash,
        "test": {**test, "tracks": len(stats.track_index), "segments": stats.segments},
        "valid": valid, "per_class": per_class, "labels": list(labels),
        "track_confusion": cm.tolist(), "params": cost.params, "flops": cost.flops,
        "selection": {"rule": choice.rule, "score": choice.score},
        "baseline": {
            **baseline, "margin_points": 100 * (test["test_track_acc"] - baseline["test_track_acc"])
        },
    }  # fmt: skip
    if choice.confirmation:
        metrics["confirmation"] = confirmation
        metrics["chosen"] = choice.confirmation["chosen"]
    if choice.final_fit:
        metrics["final_fit"] = choice.final_fit
    return {
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "confusion_matrix.png": confusion_matrix_png(
            cm, labels, f"{name}: test tracks (n={int(cm.sum())})"
        ),
        "MODEL_CARD.md": render_card(facts),
    }


def unregistered(bundle: Path, why: str) -> UserError:
    """The one line (exit 2) of an export whose bundle is written but could not be registered."""
    return UserError(
        f"{bundle}: written but not registered in MLflow ({why}); once the store answers, run "
        "the same `best --export` again to register it (predict reads the bundle as it is)"
    )


def export_winner(
    search: dict[str, Any],
    run_dir: Path,
    choice: Choice,
    metric: str,
    out: Path,
    name: str,
    alias: str,
    uri: str | None,
) -> Path:
    """Export ``choice`` to ``out`` and, with a store ``uri``, register it; prints each step.

    The bundle is written first; if it cannot then be registered (no store, or the store
    failed), :func:`unregistered` says so and how to register it later.
    """
    with tempfile.TemporaryDirectory() as tmp:
        latest = choice.final_fit is not None
        where, local, state = best_checkpoint(choice.location, metric, Path(tmp), latest=latest)
        model, trial, feature, labels = model_from_checkpoint(local)
    prepared = open_prepared(search["data"])
    prepared.check_features(feature)
    if labels != prepared.labels:
        raise UserError(
            f"{search['data']}: its labels {list(prepared.labels)} differ from the checkpoint's "
            f"{list(labels)}; export against the data the search trained on"
        )
    print(
        f"\nexporting trial {choice.trial_id}: checkpoint {where} (epoch {state.get('epoch')}, "
        f"{metric} {state.get('metrics', {}).get(metric, float('nan')):.4f})"
    )
    stats, example = evaluate_test(model, prepared)
    test = held_out_metrics(stats)
    print(held_out_report(stats, labels))
    beats, margin = margin_sentence(test["test_track_acc"], ensure_baseline(prepared))
    print(f"the model {margin}" if beats else f"WARNING: the model {margin}")
    lineage = {
        "search": search["name"],
        "run_dir": str(run_dir),
        "trial_id": choice.trial_id,
        "epoch": state.get("epoch"),
        "checkpoint": where,
        "mlflow_trial_run_id": choice.run_id,
        "tracking_uri": search["tracking_uri"],
        "data_hash": prepared.content_hash,
        "code_version": tracking.code_version(),
        "mrnet_ray_version": mrnet_ray.__version__,
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    extra = report_files(name, prepared, trial, state, stats, lineage, choice)
    bundle = export_bundle(
        out, model, trial, feature, labels,
        metadata={"lineage": lineage, "test_metrics": test}, extra=extra,
    )  # fmt: skip
    print(f"bundle: {bundle} ({', '.join(sorted(p.name for p in bundle.iterdir()))})")
    if uri is None:
        raise unregistered(bundle, "it was unavailable when the trials were ranked")
    try:
        lines = register(uri, search, run_dir, bundle, model, example, name, alias, test, lineage)
    except (UserError, MlflowException, OSError) as e:  # requests' errors are OSErrors
        raise unregistered(bundle, " ".join(str(e).split())[:300]) from None
    print("\n".join(lines))
    return bundle
