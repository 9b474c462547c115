"""Frozen configuration dataclasses: the one source of defaults and validation.

Three concerns, one dataclass each:

- :class:`FeatureConfig`: how audio becomes log-mel segments (used by prepare *and* predict);
- :class:`MRNetConfig`: the network (MRNet and the same-harness baselines);
- :class:`TrainConfig`: one training run's optimisation and augmentation knobs.

This module imports neither torch nor Ray, so the CLI, the search-space checker and the
tests load it in milliseconds. Every check raises ``ValueError`` whose message starts with
the bad field's name, so a user sees ``res2_scale=5 must divide channels=64`` and not a
shape error deep inside a forward pass.

>>> MRNetConfig(channels=64, res2_scale=4).route_depths
((1, 2, 3), (1, 2, 3), (1, 2, 3))
>>> MRNetConfig.from_dict({"dilations": [2, 3], "route_depths": [[1], [1, 2]]}).dilations
(2, 3)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Self, get_args

Arch = Literal["mrnet", "ecapa", "shortchunk"]
Schedule = Literal["cosine", "onecycle"]
ShortClip = Literal["pad", "skip"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _tupleize(value: Any) -> Any:
    """Lists (as YAML and JSON give them) to tuples, recursively, so configs stay hashable."""
    if isinstance(value, list | tuple):
        return tuple(_tupleize(v) for v in value)
    return value


class _Config:
    """Shared ``from_dict`` / ``to_dict`` / ``replace`` for the frozen config dataclasses."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from plain values; unknown keys raise ``ValueError`` naming them."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{unknown[0]}: unknown {cls.__name__} field; "
                f"known fields: {', '.join(sorted(known))}"
            )
        return cls(**{k: _tupleize(v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples become lists)."""

        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **{k: _tupleize(v) for k, v in changes.items()})  # type: ignore[type-var]


@dataclass(frozen=True)
class FeatureConfig(_Config):
    """Audio -> log-mel settings. Recorded in every prepared directory's manifest and bundle."""

    sample_rate: int = 22050
    """Audio is resampled to this rate (Hz) before the STFT."""
    n_fft: int = 1024
    """STFT window and FFT size in samples."""
    hop_length: int = 512
    """STFT hop in samples (512 at 22,050 Hz is about 23 ms per frame)."""
    n_mels: int = 128
    """Number of mel bands: the model's input channels."""
    f_min: float = 0.0
    """Lowest mel band edge in Hz."""
    f_max: float | None = None
    """Highest mel band edge in Hz; None means sample_rate / 2."""
    top_db: float | None = 80.0
    """Dynamic range kept by the dB conversion; None keeps everything."""
    segment_seconds: float = 3.0
    """Length of one training/prediction segment in seconds."""
    segment_hop_seconds: float = 3.0
    """Distance between segment starts in seconds (equal to the length: no overlap)."""
    short_clip: ShortClip = "pad"
    """Clips shorter than one segment: 'pad' with silence or 'skip' them."""

    def __post_init__(self) -> None:
        _check(self.sample_rate >= 1000, f"sample_rate={self.sample_rate} must be >= 1000 Hz")
        _check(self.n_fft >= 16, f"n_fft={self.n_fft} must be >= 16")
        _check(
            0 < self.hop_length <= self.n_fft,
            f"hop_length={self.hop_length} must be in 1..n_fft={self.n_fft}",
        )
        _check(self.n_mels >= 1, f"n_mels={self.n_mels} must be >= 1")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        _check(0 <= self.f_min < f_max, f"f_min={self.f_min} must be >= 0 and below f_max={f_max}")
        _check(f_max <= nyquist, f"f_max={self.f_max} must be <= sample_rate/2={nyquist}")
        _check(self.top_db is None or self.top_db > 0, f"top_db={self.top_db} must be > 0 or None")
        _check(self.segment_seconds > 0, f"segment_seconds={self.segment_seconds} must be > 0")
        _check(
            self.segment_hop_seconds > 0,
            f"segment_hop_seconds={self.segment_hop_seconds} must be > 0",
        )
        _check(
            self.short_clip in get_args(ShortClip),
            f"short_clip={self.short_clip!r} must be one of {get_args(ShortClip)}",
        )
        _check(
            self.segment_frames >= 8,
            f"segment_seconds={self.segment_seconds} gives {self.segment_frames} frames; need >= 8",
        )

    @property
    def segment_frames(self) -> int:
        """Frames in one segment: ``(n_mels, segment_frames)`` is every stored tensor's shape."""
        return round(self.segment_seconds * self.sample_rate / self.hop_length)

    @property
    def segment_hop_frames(self) -> int:
        """Frames between consecutive segment starts."""
        return max(1, round(self.segment_hop_seconds * self.sample_rate / self.hop_length))


@dataclass(frozen=True)
class MRNetConfig(_Config):
    """The network. ``arch`` picks MRNet or a baseline; all read the same fields.

    Defaults are the full-size (GPU) model, ECAPA-TDNN's C=512 widths with MRNet's routes.
    """

    arch: Arch = "mrnet"
    """'mrnet' (multi-route Res2 blocks), 'ecapa' (one route of depth 1: ECAPA-TDNN's
    SE-Res2 block) or 'shortchunk' (2-D short-chunk ResNet CNN of Won et al. 2020)."""
    n_mels: int = 128
    """Input mel bands, i.e. the 1-D convs' input channels; must match the prepared data."""
    n_classes: int = 10
    """Number of output classes (logits)."""
    channels: int = 512
    """Width C of the stem and of every block."""
    stem_kernel: int = 5
    """Kernel size of the stem conv (odd)."""
    dilations: tuple[int, ...] = (2, 3, 4)
    """Dilation of each block, one per block; sets how far in time each block looks."""
    route_depths: tuple[tuple[int, ...], ...] = ((1, 2, 3), (1, 2, 3), (1, 2, 3))
    """Per block, the depth (stacked Res2 convs) of each route. ((1,), ...) is ECAPA."""
    res2_scale: int = 8
    """Res2 scale s: channels split into s chunks of hierarchical convs; must divide channels."""
    kernel_size: int = 3
    """Kernel size of the Res2 convs (odd)."""
    se_channels: int = 128
    """Bottleneck width of the squeeze-excitation blocks."""
    attention_channels: int = 128
    """Hidden width of attentive statistics pooling."""
    embedding_dim: int = 192
    """Size of the embedding before the classifier."""
    dropout: float = 0.0
    """Dropout before the classifier."""

    def __post_init__(self) -> None:
        _check(self.arch in get_args(Arch), f"arch={self.arch!r} must be one of {get_args(Arch)}")
        _check(self.n_mels >= 1, f"n_mels={self.n_mels} must be >= 1")
        _check(self.n_classes >= 2, f"n_classes={self.n_classes} must be >= 2")
        _check(self.channels >= 4, f"channels={self.channels} must be >= 4")
        _check(
            self.stem_kernel >= 1 and self.stem_kernel % 2 == 1,
            f"stem_kernel={self.stem_kernel} must be odd and >= 1",
        )
        _check(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            f"kernel_size={self.kernel_size} must be odd and >= 1",
        )
        _check(len(self.dilations) >= 1, "dilations must name at least one block")
        _check(
            all(isinstance(d, int) and d >= 1 for d in self.dilations),
            f"dilations={self.dilations} must be integers >= 1",
        )
        _check(
            len(self.route_depths) == len(self.dilations),
            f"route_depths has {len(self.route_depths)} blocks but dilations has "
            f"{len(self.dilations)}; give one tuple of route depths per block",
        )
        for i, routes in enumerate(self.route_depths):
            _check(
                isinstance(routes, tuple) and len(routes) >= 1,
                f"route_depths[{i}]={routes!r} must be a non-empty list of route depths",
            )
            _check(
                all(isinstance(d, int) and d >= 1 for d in routes),
                f"route_depths[{i}]={routes} must be integers >= 1 (a depth-0 route has no convs)",
            )
        _check(self.res2_scale >= 1, f"res2_scale={self.res2_scale} must be >= 1")
        _check(
            self.channels % self.res2_scale == 0,
            f"res2_scale={self.res2_scale} must divide channels={self.channels}",
        )
        _check(self.se_channels >= 1, f"se_channels={self.se_channels} must be >= 1")
        _check(
            self.attention_channels >= 1,
            f"attention_channels={self.attention_channels} must be >= 1",
        )
        _check(self.embedding_dim >= 1, f"embedding_dim={self.embedding_dim} must be >= 1")
        _check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")

    @property
    def n_blocks(self) -> int:
        return len(self.dilations)


@dataclass(frozen=True)
class TrainConfig(_Config):
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

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"epochs={self.epochs} must be >= 1")
        _check(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be a positive number")
        _check(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        _check(
            self.schedule in get_args(Schedule),
            f"schedule={self.schedule!r} must be one of {get_args(Schedule)}",
        )
        _check(
            0.0 <= self.warmup_fraction < 1.0,
            f"warmup_fraction={self.warmup_fraction} must be in [0, 1)",
        )
        _check(
            0.0 <= self.label_smoothing < 1.0,
            f"label_smoothing={self.label_smoothing} must be in [0, 1)",
        )
        _check(self.mixup_alpha >= 0, f"mixup_alpha={self.mixup_alpha} must be >= 0")
        _check(self.freq_mask >= 0, f"freq_mask={self.freq_mask} must be >= 0")
        _check(self.time_mask >= 0, f"time_mask={self.time_mask} must be >= 0")
        _check(self.n_masks >= 0, f"n_masks={self.n_masks} must be >= 0")
        _check(
            self.crop_frames is None or self.crop_frames >= 8,
            f"crop_frames={self.crop_frames} must be >= 8 or None",
        )
        _check(
            self.grad_clip is None or self.grad_clip > 0,
            f"grad_clip={self.grad_clip} must be > 0 or None",
        )


@dataclass(frozen=True)
class TrialConfig(_Config):
    """What one trial trains: ``model:`` and ``train:`` sections (``train --config FILE.yaml``)."""

    model: MRNetConfig = field(default_factory=MRNetConfig)
    """The network."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        unknown = sorted(set(values) - {"model", "train"})
        _check(
            not unknown, f"{unknown[0] if unknown else ''}: unknown section; use model: and train:"
        )
        return cls(
            model=MRNetConfig.from_dict(values.get("model") or {}),
            train=TrainConfig.from_dict(values.get("train") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}


@dataclass(frozen=True)
class ResourcesConfig(_Config):
    """Ray Train resources of one run. Defaults fit a 2-core machine; use ``gpu()`` on clusters.

    Fractional CPUs matter on small machines: a trial driver plus two whole-CPU workers
    deadlock on 2 cores, while 0.4-CPU workers leave room for Ray Data's read tasks.
    """

    num_workers: int = 2
    """Ray Train workers (DDP ranks)."""
    cpus_per_worker: float = 0.4
    """CPU resource of each worker (may be fractional)."""
    gpus_per_worker: float = 0.0
    """GPUs of each worker; > 0 trains on CUDA with NCCL, 0 on CPU with gloo."""
    torch_threads: int | None = None
    """Intra-op threads per worker; None means max(1, floor(cpus_per_worker))."""

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, f"num_workers={self.num_workers} must be >= 1")
        _check(self.cpus_per_worker > 0, f"cpus_per_worker={self.cpus_per_worker} must be > 0")
        _check(self.gpus_per_worker >= 0, f"gpus_per_worker={self.gpus_per_worker} must be >= 0")
        _check(
            self.torch_threads is None or self.torch_threads >= 1,
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
        >>> ResourcesConfig.from_flags(num_workers=1).cpus_per_worker
        0.4
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
