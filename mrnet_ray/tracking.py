"""Every MLflow call of the project: where runs go, the search's runs, and the Tune callback.

A search in MLflow::

    experiment  (a local store keeps artifacts in <run_dir>/mlartifacts, not ./mlruns)
    └── search run  (start_search_run: data hash and code version tags)
        └── one run per Tune trial  (mlflow.parentRunId; params = the flattened TrialConfig;
            metrics per epoch with step = epoch; trial_config.yaml, learning_curve.png;
            FINISHED, or FAILED with the reason in the ``error`` tag)

Trial runs come from :class:`MLflowTrialCallback`, not Ray's ``MLflowLoggerCallback``
(``ray/air/integrations/mlflow.py``, Ray 2.60). Ray's keeps trial -> run in memory only, so a
trial restarted by ``Tuner.restore`` gets a second run; it ends an errored trial FAILED
without the reason; it logs the raw Tune config (the drawn values only); and it writes on
the Tune driver's loop, where a tracking server that went away blocks the whole search in
MLflow's own HTTP retries. This callback:

- finds a trial's run by its ``trial_id`` tag under the search run, so a resumed search
  still has exactly one run per trial (re-run epochs add values at the same step; MLflow
  shows the latest);
- records why a trial failed (``error`` tag; ``failures`` counts retried attempts);
- writes from one background thread, in order. While the store is unreachable, writes wait
  in a bounded queue (oldest dropped beyond ``max_pending``) and are retried with backoff;
  at the end of the search it waits up to ``flush_timeout_s`` and warns about what it could
  not write. Metrics keep the time they were reported. Tracking never stops a search.

Ray pickles the callback into the experiment (``tuner.pkl``) before it starts and restores
that copy on ``--resume``, so it holds only plain settings until Tune calls ``setup``.

>>> resolve_tracking_uri(None, Path("/tmp/run"), env={})
'sqlite:////tmp/run/mlflow.db'
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

import mrnet_ray
from mrnet_ray.config import TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search_space import SearchSpace

logger = logging.getLogger(__name__)

TAG_TRIAL_ID = "trial_id"
TAG_ERROR = "error"
TAG_PARENT = "mlflow.parentRunId"
TAG_SEARCH_KEY = "mrnet_ray.search_key"
TAG_DATA_HASH = "mrnet_ray.data_hash"
TAG_CODE_VERSION = "mrnet_ray.code_version"
ERROR_CHARS = 500
# Tune's bookkeeping in every result; the rest of a result's numbers are logged as metrics.
_TUNE_KEYS = {
    "training_iteration", "timestamp", "time_this_iter_s", "time_since_restore", "pid",
    "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore",
    "done", "epoch",
}  # fmt: skip


# ---- where runs go --------------------------------------------------------------------------


def resolve_tracking_uri(
    cli_uri: str | None, run_dir: Path, env: Mapping[str, str] = os.environ
) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else a sqlite store in ``run_dir``."""
    return cli_uri or env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.absolute()}/mlflow.db"


def is_remote(uri: str) -> bool:
    """Stores that keep artifacts themselves (a tracking server, Databricks); for the others
    (sqlite, a database, a path) artifacts go to the run directory, not ./mlruns."""
    return uri.startswith(("http://", "https://", "databricks"))


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, before any trial starts, if an http(s) tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return
    except urllib.error.HTTPError as e:
        if e.code < 500:  # it answered: up (maybe behind auth or a proxy)
            return
        reason = f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        reason = str(getattr(e, "reason", None) or e)
    raise UserError(
        f"MLflow tracking server at {uri} is unreachable: {reason}; "
        "start it with `make ui` or check --mlflow-uri"
    )


def ensure_experiment(uri: str, name: str, artifact_location: Path | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_location.absolute().as_uri() if artifact_location else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as e:  # created meanwhile by another process
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name!r} at {uri} is deleted; restore it in the MLflow UI "
            "or pick another experiment name"
        )
    return experiment.experiment_id


@dataclass(frozen=True)
class Tracking:
    """Where one command logs: a checked tracking URI and an experiment id."""

    uri: str
    experiment_id: str


