"""Distributed training with Ray Train V2: the only module that touches Ray Train's API.

:func:`make_trainer` turns a prepared directory and a :class:`TrialConfig` into a
``TorchTrainer`` whose workers run the one epoch body, :func:`~mrnet_ray.training.fit.fit`,
through a :class:`RayTrainSession`: the model in DDP (gloo on CPU, NCCL on GPU), every rank's
mergeable stats all-gathered so all report the same global metrics, a checkpoint every epoch
(rank 0 writes it). Each rank takes its seeded, fixed share of the splits the driver put in
Ray's object store (:func:`~mrnet_ray.training.feed.share`); splits too large for it are
streamed from Parquet with Ray Data instead.

Re-running a trainer with the same ``name`` and ``storage_path`` resumes: Ray Train's
controller reloads its checkpoint-manager snapshot from ``storage_path/name`` and hands the
latest checkpoint to ``ray.train.get_checkpoint()``, and the loop continues at the next epoch.
The command line (``python -m mrnet_ray.train``) runs it through :mod:`mrnet_ray.training.run`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mrnet_ray.config import ResourcesConfig, TrialConfig
from mrnet_ray.shards import Prepared, open_prepared
from mrnet_ray.training.checkpoint import load_checkpoint, save_checkpoint
from mrnet_ray.training.feed import (
    COLUMNS,
    FitOn,
    MemoryFeed,
    SharedSplits,
    StreamFeed,
    share,
)
from mrnet_ray.training.fit import RunPlan, fit, plan

SHUFFLE_BYTES = 256 * 2**20
"""When splits are streamed, each worker's local shuffle buffer holds its whole training shard
when that fits in this many bytes, and this much otherwise. Shards store tracks in id order
(GTZAN ids begin with the genre), so block-order randomisation alone would leave batches of
one class."""


class _WholeValidSplit(ray.train.DataConfig):
    """Split every dataset across workers, but ``valid`` without equalising the shares.

    Ray's equal split (which training needs: DDP ranks must take the same number of steps)
    drops up to ``workers - 1`` rows; evaluation runs no collectives, so uneven shares are
    fine and every validation segment counts.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # type: ignore[override]
        rest = {name: ds for name, ds in datasets.items() if name != "valid"}
        out = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        if "valid" in datasets:
            valid = datasets["valid"].copy(datasets["valid"])
            valid.context.execution_options = self.default_ingest_options()
            shares = valid.streaming_split(world_size, locality_hints=worker_node_ids)
            for rank, part in enumerate(shares):
                out[rank]["valid"] = part
        return out


class RayTrainSession:
    """A :class:`~mrnet_ray.training.fit.Session` of one Ray Train worker (one DDP rank)."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def restore(self) -> dict[str, Any] | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(directory)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def gather(self, obj: Any) -> list[Any]:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, model: torch.nn.Module) -> None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            ray.train.report(metrics, checkpoint=None)  # only rank 0's metrics are kept
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(state, tmp)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"epoch_{state['epoch']:04d}",
            )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train ``config['trial']`` on this rank's share; report every epoch."""
    # Ray Train logs "Reporting training result ..." for every report of every worker through a
    # logger named after its file, which its LoggingConfig does not reach; it propagates to the
    # root logger, which Ray Train sets to INFO on workers. The epoch lines already say it all.
    logging.getLogger().setLevel(logging.WARNING)
    trial = TrialConfig.from_dict(config["trial"])
    torch.set_num_threads(ResourcesConfig.from_dict(config["resources"]).threads)
    cfg, shared = trial.train, config["shared"]
    if shared is not None:
        feed: Any = MemoryFeed(*shared.get(config["fit_on"]), cfg.batch_size, cfg.seed)
    else:
        train, valid = (ray.train.get_dataset_shard(s) for s in ("train", "valid"))
        feed = StreamFeed(train, valid, cfg.batch_size, cfg.seed, config["shuffle_rows"])
    fit(trial, RunPlan(**config["plan"]), feed, RayTrainSession())


def ingest_datasets(
    prepared: Prepared, seed: int, fit_on: FitOn = "train"
) -> dict[str, ray.data.Dataset]:
    """The ``train`` and ``valid`` datasets as workers stream them from the shards."""
    datasets = {
        split: ds.select_columns(list(COLUMNS))
        for split, ds in prepared.ray_datasets(("train", "valid")).items()
    }
    if fit_on == "train+valid":
        datasets["train"] = datasets["train"].union(datasets["valid"])
    for ds in datasets.values():
        ds.context.enable_progress_bars = False  # per-epoch bars would bury the epoch lines
    # A new block order each epoch (reproducible from the seed): cheap shuffling upstream of
    # the per-worker split, instead of a full all-to-all random_shuffle.
    datasets["train"] = datasets["train"].randomize_block_order(
        seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    )
    return datasets


def fit_to_data(trial: TrialConfig, prepared: Prepared) -> TrialConfig:
    """``trial`` with the input bands and class count of the prepared data."""
    model = trial.model.replace(n_mels=prepared.feature.n_mels, n_classes=len(prepared.labels))
    return trial.replace(model=model)


def absolute_storage(path: str) -> str:
    """Ray wants absolute local paths; URIs (s3://, gs://, ...) pass through."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def make_trainer(
    prepared_dir: str,
    trial: TrialConfig,
    resources: ResourcesConfig,
    storage_path: str,
    name: str,
    callbacks: Sequence[Any] = (),
    *,
    max_failures: int = 1,
    shared: SharedSplits | None = None,
    fit_on: FitOn = "train",
) -> ray.train.torch.TorchTrainer:
    """A Ray Train V2 ``TorchTrainer`` for one trial on a prepared directory.

    ``n_mels`` and ``n_classes`` of the model are taken from the data; ``fit_on`` is what it
    trains on (``train+valid``: a final fit). The workers read
    ``shared`` splits (a search shares them once for all its trials), else the splits are
    shared here when they fit, else streamed. Checkpoints go to ``storage_path/name``; the two
    best by ``valid_track_acc`` and the latest are kept. ``max_failures`` restarts the worker
    group (from the latest checkpoint) after a worker dies; the run fails after that many.
    """
    prepared = open_prepared(prepared_dir)
    trial = fit_to_data(trial, prepared)
    run = plan(prepared, trial, resources.num_workers, fit_on)
    shared = shared or share(prepared)
    datasets = ingest_datasets(prepared, trial.train.seed, fit_on) if shared is None else None
    row_bytes = 4 * prepared.feature.n_mels * prepared.feature.segment_frames
    per_worker = prepared.segments("train") // resources.num_workers
    resources_per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        resources_per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "trial": trial.to_dict(),
            "resources": resources.to_dict(),
            "plan": run.to_dict(),
            "shared": shared,
            "fit_on": fit_on,
            "shuffle_rows": max(
                trial.train.batch_size, min(per_worker, SHUFFLE_BYTES // row_bytes)
            ),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker=resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=absolute_storage(storage_path),
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # Ray Train logs every report and checkpoint at INFO from every worker; the epoch
            # lines and MLflow already say it. Its own log files keep every level.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute="valid_track_acc",
                checkpoint_score_order="max",
            ),
        ),
        datasets=datasets,
        dataset_config=_WholeValidSplit(datasets_to_split="all"),
    )


def worker_error(error: ray.train.WorkerGroupError) -> tuple[int, BaseException]:
    """The lowest rank that failed and its own exception (a RayTaskError wraps it)."""
    rank, failure = min(error.worker_failures.items())
    return rank, getattr(failure, "cause", None) or failure
