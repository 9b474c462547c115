"""One training run: its optimisation, the trial (model + training) and its workers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Self, get_args

from mrnet_ray.config.base import Config, ConfigError, check
from mrnet_ray.config.model import MRNetConfig

Schedule = Literal["cosine", "onecycle"]


@dataclass(frozen=True)
class TrainConfig(Config):
    """One training run: optimisation, schedule, augmentation and precision."""

    epochs: int = 30
    """Passes over the training split."""
    batch_size: int = 32
    """Segments per step on each worker."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""
    schedule: Schedule = "cosine"
    """'cosine' (linear warm-up then cosine decay) or 'onecycle'."""
    warmup_fraction: float = 0.05
    """Share of all steps spent warming up (the one-cycle's rising phase)."""
    label_smoothing: float = 0.1
    """Cross-entropy label smoothing."""
    mixup_alpha: float = 0.0
    """Beta(alpha, alpha) mixup of segments and labels; 0 turns mixup off."""
    freq_mask: int = 0
    """SpecAugment: widest frequency mask in mel bands; 0 turns it off."""
    time_mask: int = 0
    """SpecAugment: widest time mask in frames; 0 turns it off."""
    n_masks: int = 2
    """SpecAugment: masks of each kind per segment."""
    crop_frames: int | None = None
    """Train on random crops of this many frames of each segment; None uses whole segments."""
    seed: int = 0
    """Seeds torch, numpy and the data order."""
    amp: bool = True
    """Mixed precision (bf16 autocast) when training on CUDA; ignored on CPU."""
    grad_clip: float | None = 5.0
    """Clip the global gradient norm to this; None turns clipping off."""
    ema_decay: float = 0.0
    """Evaluate and export an exponential moving average of the weights with this decay per
    step (e.g. 0.99); 0 turns it off."""

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", f"epochs={self.epochs} must be >= 1")
        check(self.batch_size >= 1, "batch_size", f"batch_size={self.batch_size} must be >= 1")
        check(
            math.isfinite(self.lr) and self.lr > 0, "lr", f"lr={self.lr} must be a positive number"
        )
        check(
            self.weight_decay >= 0, "weight_decay", f"weight_decay={self.weight_decay} must be >= 0"
        )
        check(
            self.schedule in get_args(Schedule),
            "schedule",
            f"schedule={self.schedule!r} must be one of {get_args(Schedule)}",
        )
        check(
            0.0 <= self.warmup_fraction < 1.0,
            "warmup_fraction",
            f"warmup_fraction={self.warmup_fraction} must be in [0, 1)",
        )
        check(
            0.0 <= self.label_smoothing < 1.0,
            "label_smoothing",
            f"label_smoothing={self.label_smoothing} must be in [0, 1)",
        )
        check(self.mixup_alpha >= 0, "mixup_alpha", f"mixup_alpha={self.mixup_alpha} must be >= 0")
        check(self.freq_mask >= 0, "freq_mask", f"freq_mask={self.freq_mask} must be >= 0")
        check(self.time_mask >= 0, "time_mask", f"time_mask={self.time_mask} must be >= 0")
        check(self.n_masks >= 0, "n_masks", f"n_masks={self.n_masks} must be >= 0")
        check(
            self.crop_frames is None or self.crop_frames >= 8,
            "crop_frames",
            f"crop_frames={self.crop_frames} must be >= 8 or None",
        )
        check(
            0.0 <= self.ema_decay < 1.0,
            "ema_decay",
            f"ema_decay={self.ema_decay} must be in [0, 1)",
        )
        check(
            self.grad_clip is None or self.grad_clip > 0,
            "grad_clip",
            f"grad_clip={self.grad_clip} must be > 0 or None",
        )


