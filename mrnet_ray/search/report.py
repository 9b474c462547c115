"""What a search found, written to its run directory: ``trials.csv``, the Pareto front
(``pareto.csv``, ``pareto.png``), the importance plot and the closing summary.

>>> pareto_front([(0.9, 100), (0.8, 50), (0.7, 80), (0.9, 120)], ("max", "min"))
[0, 1]
"""

from __future__ import annotations

import csv
import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure

from mrnet_ray import tracking
from mrnet_ray.config import TrialConfig
from mrnet_ray.search.outcomes import (
    TrialOutcome,
    best_trial,
    counts,
    is_number,
    write_trials_csv,
)
from mrnet_ray.search.settings import SearchSettings
from mrnet_ray.search.tuner import journal_storage


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates (at least as good everywhere, better
    somewhere); ``modes`` says per coordinate whether higher ('max') or lower is better."""
    signs = [1.0 if m == "max" else -1.0 for m in modes]
    scored = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]

    def dominates(a: list[float], b: list[float]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    return [
        i
        for i, p in enumerate(scored)
        if not any(dominates(q, p) for j, q in enumerate(scored) if j != i)
    ]


def write_pareto(
    outcomes: Sequence[TrialOutcome], metrics: Sequence[str], modes: Sequence[str], out_dir: Path
) -> tuple[Path, Path, list[TrialOutcome]]:
    """``pareto.csv`` (every scored trial, ``on_front`` marked) and ``pareto.png``.

    Each trial counts with its best epoch (the checkpoint ``best`` exports); its size does not
    change across epochs.
    """
    scored = [
        o
        for o in outcomes
        if o.status != "failed" and all(is_number(o.best.get(m)) for m in metrics)
    ]
    points = [[o.best[m] for m in metrics] for o in scored]
    front = set(pareto_front(points, modes))
    csv_path = out_dir / "pareto.csv"
    with csv_path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["trial_id", *metrics, "on_front", "status"])
        for i, o in enumerate(scored):
            out.writerow([o.trial_id, *points[i], i in front, o.status])

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    xs, ys = [p[1] for p in points], [p[0] for p in points]
    ax.scatter(xs, ys, color="0.6", label="trials")
    on = sorted((points[i][1], points[i][0]) for i in front)
    if on:
        ax.step([p[0] for p in on], [p[1] for p in on], where="post", color="C3")
        ax.scatter([p[0] for p in on], [p[1] for p in on], color="C3", label="Pareto front")
    if xs and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(metrics[1])
    ax.set_ylabel(metrics[0])
    ax.set_title("accuracy against model cost")
    ax.legend()
    png_path = out_dir / "pareto.png"
    fig.savefig(png_path, dpi=120)
    return csv_path, png_path, [scored[i] for i in sorted(front)]


def importance_plot(study: optuna.Study, metric: str, path: Path) -> str:
    """Bar chart of Optuna's parameter importances for ``metric`` (the study's first
    objective); returns "" when written, else why it was skipped."""
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(finished) < 2:
        return f"{len(finished)} completed trial(s); importances need at least 2"
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    try:
        with warnings.catch_warnings():  # "few trials per regime": true of any small search
            warnings.simplefilter("ignore", UserWarning)
            importances = optuna.importance.get_param_importances(study, target=target)
    except (RuntimeError, ValueError) as e:  # e.g. no parameter varied across the trials
        return f"Optuna could not compute importances: {e}"
    if not importances:
        return "no parameter varied across the completed trials"
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.35 * len(names) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel(f"importance for {metric} (Optuna's default evaluator, {len(finished)} trials)")
    fig.savefig(path, dpi=120)
    return ""


def orphaned_trials(study: optuna.Study) -> int:
    """Mark as failed the Optuna trials still RUNNING after a search ended: trials asked just
    before an interruption whose Tune trial was never saved. Returns how many."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


