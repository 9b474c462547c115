"""Distributed training with Ray Train V2: the only module that touches Ray Train's API.

:func:`make_trainer` turns a prepared directory and a :class:`TrialConfig` into a
``TorchTrainer``; :func:`train_loop_per_worker` adapts Ray to the plain functions of
:mod:`~mrnet_ray.training.loop`: it reads this worker's shards, wraps the model in DDP (gloo on
CPU, NCCL on GPU), evaluates its share of the validation split, all-gathers the mergeable stats
so every worker reports the same global metrics, and reports a checkpoint every epoch (rank 0
writes it). Re-running a trainer with the same ``name`` and ``storage_path`` resumes: Ray
Train's controller reloads its checkpoint-manager snapshot from ``storage_path/name`` and hands
the latest checkpoint to ``ray.train.get_checkpoint()``, and the loop continues at the next
epoch.

The command line (``python -m mrnet_ray.train``) runs it through :mod:`mrnet_ray.training.run`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mrnet_ray.config import MRNetConfig, ResourcesConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.nn import build_model, model_cost
from mrnet_ray.shards import Prepared, open_prepared
from mrnet_ray.training.checkpoint import load_checkpoint, save_checkpoint
from mrnet_ray.training.loop import evaluate, make_optimizer, make_scheduler, train_epoch

COLUMNS = ("mel", "label", "track_index")
DTYPES = {"mel": torch.float32, "label": torch.int64, "track_index": torch.int64}
CACHE_FRACTION = 0.25
"""Splits that together fit in this share of the cluster's object store are read once and
kept there (``Dataset.materialize``). Otherwise every epoch re-reads the Parquet shards, which
costs task launches and reads per epoch (measured: ~3 s per epoch for 84 MB on 2 cores, against
~0.2 s once cached)."""
SHUFFLE_BYTES = 256 * 2**20
"""Each worker's local shuffle buffer holds its whole training shard when that fits in this
many bytes, and this much otherwise. Shards store tracks in id order (GTZAN ids begin with
the genre), so block-order randomisation alone would leave batches of one class."""


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
            for rank, share in enumerate(shares):
                out[rank]["valid"] = share
        return out


def _gather(obj: Any) -> list[Any]:
    """Every worker's ``obj``, in rank order (a collective: all ranks must call it)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's BatchNorm statistics to all ranks so evaluation matches the checkpoint."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _restore(trial: TrialConfig) -> dict[str, Any] | None:
    """The state of the run's latest checkpoint, if Ray Train resumed this run from one."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        state = load_checkpoint(directory)
    check_same_model(state, trial, checkpoint.path)
    return state


def check_same_model(state: dict[str, Any], trial: TrialConfig, where: str) -> None:
    """A run resumes only the model it started with."""
    stored = MRNetConfig.from_dict(state["trial"]["model"])
    changed = [
        f for f in MRNetConfig.field_names() if getattr(stored, f) != getattr(trial.model, f)
    ]
    if changed:
        raise UserError(
            f"{where}: this run's checkpoint holds another model ({', '.join(changed)} differ); "
            "give the new model its own run name"
        )


def train_batches(
    shard: ray.data.DataIterator, config: dict[str, Any], epoch: int, rank: int
) -> Iterable[dict[str, torch.Tensor]]:
    """One epoch of this worker's training batches, shuffled within the worker's buffer."""
    seed = config["trial"]["train"]["seed"]
    return shard.iter_torch_batches(
        batch_size=config["trial"]["train"]["batch_size"],
        dtypes=DTYPES,
        drop_last=True,  # equal batch counts on every rank keep DDP's all-reduces paired
        local_shuffle_buffer_size=config["shuffle_rows"],
        local_shuffle_seed=seed + 7_919 * epoch + rank,
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train ``config['trial']`` on this worker's shards; report every epoch."""
    # Ray Train logs "Reporting training result ..." for every report of every worker through a
    # logger named after its file, which its LoggingConfig does not reach; it propagates to the
    # root logger, which Ray Train sets to INFO on workers. The epoch lines already say it all.
    logging.getLogger().setLevel(logging.WARNING)
    trial = TrialConfig.from_dict(config["trial"])
    cfg, n_classes = trial.train, trial.model.n_classes
    torch.set_num_threads(ResourcesConfig.from_dict(config["resources"]).threads)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()

    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP broadcasts rank 0's too)
    model = build_model(trial.model)
    cost = model_cost(trial.model, config["frames"])
    state = _restore(trial)
    if state is not None:
        model.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, config["steps_per_epoch"])
    done, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        done, history = state["epoch"], state["history"]

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    for epoch in range(done + 1, cfg.epochs + 1):
        # Augmentation differs per rank and epoch, yet a resumed epoch replays the same draws.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)
        start = time.perf_counter()
        batches = train_batches(train_shard, config, epoch, rank)
        fit = train_epoch(model, batches, optimizer, scheduler, cfg, device, n_classes=n_classes)
        _sync_buffers(model)
        stats = evaluate(
            model,
            valid_shard.iter_torch_batches(batch_size=cfg.batch_size, dtypes=DTYPES),
            n_classes,
            device,
        )
        parts = _gather((fit, stats))
        fits = [p[0] for p in parts]
        merged = parts[0][1].merge(p[1] for p in parts[1:])
        samples = sum(f["samples"] for f in fits)
        metrics = {
            "epoch": epoch,
            "train_loss": sum(f["train_loss"] * f["samples"] for f in fits) / max(samples, 1),
            "train_acc": sum(f["train_acc"] * f["samples"] for f in fits) / max(samples, 1),
            **merged.metrics(),
            "lr": float(fit["lr"]),
            "samples_per_s": samples / max(max(f["seconds"] for f in fits), 1e-9),
            "epoch_time_s": time.perf_counter() - start,
            "params": cost.params,
            "flops": cost.flops,
        }
        if not math.isfinite(metrics["train_loss"]):  # every rank sees the same merged loss
            raise FloatingPointError(
                f"train_loss is {metrics['train_loss']} at epoch {epoch}: training diverged; "
                "lower train.lr"
            )
        history.append(metrics)
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)  # only rank 0's metrics are kept
            continue
        unwrapped = getattr(model, "module", model)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(
                {
                    "model": unwrapped.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "trial": trial.to_dict(),
                    "feature": config["feature"],
                    "labels": config["labels"],
                    "metrics": metrics,
                    "history": history,
                    "valid_confusion": merged.track_confusion.tolist(),
                },
                tmp,
            )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"epoch_{epoch:04d}",
            )