def setup_tracking(cli_uri: str | None, run_dir: Path, experiment: str) -> Tracking:
    """Resolve the URI, check the server is up and ensure the experiment, before any trial."""
    uri = resolve_tracking_uri(cli_uri, run_dir)
    check_reachable(uri)
    if uri.startswith("sqlite:"):
        run_dir.mkdir(parents=True, exist_ok=True)
    artifacts = None if is_remote(uri) else run_dir / "mlartifacts"
    return Tracking(uri, ensure_experiment(uri, experiment, artifacts))


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout, else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(mrnet_ray.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip()
    return f"mrnet_ray {mrnet_ray.__version__}"


def run_tags(data_hash: str) -> dict[str, str]:
    """Provenance tags for every run: the prepared data's content hash and the code version."""
    return {TAG_DATA_HASH: data_hash, TAG_CODE_VERSION: code_version()}


# ---- runs -----------------------------------------------------------------------------------


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
    tracking: Tracking, run_id: str, params: Mapping[str, Any] = {}, files: Sequence[Path] = ()
) -> None:
    """Log the search run's settings as params (the same values again on ``--resume``) and
    files (the space, plots, tables) as artifacts at the run's root."""
    client = MlflowClient(tracking.uri)
    log_params(client, run_id, params)
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
    orphans = [r.info.run_id for r in runs if r.data.tags.get(TAG_TRIAL_ID) not in trial_ids]
    for run_id in orphans:
        client.set_tag(run_id, TAG_ERROR, reason[:ERROR_CHARS])
        client.set_terminated(run_id, "KILLED")
    return len(orphans)


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log flat params (e.g. :meth:`SearchSpace.flat_params`), 100 per request."""
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


# ---- the Tune callback ----------------------------------------------------------------------


class MLflowTrialCallback(Callback):
    """One MLflow run per Tune trial, nested under the search run (see the module docstring).

    ``trial_config`` maps a trial's Tune config to its TrialConfig (e.g.
    ``functools.partial(space.to_trial, n_mels=..., n_classes=...)``); it must pickle.
    """

    def __init__(
        self,
        tracking: Tracking,
        parent_run_id: str,
        trial_config: Callable[[dict[str, Any]], TrialConfig],
        *,
        tags: Mapping[str, str] = {},
        flush_timeout_s: float = 60.0,
        max_pending: int = 10_000,
        retry_s: float = 1.0,
    ) -> None:
        self.tracking, self.parent_run_id = tracking, parent_run_id
        self.trial_config, self.tags = trial_config, dict(tags)
        self.flush_timeout_s, self.max_pending, self.retry_s = flush_timeout_s, max_pending, retry_s
        self._writer: _Writer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None}  # a thread does not pickle; setup starts one

    def setup(self, **info: Any) -> None:
        self._writer = _Writer(self.tracking.uri, self.max_pending, self.retry_s)
        self._runs: dict[str, str] = {}  # trial id -> run id; used by the writer thread only

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            config = self.trial_config(trial.config)
            params: dict[str, Any] = SearchSpace.flat_params(config)
        except Exception as e:  # the trainable fails on the same config and says why
            config, params = None, {k: v for k, v in trial.config.items() if "/" not in k}
            logger.warning("MLflow: trial %s's config is no TrialConfig: %s", trial, e)

        def start(client: MlflowClient, run_id: str) -> None:
            client.update_run(run_id, status="RUNNING")  # again, if a resumed trial's run ended
            log_params(client, run_id, params)
            if config is not None:
                log_trial_config(client, run_id, config)

        self._submit(trial, "start its run", start, create=True)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        metrics = {
            k: v
            for k, v in result.items()
            if k not in _TUNE_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
        }
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(time.time() * 1000)  # when it was reported, even if written later
        self._submit(
            trial, f"log epoch {step}", lambda c, run: log_metrics(c, run, metrics, step, ts)
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        def finish(client: MlflowClient, run_id: str) -> None:
            log_learning_curve(client, run_id)
            client.set_terminated(run_id, "FINISHED")

        self._submit(trial, "finish its run", finish)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tags = [
            RunTag(TAG_ERROR, _error_reason(trial)),
            RunTag("failures", str(trial.num_failures)),
        ]
        self._submit(trial, "record a failure", lambda c, run: c.log_batch(run, tags=tags))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = _error_reason(trial)
        self._submit(trial, "fail its run", lambda c, run: fail_run(c, run, reason))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()

    def flush(self) -> int:
        """Wait up to ``flush_timeout_s`` for pending writes; returns how many are left."""
        if self._writer is None:
            return 0
        left = self._writer.flush(self.flush_timeout_s)
        if left:
            logger.warning(
                "MLflow at %s: %d writes could not be made; the Tune results in the run "
                "directory keep everything",
                self.tracking.uri,
                left,
            )
        return left

    def _submit(
        self,
        trial: Any,
        what: str,
        op: Callable[[MlflowClient, str], None],
        create: bool = False,
    ) -> None:
        """Queue ``op(client, run_id)`` on the trial's run (found or created when it runs)."""
        trial_id, name = trial.trial_id, str(trial)

        def write(client: MlflowClient) -> None:
            run_id = self._run_id(client, trial_id, name if create else None)
            if run_id is None:
                logger.warning("MLflow: trial %s has no run, so cannot %s", name, what)
            else:
                op(client, run_id)

        if self._writer is not None:
            self._writer.submit(f"{what} for trial {name}", write)

    def _run_id(self, client: MlflowClient, trial_id: str, create_as: str | None) -> str | None:
        """The trial's run: cached, else found by tags (a resumed search), else created if
        ``create_as`` names it. Called on the writer thread only."""
        if trial_id not in self._runs:
            query = f"tags.`{TAG_PARENT}` = '{self.parent_run_id}'"
            query += f" and tags.{TAG_TRIAL_ID} = '{trial_id}'"
            found = client.search_runs([self.tracking.experiment_id], query, max_results=1)
            if found:
                self._runs[trial_id] = found[0].info.run_id
            elif create_as is not None:
                tags = {**self.tags, TAG_PARENT: self.parent_run_id, TAG_TRIAL_ID: trial_id}
                run = client.create_run(self.tracking.experiment_id, run_name=create_as, tags=tags)
                self._runs[trial_id] = run.info.run_id
        return self._runs.get(trial_id)


