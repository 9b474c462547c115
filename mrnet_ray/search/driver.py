"""The search, start to end: plan it from the flags, check everything, run the Tuner, report.

:func:`plan_search` turns what the user asked for into checked
:class:`~mrnet_ray.search.settings.SearchSettings` (data, space, run directory, storage,
tracking); :func:`~mrnet_ray.search.resume.resumed_search` reads them back from
``search.json``; :func:`run` takes the search's locks, checks the tracking server and the
cluster, opens the MLflow search run and runs (or restores) the Tuner;
:func:`~mrnet_ray.search.closing.end_search` writes the record, the reports and the summary.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from mrnet_ray import tracking
from mrnet_ray.errors import UserError
from mrnet_ray.search import lock, resources
from mrnet_ray.search import outcomes as outcomes_mod
from mrnet_ray.search import trial as trial_mod
from mrnet_ray.search import tuner as tuner_mod
from mrnet_ray.search import warm as warm_mod
from mrnet_ray.search.closing import ORPHAN_REASON as ORPHAN_REASON
from mrnet_ray.search.closing import end_failed, end_search, reconcile
from mrnet_ray.search.limits import CostCheck, record_infeasible
from mrnet_ray.search.record import read_record, record_path, write_record
from mrnet_ray.search.resume import restore_run_dir
from mrnet_ray.search.settings import (
    OBJECTIVES,
    STORAGE_ENV,
    SearchSettings,
    default_name,
    storage_root,
)
from mrnet_ray.search.space import load_space
from mrnet_ray.search.spaces import resolve_space
from mrnet_ray.shards import Prepared, open_prepared
from mrnet_ray.shards.baseline import ensure_baseline
from mrnet_ray.training.feed import share

TAG_SPACE = "mrnet_ray.space"


def plan_search(
    data: str,
    space: str,
    *,
    name: str | None = None,
    run_dir: str | None = None,
    storage: str | None = None,
    mlflow_uri: str | None = None,
    scheduler: str | None = None,
    **fields: Any,
) -> tuple[SearchSettings, Prepared]:
    """Settings of a new search, checking the data and the space file first.

    ``fields`` are :class:`SearchSettings` fields (its defaults fill the rest); the run
    directory defaults to ``runs/<name>``, the name to :func:`default_name`, the Ray results to
    ``$MRNET_RAY_STORAGE`` else ``RUN_DIR/ray``, the scheduler to ASHA (FIFO for two metrics).
    """
    prepared = open_prepared(data)
    space_path = resolve_space(space)
    load_space(space_path)
    dataset = prepared.manifest.get("dataset", "data")
    name = name or default_name(space_path, dataset, prepared.content_hash)
    run_path = Path(run_dir or Path("runs") / name).expanduser().resolve()
    storage = storage_root(storage or os.environ.get(STORAGE_ENV) or str(run_path / "ray"))
    objective = fields.get("objective", "acc")
    multi = len(OBJECTIVES.get(objective, ())) > 1
    settings = SearchSettings(
        name=name,
        data=prepared.path,
        space=str(space_path),
        run_dir=str(run_path),
        storage=storage,
        tracking_uri=tracking.resolve_tracking_uri(mlflow_uri, run_path),
        scheduler=scheduler or ("fifo" if multi else "asha"),  # type: ignore[arg-type]
        **fields,
    )
    return settings, prepared


def _check_can_start(settings: SearchSettings, resume: bool) -> None:
    """The tracking server answers, and the run directory holds this search (``--resume``)
    or none yet."""
    tracking.check_reachable(settings.tracking_uri)
    experiment_exists = tune.Tuner.can_restore(settings.experiment_path)
    if resume and not experiment_exists:
        raise UserError(
            f"nothing to resume: no Tune experiment at {settings.experiment_path} (the search "
            "stopped before its first trial); start it again without --resume"
        )
    if not resume and record_path(settings.run_dir).is_file():  # the run dir's own search,
        earlier = read_record(settings.run_dir).get("experiment_path", "")  # wherever it went
        experiment_exists |= bool(earlier) and tune.Tuner.can_restore(earlier)
    if not resume and experiment_exists:
        raise UserError(
            f"{settings.run_dir} already holds a search; continue it with --resume, "
            "or pick another --run-dir (or --name)"
        )


def _fit_to_cluster(settings: SearchSettings, in_memory: bool) -> SearchSettings:
    """Check one trial fits the cluster; set ``max_concurrent`` to what fits when not given."""
    capacity = resources.cluster_capacity()
    needs = resources.trial_needs(settings.resources, settings.trial_cpus, settings.executor)
    resources.check_feasible(needs, capacity)
    if settings.max_concurrent:
        return settings
    reserve = 0.0 if in_memory else resources.DATA_CPU_RESERVE
    fits = resources.default_concurrency(needs, capacity, reserve)
    return dataclasses.replace(settings, max_concurrent=fits)


def search_params(settings: SearchSettings, in_memory: bool) -> dict[str, Any]:
    """The search run's MLflow params: its settings, how trials ran and where data came from."""
    skip = ("run_dir", "tracking_uri", "experiment", "resources")
    params = {k: v for k, v in settings.to_dict().items() if k not in skip}
    params |= {f"resources.{k}": v for k, v in settings.resources.to_dict().items()}
    return params | {"executor": settings.executor, "data_in_memory": in_memory}


