"""The epoch loop and evaluation: plain functions over iterables of batches, no Ray.

:mod:`~mrnet_ray.training.raytrain` feeds them Ray Data shards; tests and benchmarks feed
them lists of tensors.
A batch is a dict of ``mel`` ``(batch, n_mels, frames)`` float32, ``label`` ``(batch,)``
int64 and ``track_index`` ``(batch,)`` int64.

>>> import torch.nn as nn
>>> from mrnet_ray.config import TrainConfig
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6, 3))
>>> cfg = TrainConfig(epochs=2, batch_size=2, warmup_fraction=0.25)
>>> optimizer = make_optimizer(model, cfg)
>>> scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=2)
>>> batches = [{"mel": torch.randn(2, 4, 6), "label": torch.tensor([0, 2]),
...             "track_index": torch.tensor([5, 6])}] * 2
>>> stats = train_epoch(model, batches, optimizer, scheduler, cfg, torch.device("cpu"),
...                     n_classes=3)
>>> stats["samples"], scheduler.last_epoch
(4, 2)
>>> sorted(evaluate(model, batches, 3, torch.device("cpu")).metrics())
['valid_acc', 'valid_loss', 'valid_macro_f1', 'valid_track_acc']
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mrnet_ray.config import TrainConfig
from mrnet_ray.training.augment import mixup, random_crop, soft_targets, spec_augment
from mrnet_ray.training.metrics import EvalStats

Batch = dict[str, torch.Tensor]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on weight matrices and kernels only, not on biases and norms."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step`` (0-based) of ``total_steps``.

    'cosine': linear warm-up from 0 over ``warmup_fraction`` of the steps, then cosine decay
    to 0. 'onecycle': the learning-rate policy of torch's ``OneCycleLR`` (Smith & Topin 2019):
    cosine rise from lr/25 to lr over the warm-up, then cosine fall to lr/25e4.
    Steps past ``total_steps`` keep the final value, so a resumed run that is longer or a
    shard a few rows bigger than planned never breaks the schedule.

    >>> cfg = TrainConfig(warmup_fraction=0.1)
    >>> [round(lr_factor(s, 100, cfg), 3) for s in (0, 5, 10, 55, 100, 120)]
    [0.1, 0.6, 1.0, 0.5, 0.0, 0.0]
    """
    warmup = math.floor(cfg.warmup_fraction * total_steps)
    step = min(step, total_steps)
    if cfg.schedule == "cosine":
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    start, end = 1 / 25, 1 / 25e4
    if step < warmup:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / warmup))
    progress = (step - warmup) / max(1, total_steps - warmup)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule over ``cfg.epochs * steps_per_epoch`` steps (see :func:`lr_factor`).

    Its state is just the step count, so a checkpoint restored into a run with more epochs
    continues the step count on the new, longer schedule.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, cfg))


def make_ema(model: nn.Module, cfg: TrainConfig) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights and buffers (``cfg.ema_decay``
    per step), or None when it is off. A DDP wrapper is unwrapped: the average is of the
    network itself, and it is what evaluation and the checkpoint's ``model`` hold."""
    if not cfg.ema_decay:
        return None
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


def _augment(mel: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.crop_frames is not None:
        mel = random_crop(mel, cfg.crop_frames)
    return spec_augment(mel, freq_mask=cfg.freq_mask, time_mask=cfg.time_mask, n_masks=cfg.n_masks)


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    device: torch.device,
    *,
    n_classes: int,
    ema: AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; steps the scheduler (and updates ``ema``, the moving
    average of the weights, when given) after every optimizer step.

    Returns ``train_loss`` (mean per segment), ``train_acc`` (arg-max against the dominant
    class of each mixed target), ``samples``, ``seconds`` and ``lr`` (of the last step).
    """
    model.train()
    autocast = device.type == "cuda" and cfg.amp
    loss_sum, correct, samples = 0.0, 0, 0
    lr = optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    for batch in batches:
        mel = batch["mel"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        target = soft_targets(label, n_classes, cfg.label_smoothing)
        mel, target = mixup(_augment(mel, cfg), target, cfg.mixup_alpha)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(mel)  # (batch, n_classes)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(getattr(model, "module", model))
        n = label.shape[0]
        loss_sum += loss.item() * n
        correct += int((logits.argmax(dim=1) == target.argmax(dim=1)).sum())
        samples += n
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "train_loss": loss_sum / samples if samples else float("nan"),
        "train_acc": correct / samples if samples else 0.0,
        "samples": samples,
        "seconds": time.perf_counter() - start,
        "lr": lr,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], n_classes: int, device: torch.device
) -> EvalStats:
    """Segment and per-track sums over ``batches`` (un-augmented, eval mode, no smoothing).

    A DDP wrapper is unwrapped first: its forward broadcasts buffers, a collective that
    hangs when workers hold different numbers of validation batches.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    logits, labels, tracks, loss_sum = [], [], [], 0.0
    for batch in batches:
        mel = batch["mel"].to(device, non_blocking=True)
        label = batch["label"].to(device, non_blocking=True)
        out = model(mel).float()  # (batch, n_classes)
        loss_sum += float(F.cross_entropy(out, label, reduction="sum"))
        logits.append(out.cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        tracks.append(batch["track_index"].cpu().numpy())
    model.train(was_training)
    if not logits:
        return EvalStats.empty(n_classes)
    return EvalStats.from_segments(
        np.concatenate(logits), np.concatenate(labels), np.concatenate(tracks), loss_sum
    )
