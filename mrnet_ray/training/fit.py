"""The epoch body, written once for every place a model trains.

:func:`fit` builds (or restores) the model, trains and evaluates it epoch by epoch, merges
every rank's statistics and reports each epoch with a checkpoint. Where it runs is a
:class:`Session`: a Ray Train worker (:mod:`~mrnet_ray.training.raytrain`), a Tune trial
that trains itself (:mod:`~mrnet_ray.training.intrial`) or a plain process
(:class:`LocalSession`, for tests and the GPU check); the batches come from a
:class:`~mrnet_ray.training.feed.Feed`. Nothing here imports Ray.

Everything random derives from ``TrainConfig.seed``: the initial weights, the data order
(the feed's) and the augmentation draws of each epoch and rank, which a resumed epoch replays.

>>> import numpy as np
>>> from mrnet_ray.config import MRNetConfig, TrainConfig, TrialConfig
>>> from mrnet_ray.shards import SplitArrays
>>> from mrnet_ray.training.feed import MemoryFeed
>>> split = SplitArrays(np.random.default_rng(0).normal(size=(8, 4, 16)).astype(np.float32),
...                     np.arange(8) % 2, np.arange(8), [])
>>> trial = TrialConfig(MRNetConfig(n_mels=4, n_classes=2, channels=8, res2_scale=2,
...     dilations=(1,), route_depths=((1,),), se_channels=4, attention_channels=4,
...     embedding_dim=4), TrainConfig(epochs=2, batch_size=4))
>>> session = LocalSession()
>>> fit(trial, RunPlan({}, ["a", "b"], 16, 2), MemoryFeed(split, split, 4, 0), session)
>>> [m["epoch"] for m in session.reports], session.state["epoch"]
([1, 2], 2)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from mrnet_ray.config import MRNetConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.nn import build_model, model_cost
from mrnet_ray.training.feed import Feed
from mrnet_ray.training.loop import (
    evaluate,
    make_ema,
    make_optimizer,
    make_scheduler,
    train_epoch,
)

TRAINED_KEY = "trained_model"
"""With ``ema_decay`` on, the checkpoint's ``model`` is the moving average (what is evaluated
and exported) and this key holds the trained weights themselves, which a resumed run continues."""


@dataclass(frozen=True)
class RunPlan:
    """What a run takes from its prepared data besides the trial (see :func:`plan`)."""

    feature: dict[str, Any]
    """``FeatureConfig.to_dict()`` of the data, stored in every checkpoint."""
    labels: list[str]
    """Class names in label-id order."""
    frames: int
    """Frames the model sees per segment (the crop, or the whole segment)."""
    steps_per_epoch: int
    """Optimizer steps per epoch on each rank (the schedule's unit)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(prepared: Any, trial: TrialConfig, workers: int, fit_on: str = "train") -> RunPlan:
    """The plan of ``trial`` on ``prepared`` (a :class:`~mrnet_ray.shards.Prepared`) with
    ``workers`` ranks, training on ``fit_on`` (``train`` or ``train+valid``); UserError for a
    crop, batch or split the data cannot give."""
    cfg, feature = trial.train, prepared.feature
    frames = cfg.crop_frames or feature.segment_frames
    if frames > feature.segment_frames:
        raise UserError(
            f"crop_frames={cfg.crop_frames} exceeds the {feature.segment_frames}-frame segments "
            f"of {prepared.path}; use a smaller crop or none"
        )
    rows = prepared.segments("train") + (prepared.segments("valid") if "valid" in fit_on else 0)
    per_worker = rows // workers
    steps = per_worker // cfg.batch_size
    if steps < 1:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the {per_worker} training segments "
            f"each of {workers} workers gets from {prepared.path}; "
            "use a smaller batch_size or fewer workers"
        )
    if prepared.segments("valid") < workers:
        raise UserError(
            f"{prepared.path}: the valid split has fewer segments than workers; "
            "prepare the data with a validation split"
        )
    return RunPlan(feature.to_dict(), list(prepared.labels), frames, steps)