def run(
    settings: SearchSettings,
    prepared: Prepared,
    *,
    resume: bool,
    callbacks: Sequence[tune.Callback] = (),
) -> int:
    """Check everything, run (or continue) the search, report; returns the exit status.

    The search's locks are held throughout (:mod:`~mrnet_ray.search.lock`): a second ``tune``
    on the same run directory or Tune experiment stops in one line before it touches either.
    ``callbacks`` join the MLflow callback of a new search (a restored one brings back the
    callbacks it started with)."""
    with lock.hold(settings) as notes:
        for note in notes:
            print(note)
        return _run_owned(settings, prepared, resume=resume, callbacks=callbacks)


def _run_owned(
    settings: SearchSettings,
    prepared: Prepared,
    *,
    resume: bool,
    callbacks: Sequence[tune.Callback],
) -> int:
    """:func:`run`, once this process owns the search."""
    space = load_space(settings.space)
    if resume:
        for line in restore_run_dir(settings):
            print(line)
    _check_can_start(settings, resume)
    baseline = ensure_baseline(prepared)  # fitted once per prepared directory, then kept
    resources.init_ray()
    resources.check_shared_storage(settings.storage)
    shared = share(prepared)  # read once, here, for every trial of the search
    settings = _fit_to_cluster(settings, shared is not None)
    warm = None
    if not resume:  # the study's journal is written once the search is known to fit
        tuner_mod.drop_stale_study(settings)
        warm = warm_mod.prepare(
            settings, space, prepared.content_hash, tuner_mod.new_study(settings)
        )

    run_dir = Path(settings.run_dir)
    where = tracking.setup_tracking(settings.tracking_uri, run_dir, settings.experiment)
    tags = tracking.run_tags(prepared.content_hash) | {TAG_SPACE: Path(settings.space).stem}
    parent = tracking.start_search_run(
        where, settings.name, key=settings.experiment_path, tags=tags
    )
    write_record(
        settings, status="RUNNING", experiment_id=where.experiment_id, parent_run_id=parent,
        data_hash=prepared.content_hash, space_hash=warm_mod.space_hash(settings.space),
    )  # fmt: skip
    params = search_params(settings, shared is not None)
    if warm is not None and warm.sources:
        params["warm_start"] = "; ".join(warm.sources)
        for line in warm.sources:
            print(f"warm start: {line}")
    scores = {f"baseline_{k}": baseline[k] for k in ("valid_track_acc", "test_track_acc")}
    tracking.log_search_details(where, parent, params, [Path(settings.space)], scores)
    print(
        f"linear baseline ({baseline['model']}): valid track acc "
        f"{baseline['valid_track_acc']:.4f}; the trials are measured against it"
    )

    n_mels, n_classes = prepared.feature.n_mels, len(prepared.labels)
    to_trial = functools.partial(trial_mod.trial_config, space, n_mels, n_classes)
    if resume:  # what the last session's MLflow writes lost, before trials write again
        before = outcomes_mod.collect(settings.experiment_path, to_trial)
        mended = reconcile(where, parent, before, to_trial, tags)
        if mended:
            print(f"MLflow runs of {len(mended)} trial(s) completed from Tune's results")
    trainable = trial_mod.trainable(settings, space, n_mels, n_classes, shared)
    # The new output engine ignores progress_reporter and picks its own first four metrics.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    searcher = None
    if resume:
        tuner = tuner_mod.restore_tuner(settings, trainable)
    else:
        callback = tracking.MLflowTrialCallback(where, parent, to_trial, tags=tags)
        check = CostCheck(to_trial, prepared.feature.segment_frames, space.limits)
        record = functools.partial(record_infeasible, where, parent, to_trial, tags)
        first = warm.first if warm is not None else []
        searcher = tuner_mod.make_searcher(settings, space, first=first, check=check, record=record)
        tuner = tuner_mod.make_tuner(settings, space, trainable, [callback, *callbacks], searcher)
    started = time.monotonic()
    try:
        tuner.fit()
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        end_failed(settings, where, parent, status, f"{type(e).__name__}: {e}")
        raise
    return end_search(
        settings, where, parent, to_trial=to_trial, tags=tags, searcher=searcher,
        wall_s=time.monotonic() - started, data_in_memory=shared is not None,
    )  # fmt: skip
