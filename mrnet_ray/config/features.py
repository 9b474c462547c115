"""How audio becomes log-mel segments: recorded in every prepared directory's manifest and
every bundle, used by prepare, predict and serving alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from mrnet_ray.config.base import Config, check

ShortClip = Literal["pad", "skip"]


@dataclass(frozen=True)
class FeatureConfig(Config):
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
    """Distance between training segment starts in seconds (equal to the length: no overlap)."""
    eval_hop_seconds: float | None = None
    """Distance between segment starts where a whole track is scored (the valid and test
    splits, predict, serve, bulk); below segment_seconds the segments overlap and the track's
    logits are their mean. None: half of segment_seconds."""
    short_clip: ShortClip = "pad"
    """Clips shorter than one segment: 'pad' with silence or 'skip' them."""
    max_track_seconds: float = 600.0
    """Longest track decoded, in seconds; a longer one (by its header or its data) is refused."""

    def __post_init__(self) -> None:
        check(
            self.sample_rate >= 1000,
            "sample_rate",
            f"sample_rate={self.sample_rate} must be >= 1000 Hz",
        )
        check(self.n_fft >= 16, "n_fft", f"n_fft={self.n_fft} must be >= 16")
        check(
            0 < self.hop_length <= self.n_fft,
            "hop_length",
            f"hop_length={self.hop_length} must be in 1..n_fft={self.n_fft}",
        )
        check(self.n_mels >= 1, "n_mels", f"n_mels={self.n_mels} must be >= 1")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        check(
            0 <= self.f_min < f_max,
            "f_min",
            f"f_min={self.f_min} must be >= 0 and below f_max={f_max}",
        )
        check(f_max <= nyquist, "f_max", f"f_max={self.f_max} must be <= sample_rate/2={nyquist}")
        check(
            self.top_db is None or self.top_db > 0,
            "top_db",
            f"top_db={self.top_db} must be > 0 or None",
        )
        check(
            self.segment_seconds > 0,
            "segment_seconds",
            f"segment_seconds={self.segment_seconds} must be > 0",
        )
        check(
            self.segment_hop_seconds > 0,
            "segment_hop_seconds",
            f"segment_hop_seconds={self.segment_hop_seconds} must be > 0",
        )
        check(
            self.eval_hop_seconds is None or self.eval_hop_seconds > 0,
            "eval_hop_seconds",
            f"eval_hop_seconds={self.eval_hop_seconds} must be > 0 or None",
        )
        check(
            self.short_clip in get_args(ShortClip),
            "short_clip",
            f"short_clip={self.short_clip!r} must be one of {get_args(ShortClip)}",
        )
        check(
            self.max_track_seconds > 0,
            "max_track_seconds",
            f"max_track_seconds={self.max_track_seconds} must be > 0",
        )
        check(
            self.segment_frames >= 8,
            "segment_seconds",
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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FeatureConfig:
        """As :meth:`Config.from_dict`. Settings recorded before ``eval_hop_seconds`` existed
        (prepared directories, bundles) scored tracks every ``segment_hop_seconds``, and still do.
        """
        if "eval_hop_seconds" not in values:
            hop = values.get("segment_hop_seconds", cls.segment_hop_seconds)
            values = {**values, "eval_hop_seconds": hop}
        return super().from_dict(values)

    def for_split(self, split: str) -> FeatureConfig:
        """How ``split`` is cut: train every ``segment_hop_seconds``, valid and test as a
        track is scored (:meth:`scoring`)."""
        return self if split == "train" else self.scoring()

    def scoring(self) -> FeatureConfig:
        """These settings as a whole track is scored with: segments every ``eval_hop_seconds``.

        >>> FeatureConfig().scoring().segment_hop_seconds  # half of the 3 s segment
        1.5
        """
        hop = self.segment_seconds / 2 if self.eval_hop_seconds is None else self.eval_hop_seconds
        return self.replace(segment_hop_seconds=hop)