def ingest_datasets(prepared: Prepared, seed: int) -> dict[str, ray.data.Dataset]:
    """The ``train`` and ``valid`` datasets as workers read them (see :data:`CACHE_FRACTION`)."""
    datasets = {
        split: ds.select_columns(list(COLUMNS))
        for split, ds in prepared.ray_datasets(("train", "valid")).items()
    }
    store = ray.cluster_resources().get("object_store_memory", 0) if ray.is_initialized() else 0
    size = (prepared.segments("train") + prepared.segments("valid")) * _row_bytes(prepared)
    for split, ds in datasets.items():
        ds.context.enable_progress_bars = False  # per-epoch bars would bury the epoch lines
        if size <= CACHE_FRACTION * store:
            datasets[split] = ds.materialize()
    # A new block order each epoch (reproducible from the seed): cheap shuffling upstream of
    # the per-worker split, instead of a full all-to-all random_shuffle.
    datasets["train"] = datasets["train"].randomize_block_order(
        seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    )
    return datasets


def _row_bytes(prepared: Prepared) -> int:
    """Bytes of one float32 ``(n_mels, frames)`` segment."""
    return 4 * prepared.feature.n_mels * prepared.feature.segment_frames


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
) -> ray.train.torch.TorchTrainer:
    """A Ray Train V2 ``TorchTrainer`` for one trial on a prepared directory.

    ``n_mels`` and ``n_classes`` of the model are taken from the data. Checkpoints go to
    ``storage_path/name``; the two best by ``valid_track_acc`` and the latest are kept.
    ``max_failures`` restarts the worker group (from the latest checkpoint) after a worker
    dies; the whole run fails after that many restarts.
    """
    prepared = open_prepared(prepared_dir)
    trial = fit_to_data(trial, prepared)
    cfg, feature = trial.train, prepared.feature
    frames = cfg.crop_frames or feature.segment_frames
    if frames > feature.segment_frames:
        raise UserError(
            f"crop_frames={cfg.crop_frames} exceeds the {feature.segment_frames}-frame segments "
            f"of {prepared_dir}; use a smaller crop or none"
        )
    per_worker = prepared.segments("train") // resources.num_workers
    steps_per_epoch = per_worker // cfg.batch_size
    if steps_per_epoch < 1:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the {per_worker} training segments "
            f"each of {resources.num_workers} workers gets from {prepared_dir}; "
            "use a smaller batch_size or fewer workers"
        )
    if prepared.segments("valid") < resources.num_workers:
        raise UserError(
            f"{prepared_dir}: the valid split has fewer segments than workers; "
            "prepare the data with a validation split"
        )
    datasets = ingest_datasets(prepared, cfg.seed)
    resources_per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        resources_per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "trial": trial.to_dict(),
            "resources": resources.to_dict(),
            "feature": feature.to_dict(),
            "labels": list(prepared.labels),
            "frames": frames,
            "steps_per_epoch": steps_per_epoch,
            "shuffle_rows": max(
                cfg.batch_size, min(per_worker, SHUFFLE_BYTES // _row_bytes(prepared))
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