def _error_reason(trial: Any) -> str:
    """The last line of the trial's latest error (``ExceptionType: message``), from Tune's
    error file on the driver."""
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines:
            return lines[-1][:ERROR_CHARS]
    return "the trial failed (Tune kept no error file)"


class _Writer:
    """MLflow writes, in order, on one daemon thread; retried with backoff while the store is
    unreachable, skipped (with a warning) when MLflow rejects them."""

    def __init__(self, uri: str, max_pending: int, retry_s: float) -> None:
        self._client = MlflowClient(uri)
        self._ops: collections.deque[tuple[str, Callable[[MlflowClient], None]]] = (
            collections.deque()
        )
        self._cond = threading.Condition()
        self._busy = self._closed = False
        self._max_pending, self._retry_s = max_pending, retry_s
        self.dropped = 0
        threading.Thread(target=self._run, name="mlflow-writer", daemon=True).start()

    def submit(self, what: str, op: Callable[[MlflowClient], None]) -> None:
        with self._cond:
            if len(self._ops) >= self._max_pending:
                del self._ops[1 if self._busy else 0]  # never the write in progress
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "MLflow: more than %d writes pending; dropping the oldest",
                        self._max_pending,
                    )
            self._ops.append((what, op))
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._ops or self._busy) and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return len(self._ops)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._ops.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        delay = self._retry_s
        while True:
            with self._cond:
                while not self._ops and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                what, op = self._ops[0]
                self._busy = True
            try:
                op(self._client)
                done = True
            except Exception as e:
                done = not _transient(e)
                if done:
                    logger.warning("MLflow: could not %s, skipped: %s", what, e)
                elif delay == self._retry_s:
                    logger.warning("MLflow unreachable (%s); buffering and retrying", e)
            with self._cond:
                self._busy = False
                if done:
                    self._ops.popleft()
                    delay = self._retry_s
                else:
                    self._cond.wait(delay)  # close() wakes it early
                    delay = min(2 * delay, 30.0)
                self._cond.notify_all()


def _transient(e: Exception) -> bool:
    """Errors worth retrying: the store is down or busy, not a rejected write."""
    if isinstance(e, MlflowException):
        return e.error_code in (
            "INTERNAL_ERROR",
            "TEMPORARILY_UNAVAILABLE",
            "REQUEST_LIMIT_EXCEEDED",
        )
    return isinstance(e, OSError)


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


# ---- model registry (``best --export`` writes, ``predict models:/...`` reads) ---------------

