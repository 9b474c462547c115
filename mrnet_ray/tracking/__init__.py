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
  still has exactly one run per trial, and logs each epoch once: an epoch a resumed trial
  trains again (from a checkpoint older than its last report) keeps the values first
  written, which a reproducible trial repeats exactly;
- records why a trial failed (``error`` tag; ``failures`` counts retried attempts);
- writes from one background thread, in order. While the store is unreachable, writes wait
  in a bounded queue (oldest dropped beyond ``max_pending``) and are retried with backoff;
  at the end of the search it waits up to ``flush_timeout_s`` and warns about what it could
  not write. Metrics keep the time they were reported. Tracking never stops a search.

Ray pickles the callback into the experiment (``tuner.pkl``) before it starts and restores
that copy on ``--resume``, so it holds only plain settings until Tune calls ``setup``.

The package splits by concern: ``store`` (where runs go), ``runs`` (the search's runs, read
back too), ``callback`` (the Tune callback), ``registry`` (exported models), ``server`` (the
MLflow UI on a run directory). Import from the package.
"""

from __future__ import annotations

from mrnet_ray.tracking.callback import (
    MLflowTrialCallback,
)
from mrnet_ray.tracking.registry import (
    BUNDLE_ARTIFACTS,
    TAG_SOURCE_TRIAL,
    TAG_TEST_ACC,
    ModelVersion,
    alias_version,
    download_bundle,
    log_export,
    register_version,
    resolve_model_uri,
    set_alias,
)
from mrnet_ray.tracking.runs import (
    TrialRun,
    TuneRecord,
    end_orphaned_trial_runs,
    end_search_run,
    fail_run,
    list_trial_runs,
    log_learning_curve,
    log_metrics,
    log_params,
    log_search_details,
    log_trial_config,
    metric_histories,
    reconcile_trial_runs,
    record_infeasible,
    start_search_run,
    store_failure,
)
from mrnet_ray.tracking.store import (
    CREDENTIALS,
    ERROR_CHARS,
    TAG_CODE_VERSION,
    TAG_CONFIRMS,
    TAG_DATA_HASH,
    TAG_ERROR,
    TAG_INFEASIBLE,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SEARCH_KEY,
    TAG_TRIAL_ID,
    Tracking,
    check_reachable,
    code_version,
    ensure_experiment,
    is_remote,
    missing_local_store,
    resolve_tracking_uri,
    run_tags,
    setup_tracking,
)

__all__ = [
    "BUNDLE_ARTIFACTS",
    "CREDENTIALS",
    "ERROR_CHARS",
    "TAG_CODE_VERSION",
    "TAG_CONFIRMS",
    "TAG_DATA_HASH",
    "TAG_ERROR",
    "TAG_INFEASIBLE",
    "TAG_PARENT",
    "TAG_ROLE",
    "TAG_SEARCH_KEY",
    "TAG_SOURCE_TRIAL",
    "TAG_TEST_ACC",
    "TAG_TRIAL_ID",
    "MLflowTrialCallback",
    "ModelVersion",
    "Tracking",
    "TrialRun",
    "TuneRecord",
    "alias_version",
    "check_reachable",
    "code_version",
    "download_bundle",
    "end_orphaned_trial_runs",
    "end_search_run",
    "ensure_experiment",
    "fail_run",
    "is_remote",
    "list_trial_runs",
    "log_export",
    "log_learning_curve",
    "log_metrics",
    "log_params",
    "log_search_details",
    "log_trial_config",
    "metric_histories",
    "missing_local_store",
    "reconcile_trial_runs",
    "record_infeasible",
    "register_version",
    "resolve_model_uri",
    "resolve_tracking_uri",
    "run_tags",
    "set_alias",
    "setup_tracking",
    "start_search_run",
    "store_failure",
]
