"""The search's runs: the parent run, trial-run writes, and reading trial runs back."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mrnet_ray.config import TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.tracking.store import (
    ERROR_CHARS,
    TAG_ERROR,
    TAG_INFEASIBLE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEARCH_KEY,
    TAG_TRIAL_ID,
    Tracking,
    is_auth_error,
)


def store_failure(e: BaseException) -> str | None:
    """What went wrong when an MLflow store failed a request, in a few words ("refused the
    credentials (UNAUTHENTICATED, HTTP 401)", "failed: ..."); None when ``e`` is no failure of
    the store's (a bug, to keep its traceback)."""
    if not isinstance(e, MlflowException):
        return None
    if is_auth_error(e):
        return f"refused the credentials ({e.error_code}, HTTP {e.get_http_status_code()})"
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"failed: {first[:200]}"


def start_search_run(
    tracking: Tracking, name: str, *, key: str, tags: Mapping[str, str] = {}
) -> str:
    """The search's parent run: the run started earlier with the same ``key`` (use the Tune
    experiment path, so ``--resume`` continues it), set RUNNING again, or a new one."""
    client = MlflowClient(tracking.uri)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    found = client.search_runs(
        [tracking.experiment_id], f"tags.`{TAG_SEARCH_KEY}` = '{digest}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return run_id
    run = client.create_run(
        tracking.experiment_id, run_name=name, tags={**tags, TAG_SEARCH_KEY: digest}
    )
    return run.info.run_id


def end_search_run(
    tracking: Tracking, run_id: str, status: str = "FINISHED", error: str = ""
) -> None:
    """End the search run as FINISHED, FAILED or KILLED; ``error`` says why (truncated)."""
    client = MlflowClient(tracking.uri)
    if error:
        client.set_tag(run_id, TAG_ERROR, error[:ERROR_CHARS])
    client.set_terminated(run_id, status)


def log_search_details(
    tracking: Tracking,
    run_id: str,
    params: Mapping[str, Any] = {},
    files: Sequence[Path] = (),
    metrics: Mapping[str, float] = {},
) -> None:
    """Log the search run's settings as params (the same values again on ``--resume``), files
    (the space, plots, tables) as artifacts at the run's root, and metrics (the data's linear
    baseline, which the UI charts beside the trials)."""
    client = MlflowClient(tracking.uri)
    log_params(client, run_id, params)
    if metrics:
        log_metrics(client, run_id, metrics, step=0)
    for path in files:
        client.log_artifact(run_id, str(path))


def end_orphaned_trial_runs(
    tracking: Tracking, parent_run_id: str, trial_ids: set[str], reason: str
) -> int:
    """End KILLED (``reason`` in the ``error`` tag) the trial runs of a search still RUNNING
    whose trial the search does not know: trials started just before a crash that Tune never
    saved. Call it when the search has ended; returns how many there were."""
    client = MlflowClient(tracking.uri)
    query = f"tags.`{TAG_PARENT}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    runs = client.search_runs([tracking.experiment_id], query, max_results=1000)
    orphans = [
        r.info.run_id
        for r in runs
        if r.data.tags.get(TAG_TRIAL_ID) not in trial_ids and TAG_ROLE not in r.data.tags
    ]  # a confirmation's runs belong to another Tune experiment
    for run_id in orphans:
        client.set_tag(run_id, TAG_ERROR, reason[:ERROR_CHARS])
        client.set_terminated(run_id, "KILLED")
    return len(orphans)


@dataclass(frozen=True)
class TuneRecord:
    """One trial as Tune's own results hold it (:func:`reconcile_trial_runs`)."""

    trial_id: str
    name: str
    """Tune's name of the trial (its MLflow run's name)."""
    status: str
    """TERMINATED, ERROR, or anything else (pending or running)."""
    history: Sequence[tuple[int, Mapping[str, float]]]
    """``(timestamp ms, metrics)`` of every report, in order; an epoch trained again (a trial
    resumed from an older checkpoint) appears again."""
    error: str = ""
    config: TrialConfig | None = None
    """Its whole config, for a run the callback never made."""


def reconcile_trial_runs(
    tracking: Tracking,
    parent_run_id: str,
    trials: Sequence[TuneRecord],
    tags: Mapping[str, str] = {},
) -> list[str]:
    """Bring every trial's MLflow run in line with Tune's own record of the trial, for what the
    Tune callback could not write (a driver killed with writes queued, a store that was down
    or refused the credentials): a trial that reported but has no run gets one (``tags``,
    params and ``trial_config.yaml``, as the callback makes it), and a run without params gets
    them; epochs Tune recorded that the run lacks are written, each once (by step, the first
    report of an epoch, as the callback keeps it); and the run of a trial Tune finished or
    failed ends FINISHED or FAILED.

    Returns the ids of the trials whose runs it changed. Safe to repeat: what it wrote once is
    found the next time."""
    client = MlflowClient(tracking.uri)
    query = f"tags.`{TAG_PARENT}` = '{parent_run_id}'"
    found = client.search_runs([tracking.experiment_id], query, max_results=10_000)
    runs = {r.data.tags.get(TAG_TRIAL_ID): r for r in found}
    changed = []
    for trial in trials:
        first: dict[int, tuple[int, Mapping[str, float]]] = {}
        for ts, metrics in trial.history:
            first.setdefault(int(metrics.get("epoch", 0)), (ts, metrics))
        end = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(trial.status)
        run = runs.get(trial.trial_id)
        if run is None and not (first or end):
            continue  # not started yet: the callback makes its run when it starts
        # a run made whose params never reached the store: they are written now
        unset = trial.config if run is not None and not run.data.params else None
        if run is None:
            run_id = _create_trial_run(client, tracking, parent_run_id, trial, tags)
            status, logged = "RUNNING", set()
        else:
            run_id, status = run.info.run_id, run.info.status
            logged = logged_steps(client, run_id, trial.history[0][1]) if first else set()
        if unset is not None:
            log_params(client, run_id, unset.flat())
            log_trial_config(client, run_id, unset)
        missing = [first[epoch] for epoch in sorted(first) if epoch not in logged]
        for ts, metrics in missing:
            values = {k: v for k, v in metrics.items() if k != "epoch"}
            log_metrics(client, run_id, values, int(metrics["epoch"]), ts or None)
        if end and status != end:
            if end == "FAILED":
                client.set_tag(run_id, TAG_ERROR, (trial.error or "failed")[:ERROR_CHARS])
            else:
                log_learning_curve(client, run_id)
            client.set_terminated(run_id, end)
        if run is None or unset is not None or missing or (end and status != end):
            changed.append(trial.trial_id)
    return changed


def _create_trial_run(
    client: MlflowClient,
    tracking: Tracking,
    parent_run_id: str,
    trial: TuneRecord,
    tags: Mapping[str, str],
) -> str:
    """The run the Tune callback would have made for ``trial`` (name, tags, params, config)."""
    run_tags = {**tags, TAG_PARENT: parent_run_id, TAG_TRIAL_ID: trial.trial_id}
    run = client.create_run(tracking.experiment_id, run_name=trial.name, tags=run_tags)
    if trial.config is not None:
        log_params(client, run.info.run_id, trial.config.flat())
        log_trial_config(client, run.info.run_id, trial.config)
    return run.info.run_id


def logged_steps(client: MlflowClient, run_id: str, metrics: Mapping[str, Any]) -> set[int]:
    """The steps (epochs) a run holds already, by the history of one of ``metrics``' keys."""
    key = min(k for k in metrics if k != "epoch")
    return {m.step for m in client.get_metric_history(run_id, key)}


def record_infeasible(
    tracking: Tracking,
    parent_run_id: str,
    params: Mapping[str, Any],
    reason: str,
    cost: Mapping[str, float],
    tags: Mapping[str, str] = {},
) -> str:
    """A proposal the search never trained because it is over the space's limits: a run
    nested under the search run, tagged ``infeasible`` with the reason, holding its params and
    its cost (``params``, ``flops``) but no epoch metrics, ended KILLED. Returns its id."""
    client = MlflowClient(tracking.uri)
    run_tags = {**tags, TAG_PARENT: parent_run_id, TAG_INFEASIBLE: reason[:ERROR_CHARS]}
    run = client.create_run(tracking.experiment_id, run_name="infeasible", tags=run_tags)
    log_params(client, run.info.run_id, params)
    log_metrics(client, run.info.run_id, dict(cost), step=0)
    client.set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log flat params (e.g. :meth:`TrialConfig.flat`), 100 per request."""
    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def log_metrics(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float],
    step: int,
    timestamp_ms: int | None = None,
) -> None:
    """Log one epoch's metrics at ``step`` (the epoch)."""
    ts = timestamp_ms or int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


def log_trial_config(client: MlflowClient, run_id: str, trial: TrialConfig) -> None:
    """The trial's whole config as ``trial_config.yaml`` (``train --config`` reads it back)."""
    client.log_text(run_id, yaml.safe_dump(trial.to_dict(), sort_keys=False), "trial_config.yaml")


def log_learning_curve(client: MlflowClient, run_id: str) -> None:
    """Plot the run's loss and accuracy histories to ``learning_curve.png``."""
    keys = sorted(client.get_run(run_id).data.metrics)
    panels = {
        "loss": [k for k in keys if k.endswith("_loss")],
        "accuracy / F1": [k for k in keys if k.endswith(("_acc", "_f1"))],
    }
    fig = Figure(figsize=(9, 3.5), layout="constrained")  # no pyplot: safe off the main thread
    for ax, (label, names) in zip(fig.subplots(1, 2), panels.items(), strict=True):
        for name in names:
            history = sorted(
                (m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, name)
            )
            latest = {step: value for step, _, value in history}  # re-run epochs: the last value
            ax.plot(list(latest), list(latest.values()), marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if names:
            ax.legend(fontsize="small")
    client.log_figure(run_id, fig, "learning_curve.png")


def fail_run(client: MlflowClient, run_id: str, reason: str) -> None:
    """End a run FAILED with ``reason`` in its ``error`` tag."""
    client.set_tag(run_id, TAG_ERROR, reason[:ERROR_CHARS] or "failed")
    client.set_terminated(run_id, "FAILED")


# ---- reading runs back ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRun:
    """One trial's MLflow run, as ``best`` and the reports read it."""

    run_id: str
    name: str
    status: str
    trial_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str


def list_trial_runs(uri: str, experiment: str, parent_run_id: str | None = None) -> list[TrialRun]:
    """Trial runs of an experiment (of one search if ``parent_run_id``), oldest first."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(
            f"no MLflow experiment {experiment!r} at {uri}; run a search first or check "
            "--experiment and --mlflow-uri"
        )
    query = f"tags.`{TAG_PARENT}` = '{parent_run_id}'" if parent_run_id else ""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            query,
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs += [r for r in page if TAG_TRIAL_ID in r.data.tags]
        token = page.token
        if not token:
            break
    return [
        TrialRun(
            run_id=r.info.run_id,
            name=r.info.run_name,
            status=r.info.status,
            trial_id=r.data.tags[TAG_TRIAL_ID],
            params=dict(r.data.params),
            metrics=dict(r.data.metrics),
            tags=dict(r.data.tags),
            artifact_uri=r.info.artifact_uri,
        )
        for r in runs
    ]


def metric_histories(uri: str, run_ids: Sequence[str], key: str) -> dict[str, dict[int, float]]:
    """Per run, ``{step: value}`` of metric ``key`` (a re-run step keeps its latest value)."""
    client = MlflowClient(uri)
    out = {}
    for run_id in run_ids:
        history = sorted(
            (m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)
        )
        out[run_id] = {step: value for step, _, value in history}
    return out