TAG_TEST_ACC = "test_track_acc"
"""Model-version tag: track accuracy on the prepared data's test split."""
TAG_SOURCE_TRIAL = "mrnet_ray.source_trial"
"""Export runs name their trial here, not in ``trial_id``, which marks trial runs."""
BUNDLE_ARTIFACTS = "bundle"
"""Artifact folder of an export run holding the exported bundle's files."""


def missing_local_store(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store that does not exist (MLflow would create an empty
    store there rather than fail), else None."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            return db
    return None


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


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version, as ``best`` compares and ``predict`` downloads it."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]


def log_export(
    uri: str,
    experiment_id: str,
    parent_run_id: str | None,
    run_name: str,
    model: Any,
    input_example: Any,
    bundle_dir: Path,
    tags: Mapping[str, str],
    metrics: Mapping[str, float] = {},
) -> tuple[str, str]:
    """A new run (nested under ``parent_run_id``) holding ``metrics``, the model in MLflow's
    format and the bundle's files under :data:`BUNDLE_ARTIFACTS`; returns ``(run_id, model_uri)``.

    The signature leaves batch and frames open: ``(-1, n_mels, -1)`` -> ``(-1, n_classes)``.
    MLflow 3 saves the model with ``torch.export`` (no pickle); the input example must have
    more than one row and frame, or export fixes that dimension.
    """
    import importlib.metadata

    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.no_grad():
        n_classes = model(torch.from_numpy(input_example)).shape[1]
    n_mels = input_example.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_mels, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes))]),
    )
    client = MlflowClient(uri)
    run_tags = {**tags, **({TAG_PARENT: parent_run_id} if parent_run_id else {})}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=run_tags).info.run_id
    with _global_uri(uri), mlflow.start_run(run_id=run_id):  # log_model is fluent-only
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            # Pinned here: inferring requirements reloads the model in a subprocess.
            pip_requirements=[f"torch=={importlib.metadata.version('torch')}"],
        )
        client.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACTS)
        log_metrics(client, run_id, metrics, step=0)
    return run_id, info.model_uri


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for a while: fluent calls use it, and so
    does the sqlite registry when it resolves a ``models:/m-...`` source (MLflow 3.17)."""
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI; restoring through it would leave the
    # resolved default (sqlite:///mlflow.db in the cwd) in the environment for later searches.
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(previous_env)


def register_version(
    uri: str, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]
) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``name`` (created if missing)."""
    client = MlflowClient(uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with _global_uri(uri):
        mv = client.create_model_version(
            name, model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
        )
    return ModelVersion(name, str(mv.version), run_id, dict(tags))


def alias_version(uri: str, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points to, or None if the model or the alias does not exist."""
    client = MlflowClient(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ModelVersion(name, str(mv.version), mv.run_id, dict(mv.tags))


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    MlflowClient(uri).set_registered_model_alias(name, alias, version)


def resolve_model_uri(uri: str, model_uri: str) -> ModelVersion:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the registered version."""
    ref = model_uri.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    if not at:
        name, _, alias = ref.rpartition("/")
    if not name or not alias:
        raise UserError(
            f"{model_uri}: not a registered-model URI; use models:/<name>@<alias> "
            "or models:/<name>/<version>"
        )
    client = MlflowClient(uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if at
            else client.get_model_version(name, alias)
        )
    except MlflowException as e:
        raise UserError(
            f"{model_uri}: not found in the registry at {uri} ({e.message.splitlines()[0]}); "
            "check the name and alias, or --mlflow-uri"
        ) from None
    return ModelVersion(name, str(mv.version), mv.run_id, dict(mv.tags))


def download_bundle(uri: str, version: ModelVersion, dst: Path) -> Path:
    """The bundle files logged with ``version`` (by :func:`log_export`), downloaded to ``dst``."""
    import mlflow.artifacts

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one line per error on stderr
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=BUNDLE_ARTIFACTS, dst_path=str(dst),
            tracking_uri=uri,
        )  # fmt: skip
    except (MlflowException, OSError) as e:
        raise UserError(
            f"models:/{version.name}/{version.version}: its run {version.run_id} holds no "
            f"readable {BUNDLE_ARTIFACTS}/ artifacts ({e}); re-export with "
            "python -m mrnet_ray.best --export"
        ) from None
    return Path(path)