class Session(Protocol):
    """What the epoch body needs from where it runs."""

    rank: int
    world_size: int
    device: torch.device

    def restore(self) -> dict[str, Any] | None:
        """The state of the latest checkpoint when this run resumes, else None."""
        ...

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on this rank's device (wrapped for DDP where there are several ranks)."""
        ...

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (a collective: every rank calls it)."""
        ...

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's BatchNorm statistics, so evaluation matches the checkpoint."""
        ...

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        """Report one epoch; rank 0 passes the checkpoint ``state``, the others None."""
        ...


class OneRank:
    """The collective parts of a :class:`Session` of a single rank: nothing to share."""

    rank = 0
    world_size = 1
    device: torch.device

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def sync_buffers(self, model: nn.Module) -> None:
        return None


@dataclass
class LocalSession(OneRank):
    """One rank in this process: reports and the latest state are kept in memory."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume_from: dict[str, Any] | None = None
    reports: list[dict[str, float]] = field(default_factory=list)
    state: dict[str, Any] | None = None

    def restore(self) -> dict[str, Any] | None:
        return self.resume_from

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        self.state = state


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


def fit(trial: TrialConfig, run: RunPlan, feed: Feed, session: Session) -> None:
    """Train ``trial`` to ``trial.train.epochs`` (from where a restored checkpoint left off),
    reporting every epoch's merged metrics to ``session``; raises FloatingPointError when the
    loss diverges."""
    cfg, n_classes = trial.train, trial.model.n_classes
    rank, device = session.rank, session.device
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(trial.model)
    cost = model_cost(trial.model, run.frames)
    state = session.restore()
    if state is not None:
        check_same_model(state, trial, "the restored checkpoint")
        model.load_state_dict(state.get(TRAINED_KEY, state["model"]))
    model = session.prepare(model)
    ema = make_ema(model, cfg)  # evaluated, checkpointed as "model" and exported when on
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, run.steps_per_epoch)
    done, history = 0, []
    if state is not None:
        if ema is not None and TRAINED_KEY in state:
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(state["ema_steps"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        done, history = state["epoch"], state["history"]

    for epoch in range(done + 1, cfg.epochs + 1):
        # Augmentation differs per rank and epoch, yet a resumed epoch replays the same draws.
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)
        start = time.perf_counter()
        batches = feed.train(epoch, rank, session.world_size)
        fit_stats = train_epoch(
            model, batches, optimizer, scheduler, cfg, device, n_classes=n_classes, ema=ema
        )
        session.sync_buffers(model)
        if ema is not None:
            session.sync_buffers(ema.module)
        judged = model if ema is None else ema.module
        stats = evaluate(judged, feed.valid(rank, session.world_size), n_classes, device)
        parts = session.gather((fit_stats, stats))
        fits = [p[0] for p in parts]
        merged = parts[0][1].merge(p[1] for p in parts[1:])
        samples = sum(f["samples"] for f in fits)
        metrics = {
            "epoch": epoch,
            "train_loss": sum(f["train_loss"] * f["samples"] for f in fits) / max(samples, 1),
            "train_acc": sum(f["train_acc"] * f["samples"] for f in fits) / max(samples, 1),
            **merged.metrics(),
            "lr": float(fit_stats["lr"]),
            "train_segments": samples,  # what it trained on, all ranks together
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
            session.report(metrics, None)  # only rank 0's report carries the checkpoint
            continue
        unwrapped = getattr(model, "module", model)
        averaged = {} if ema is None else {
            TRAINED_KEY: unwrapped.state_dict(),  # what training resumes from
            "ema_steps": int(ema.n_averaged),
        }  # fmt: skip
        session.report(
            metrics,
            {
                "model": (unwrapped if ema is None else ema.module).state_dict(),
                **averaged,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "trial": trial.to_dict(),
                "feature": run.feature,
                "labels": run.labels,
                "metrics": metrics,
                "history": history,
                "valid_confusion": merged.track_confusion.tolist(),
            },
        )