def write_reports(
    settings: SearchSettings, outcomes: list[TrialOutcome], interrupted: bool
) -> tuple[dict[str, Any], list[str]]:
    """trials.csv, the Pareto front (two metrics) and the importance plot, in the run dir;
    returns the files (and the front's trials under "front") and notes for the summary."""
    run_dir = Path(settings.run_dir)
    files: dict[str, Any] = {"trials": write_trials_csv(outcomes, run_dir / "trials.csv")}
    notes: list[str] = []
    if len(settings.metrics) > 1:
        csv_path, png_path, front = write_pareto(
            outcomes, settings.metrics, settings.modes, run_dir
        )
        files |= {"pareto_csv": csv_path, "pareto_png": png_path, "front": front}
    study = optuna.load_study(study_name=settings.name, storage=journal_storage(settings.journal))
    if not interrupted:
        orphans = orphaned_trials(study)
        if orphans:
            notes.append(f"{orphans} Optuna trial(s) asked before an interruption marked failed")
    skipped = importance_plot(study, settings.metrics[0], run_dir / "importance.png")
    if skipped:
        notes.append(f"no importance plot: {skipped}")
    else:
        files["importance"] = run_dir / "importance.png"
    return files, notes


def best_record(
    settings: SearchSettings,
    where: tracking.Tracking,
    parent_run_id: str,
    best: TrialOutcome | None,
    to_trial: Callable[[dict[str, Any]], TrialConfig],
) -> dict[str, Any] | None:
    """The best trial as ``search.json`` keeps it: metrics, config, where its checkpoints are,
    its MLflow run."""
    if best is None:
        return None
    runs = tracking.list_trial_runs(where.uri, settings.experiment, parent_run_id)
    return {
        "trial_id": best.trial_id,
        "valid_track_acc": best.accuracy,
        "epoch": int(best.best.get("epoch", 0)),
        "metrics": best.best,
        "config": best.config,
        "trial_config": to_trial(best.config).to_dict(),
        "checkpoints": settings.checkpoints(best.trial_id),
        "mlflow_run_id": next((r.run_id for r in runs if r.trial_id == best.trial_id), None),
    }


def summary(
    settings: SearchSettings,
    where: tracking.Tracking,
    parent_run_id: str,
    outcomes: list[TrialOutcome],
    wall_s: float,
    notes: list[str],
) -> str:
    """The closing lines: counts, the best trial, where everything is, what to run next."""
    c = counts(outcomes)
    early = f", {c['early-stopped']} stopped early by ASHA" if settings.scheduler == "asha" else ""
    unfinished = f", {c['unfinished']} unfinished" if c["unfinished"] else ""
    executor = (
        "each trial trained in its own Tune trial process"
        if settings.executor == "tune"
        else f"each trial trained by Ray Train ({settings.resources.num_workers} workers)"
    )
    lines = [
        "",
        f"search {settings.name}: {len(outcomes)} trials in {wall_s:.0f} s: "
        f"{c['completed']} completed{early}, {c['failed']} failed{unfinished}; {executor}",
    ]
    best = best_trial(outcomes)
    if best is not None:
        lines.append(
            f"best trial {best.trial_id}: valid_track_acc {best.accuracy:.4f} "
            f"(epoch {int(best.best.get('epoch', 0))} of {best.max_epochs})"
        )
        drawn = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.config.items()
        )
        lines += textwrap.wrap(drawn, 100, initial_indent="  ", subsequent_indent="  ")
    lines += [f"failed trial {o.trial_id}: {o.error}" for o in outcomes if o.status == "failed"]
    run_dir = settings.run_dir
    lines += [
        f"run dir:  {run_dir}",
        f"results:  {settings.experiment_path}",
        f"MLflow:   experiment {settings.experiment!r} ({where.uri}), search run {parent_run_id}",
        f"Optuna:   study {settings.name!r} in {settings.journal}",
        *notes,
    ]
    if c["unfinished"]:
        lines.append(
            f"interrupted; continue with: python -m mrnet_ray.tune --resume --run-dir {run_dir}"
        )
    ui = (
        f"open {where.uri}"
        if tracking.is_remote(where.uri)
        else f"make ui RUNS={run_dir}   (or: python -m mrnet_ray.ui --run-dir {run_dir})"
    )
    lines += ["next:", f"  {ui}", f"  python -m mrnet_ray.best --run-dir {run_dir} --export"]
    return "\n".join(lines)