@dataclass(frozen=True)
class TrialConfig(Config):
    """What one trial trains: ``model:`` and ``train:`` sections (``train --config FILE.yaml``)."""

    model: MRNetConfig = field(default_factory=MRNetConfig)
    """The network."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        unknown = sorted(set(values) - {"model", "train"})
        if unknown:
            raise ConfigError(unknown[0], f"{unknown[0]}: unknown section; use model: and train:")
        return cls(
            model=MRNetConfig.from_dict(values.get("model") or {}),
            train=TrainConfig.from_dict(values.get("train") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}

    def flat(self) -> dict[str, str | int | float]:
        """``section.field`` -> value, as MLflow params and tables show a config; lists become
        "2,3,4", route depths "1-2,1-2-3".

        >>> TrialConfig().flat()["model.route_depths"]
        '1-2-3,1-2-3,1-2-3'
        """
        flat: dict[str, str | int | float] = {}
        for section, fields in self.to_dict().items():
            for key, value in fields.items():
                flat[f"{section}.{key}"] = _flat_value(value)
        flat["model.n_blocks"] = self.model.n_blocks
        return flat


def _flat_value(value: Any) -> str | int | float:
    if isinstance(value, list):
        return ",".join("-".join(map(str, v)) if isinstance(v, list) else str(v) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return str(value)


@dataclass(frozen=True)
class ResourcesConfig(Config):
    """The workers of one run or trial. The default is one worker of one CPU with one torch
    thread (a 2-core machine trains two trials at once); ``gpu()`` is one GPU per worker.

    Several workers are DDP ranks under Ray Train: worth it for a model or data too large for
    one device. Fractional CPUs let them share a small machine: a trial driver plus two
    whole-CPU workers deadlock on 2 cores, while 0.4-CPU workers leave room for the rest.
    """

    num_workers: int = 1
    """Workers (DDP ranks); one trains in the trial's own process, more through Ray Train."""
    cpus_per_worker: float = 1.0
    """CPU resource of each worker (may be fractional)."""
    gpus_per_worker: float = 0.0
    """GPUs of each worker; > 0 trains on CUDA with NCCL, 0 on CPU with gloo."""
    torch_threads: int | None = None
    """Intra-op threads per worker; None means max(1, floor(cpus_per_worker))."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "num_workers", f"num_workers={self.num_workers} must be >= 1")
        check(
            self.cpus_per_worker > 0,
            "cpus_per_worker",
            f"cpus_per_worker={self.cpus_per_worker} must be > 0",
        )
        check(
            self.gpus_per_worker >= 0,
            "gpus_per_worker",
            f"gpus_per_worker={self.gpus_per_worker} must be >= 0",
        )
        check(
            self.torch_threads is None or self.torch_threads >= 1,
            "torch_threads",
            f"torch_threads={self.torch_threads} must be >= 1 or None",
        )

    @classmethod
    def gpu(cls, num_workers: int = 1) -> ResourcesConfig:
        """One GPU and 4 CPUs per worker: the cluster default."""
        return cls(num_workers=num_workers, cpus_per_worker=4.0, gpus_per_worker=1.0)

    @classmethod
    def from_flags(
        cls,
        num_workers: int | None = None,
        cpus_per_worker: float | None = None,
        gpus_per_worker: float | None = None,
        *,
        gpu: bool = False,
    ) -> ResourcesConfig:
        """The CLIs' resource flags over the right defaults: ``gpu()`` when GPUs are asked for
        (``gpu`` or ``gpus_per_worker > 0``), else the small-machine ones; None keeps a default.

        >>> ResourcesConfig.from_flags(gpus_per_worker=1).cpus_per_worker
        4.0
        >>> ResourcesConfig.from_flags(num_workers=2, cpus_per_worker=0.4).threads
        1
        """
        base = cls.gpu(num_workers or 1) if gpu or (gpus_per_worker or 0) > 0 else cls()
        flags = {
            "num_workers": num_workers,
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpus_per_worker,
        }
        return base.replace(**{k: v for k, v in flags.items() if v is not None})

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_worker))
