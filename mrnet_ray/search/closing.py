"""The end of a search: its outcomes, reports and record, and its MLflow runs brought in line
with Tune's results.

Tune's results in the results root are the search's own account of every trial and epoch.
The Tune callback writes MLflow's runs from them as trials report; what it could not write (a
driver killed with writes queued, a store that was down or refused the credentials) is written
from Tune's results by :func:`reconcile`, on ``--resume`` before trials run again and when the
search ends. A store that fails the closing writes is one line, after the record and reports
are written: the search itself is done, and ``--resume`` completes its MLflow runs once the
store takes them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from ray import tune

from mrnet_ray import tracking
from mrnet_ray.config import TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search import outcomes as outcomes_mod
from mrnet_ray.search import report
from mrnet_ray.search.record import read_record, write_record
from mrnet_ray.search.settings import SearchSettings

ORPHAN_REASON = "started just before the search was killed; Tune never saved this trial"
TUNE_STATUS = {"completed": "TERMINATED", "early-stopped": "TERMINATED", "failed": "ERROR"}
"""A trial outcome's status -> Tune's (anything else: pending or running)."""

ToTrial = Callable[[dict[str, Any]], TrialConfig]


def reconcile(
    where: tracking.Tracking,
    parent: str,
    outcomes: Sequence[outcomes_mod.TrialOutcome],
    to_trial: ToTrial,
    tags: dict[str, str],
) -> list[str]:
    """Every trial's MLflow run brought in line with Tune's results
    (:func:`~mrnet_ray.tracking.reconcile_trial_runs`); the ids of the trials it changed."""
    records = []
    for o in outcomes:
        try:
            config = to_trial(o.config)
        except Exception:  # a config the trainable rejected: its run holds no params
            config = None
        status = TUNE_STATUS.get(o.status, "RUNNING")
        records.append(tracking.TuneRecord(o.trial_id, o.name, status, o.history, o.error, config))
    return tracking.reconcile_trial_runs(where, parent, records, tags)


def store_failed(settings: SearchSettings, where: tracking.Tracking, reason: str) -> str:
    """The one line of an MLflow store that failed the search's closing writes."""
    fix = (
        f"once {tracking.CREDENTIALS} are those of a user it accepts"
        if reason.startswith("refused")
        else "once it answers"
    )
    return (
        f"MLflow at {where.uri} {reason} as the search ended: search.json and Tune's results "
        f"hold the whole search, its MLflow runs do not; {fix}, `python -m mrnet_ray.tune "
        f"--resume --run-dir {settings.run_dir}` completes them from Tune's results"
    )


def end_failed(
    settings: SearchSettings, where: tracking.Tracking, parent: str, status: str, error: str
) -> None:
    """Record a search that stopped with an exception (``status`` KILLED or FAILED); a store
    that refuses the write is said in one line, and the exception goes on."""
    write_record(settings, status=status)
    try:
        tracking.end_search_run(where, parent, status, error=error)
    except Exception as e:
        reason = tracking.store_failure(e)
        if reason is None:
            raise
        print(f"warning: {store_failed(settings, where, reason)}", file=sys.stderr)


def _any_trial(experiment_path: str) -> bool:
    """Whether the Tune experiment holds a trial (a search whose every proposal was over the
    limits holds none, nor perhaps any state at all)."""
    try:
        return bool(tune.ExperimentAnalysis(experiment_path).trials)
    except (ValueError, OSError, RuntimeError):
        return False


def end_search(
    settings: SearchSettings,
    where: tracking.Tracking,
    parent: str,
    *,
    to_trial: ToTrial,
    tags: dict[str, str],
    searcher: Any,
    wall_s: float,
    data_in_memory: bool,
) -> int:
    """Report a search whose Tuner returned, record it, close its MLflow runs and print the
    summary; returns the exit status (130: trials left unfinished). UserError (one line, after
    the summary) when the store fails the closing writes."""
    exhausted = getattr(searcher, "exhausted", "")
    if exhausted and not _any_trial(settings.experiment_path):
        end_failed(settings, where, parent, "FAILED", exhausted)
        raise UserError(f"{settings.space}: {exhausted}")
    outcomes = outcomes_mod.collect(settings.experiment_path, to_trial)
    counts = outcomes_mod.counts(outcomes)
    interrupted = counts["unfinished"] > 0
    files, notes = report.write_reports(settings, outcomes, interrupted)
    best = outcomes_mod.best_trial(outcomes)
    old = read_record(settings.run_dir)
    failure = None
    try:
        best_record = report.best_record(settings, where, parent, best, to_trial)
    except Exception as e:
        if (failure := tracking.store_failure(e)) is None:
            raise
        best_record = old.get("best")  # --resume records it again
    status = "KILLED" if interrupted else "FINISHED"
    write_record(
        settings,
        status=status,
        wall_s=round(old.get("wall_s", 0.0) + wall_s, 1),
        trials=counts,
        best=best_record,
        pareto=[o.trial_id for o in files.pop("front", [])],
        data_in_memory=data_in_memory,
    )
    if exhausted:
        notes.append(f"the search stopped early: {exhausted}")
    infeasible = getattr(searcher, "infeasible_total", 0)
    if infeasible:
        notes.append(f"{infeasible} proposal(s) over the space's limits were never trained")
    if failure is None:
        try:
            _close_runs(where, parent, outcomes, to_trial, tags, interrupted, notes)
            tracking.log_search_details(where, parent, files=list(files.values()))
            tracking.end_search_run(where, parent, status)
        except Exception as e:
            if (failure := tracking.store_failure(e)) is None:
                raise
    print(report.summary(settings, where, parent, outcomes, wall_s, notes))
    if failure is not None:
        raise UserError(store_failed(settings, where, failure))
    return 130 if interrupted else 0


def _close_runs(
    where: tracking.Tracking,
    parent: str,
    outcomes: list[outcomes_mod.TrialOutcome],
    to_trial: ToTrial,
    tags: dict[str, str],
    interrupted: bool,
    notes: list[str],
) -> None:
    """The trial runs brought in line with Tune's results, and (a search that ended) the runs
    of trials Tune never saved ended KILLED; adds to ``notes`` what changed."""
    mended = reconcile(where, parent, outcomes, to_trial, tags)
    if mended:
        notes.append(f"MLflow runs of {len(mended)} trial(s) completed from Tune's results")
    if not interrupted:
        orphans = tracking.end_orphaned_trial_runs(
            where, parent, {o.trial_id for o in outcomes}, ORPHAN_REASON
        )
        if orphans:
            notes.append(f"{orphans} MLflow trial run(s) of trials Tune never saved ended KILLED")
