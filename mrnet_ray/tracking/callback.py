"""The Tune callback that gives every trial exactly one MLflow run (see the package docs)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from mrnet_ray.config import TrialConfig
from mrnet_ray.tracking.runs import (
    fail_run,
    log_learning_curve,
    log_metrics,
    log_params,
    log_trial_config,
    logged_steps,
)
from mrnet_ray.tracking.store import (
    ERROR_CHARS,
    TAG_ERROR,
    TAG_PARENT,
    TAG_TRIAL_ID,
    Tracking,
    is_auth_error,
)

logger = logging.getLogger(__name__)

# Tune's bookkeeping in every result; the rest of a result's numbers are logged as metrics.
_TUNE_KEYS = {
    "training_iteration", "timestamp", "time_this_iter_s", "time_since_restore", "pid",
    "iterations_since_restore", "timesteps_total", "episodes_total", "timesteps_since_restore",
    "done", "epoch",
}  # fmt: skip


class MLflowTrialCallback(Callback):
    """One MLflow run per Tune trial, nested under the search run (see the module docstring).

    ``trial_config`` maps a trial's Tune config to its TrialConfig (e.g.
    ``functools.partial(space.to_trial, n_mels=..., n_classes=...)``); it must pickle.
    ``tags`` go on every trial run, ``config_tags`` copy Tune config values into tags.
    """

    def __init__(
        self,
        tracking: Tracking,
        parent_run_id: str,
        trial_config: Callable[[dict[str, Any]], TrialConfig],
        *,
        tags: Mapping[str, str] = {},
        config_tags: Mapping[str, str] = {},
        flush_timeout_s: float = 60.0,
        max_pending: int = 10_000,
        retry_s: float = 1.0,
    ) -> None:
        self.tracking, self.parent_run_id = tracking, parent_run_id
        self.trial_config, self.tags = trial_config, dict(tags)
        self.config_tags = dict(config_tags)  # Tune config key -> tag its value goes to
        self.flush_timeout_s, self.max_pending, self.retry_s = flush_timeout_s, max_pending, retry_s
        self._writer: _Writer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None}  # a thread does not pickle; setup starts one

    def setup(self, **info: Any) -> None:
        self._writer = _Writer(self.tracking.uri, self.max_pending, self.retry_s)
        self._runs: dict[str, str] = {}  # trial id -> run id; used by the writer thread only
        self._logged: dict[str, set[int]] = {}  # run id -> epochs it holds; writer thread only

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            config = self.trial_config(trial.config)
            params: dict[str, Any] = config.flat()
        except Exception as e:  # the trainable fails on the same config and says why
            config, params = None, {k: v for k, v in trial.config.items() if "/" not in k}
            logger.warning("MLflow: trial %s's config is no TrialConfig: %s", trial, e)

        tags = [RunTag(t, str(trial.config[k])) for k, t in self.config_tags.items()
                if k in trial.config]  # fmt: skip

        def start(client: MlflowClient, run_id: str) -> None:
            client.update_run(run_id, status="RUNNING")  # again, if a resumed trial's run ended
            log_params(client, run_id, params)
            if tags:
                client.log_batch(run_id, tags=tags)
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

        def log(client: MlflowClient, run_id: str) -> None:
            if run_id not in self._logged:  # a run of an earlier session: what it holds
                self._logged[run_id] = logged_steps(client, run_id, metrics)
            if step not in self._logged[run_id]:  # an epoch trained again is logged once
                log_metrics(client, run_id, metrics, step, ts)
                self._logged[run_id].add(step)

        self._submit(trial, f"log epoch {step}", log)

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
            incomplete = self._writer.incomplete()
            self._writer.close()
            if incomplete:
                listed = "; ".join(f"{t} ({', '.join(w)})" for t, w in sorted(incomplete.items()))
                logger.warning(
                    "MLflow at %s: the records of %d trial(s) are incomplete, because these "
                    "writes were refused or never made: %s. Tune's results in the run "
                    "directory keep every epoch",
                    self.tracking.uri,
                    len(incomplete),
                    listed,
                )

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
            self._writer.submit(what, write, trial=name)

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
                self._logged[run.info.run_id] = set()
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
    unreachable, skipped (with a warning) when MLflow rejects them. Credentials the store
    stops accepting (a rotated password: HTTP 401, or 403) are said once, not per write; every
    skipped or dropped write is kept against its trial (:meth:`incomplete`)."""

    def __init__(self, uri: str, max_pending: int, retry_s: float) -> None:
        self._uri, self._client = uri, MlflowClient(uri)
        self._ops: collections.deque[tuple[str, Callable[[MlflowClient], None], str]] = (
            collections.deque()
        )
        self._missed: dict[str, list[str]] = {}  # trial -> writes skipped or dropped
        self._refused = False  # the store refused our credentials at least once
        self._cond = threading.Condition()
        self._busy = self._closed = False
        self._max_pending, self._retry_s = max_pending, retry_s
        self.dropped = 0
        threading.Thread(target=self._run, name="mlflow-writer", daemon=True).start()

    def submit(self, what: str, op: Callable[[MlflowClient], None], trial: str = "") -> None:
        with self._cond:
            if len(self._ops) >= self._max_pending:
                oldest = 1 if self._busy else 0  # never the write in progress
                self._miss(self._ops[oldest][2], self._ops[oldest][0])
                del self._ops[oldest]
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "MLflow: more than %d writes pending; dropping the oldest",
                        self._max_pending,
                    )
            self._ops.append((what, op, trial))
            self._cond.notify_all()

    def incomplete(self) -> dict[str, list[str]]:
        """Trial -> the writes of its record that were skipped, dropped or are still queued."""
        with self._cond:
            missed = {t: list(w) for t, w in self._missed.items()}
            for what, _, trial in self._ops:
                missed.setdefault(trial, []).append(f"{what} (not made)")
            return missed

    def _miss(self, trial: str, what: str) -> None:
        self._missed.setdefault(trial, []).append(what)

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
                what, op, trial = self._ops[0]
                self._busy = True
            skipped = False
            try:
                op(self._client)
                done = True
            except Exception as e:
                done = skipped = is_auth_error(e) or not _transient(e)
                if is_auth_error(e) and not self._refused:
                    self._refused = True
                    logger.warning(
                        "MLflow at %s refuses this search's credentials (%s); the trials' "
                        "records in MLflow are incomplete from here on and are listed when the "
                        "search ends (check MLFLOW_TRACKING_USERNAME and "
                        "MLFLOW_TRACKING_PASSWORD)",
                        self._uri,
                        " ".join(str(e).split())[:200],
                    )
                elif skipped and not is_auth_error(e):
                    logger.warning("MLflow: could not %s for trial %s, skipped: %s", what, trial, e)
                elif not done and delay == self._retry_s:
                    logger.warning("MLflow unreachable (%s); buffering and retrying", e)
            with self._cond:
                self._busy = False
                if skipped:
                    self._miss(trial, what)
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
