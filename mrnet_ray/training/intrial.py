"""Training inside a Tune trial: the trial's own process runs the epoch loop.

A single-worker trial (one CPU, or one GPU per trial, as most searches should run) needs no
Ray Train controller, worker group, placement group or process group: the Tune function
trainable calls :func:`train_in_trial`, which runs :func:`~mrnet_ray.training.fit.fit` with a
:class:`TuneSession`. Every epoch is reported to Tune with a checkpoint (``tune.report``), so
ASHA, the MLflow callback and ``--resume`` see what they see of a Ray Train trial; a retried
or resumed trial continues from Tune's latest checkpoint (``tune.get_checkpoint``). The
batches come from the search's shared splits, or from Parquet when they are too large.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import torch
from ray import tune

from mrnet_ray.config import ResourcesConfig, TrialConfig
from mrnet_ray.training.checkpoint import load_checkpoint, save_checkpoint
from mrnet_ray.training.feed import (
    COLUMNS,
    Feed,
    FitOn,
    MemoryFeed,
    SharedSplits,
    StreamFeed,
)
from mrnet_ray.training.fit import OneRank, RunPlan, fit

SHUFFLE_ROWS = 4096
"""Rows in the shuffle buffer when a trial streams its data from Parquet."""


class TuneSession(OneRank):
    """A :class:`~mrnet_ray.training.fit.Session` that reports to the Tune trial it runs in."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def restore(self) -> dict[str, Any] | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(directory)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        # tune.report copies the directory into the trial's storage before it returns.
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(state or {}, tmp)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_feed(
    data: str, trial: TrialConfig, shared: SharedSplits | None, fit_on: FitOn = "train"
) -> Feed:
    """The trial's batches: the shared splits, else a Ray Data stream of the Parquet shards."""
    cfg = trial.train
    if shared is not None:
        train, valid = shared.get(fit_on)
        return MemoryFeed(train, valid, cfg.batch_size, cfg.seed)
    from mrnet_ray.shards import open_prepared

    datasets = open_prepared(data).ray_datasets(("train", "valid"))
    train, valid = (datasets[s].select_columns(list(COLUMNS)) for s in ("train", "valid"))
    if fit_on == "train+valid":
        train = train.union(valid)
    for ds in (train, valid):
        ds.context.enable_progress_bars = False  # per-epoch bars would bury the trial table
    return StreamFeed(train.iterator(), valid.iterator(), cfg.batch_size, cfg.seed, SHUFFLE_ROWS)


def train_in_trial(
    data: str,
    trial: TrialConfig,
    run: RunPlan,
    resources: ResourcesConfig,
    shared: SharedSplits | None,
    fit_on: FitOn = "train",
) -> None:
    """Train ``trial`` in this Tune trial's process, on its GPU if it holds one."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    torch.set_num_threads(resources.threads)
    cuda = resources.use_gpu and torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    fit(trial, run, trial_feed(data, trial, shared, fit_on), TuneSession(device))
