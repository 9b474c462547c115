"""Audio -> log-mel segments: the one place audio becomes features.

``prepare`` (training data) and ``predict`` (inference) both call :func:`audio_to_segments`, so
the two can never drift apart. The frontend is the usual music-tagging one: decode with
soundfile (wav, flac, mp3 and ogg decode with the bundled libsndfile, no system packages),
downmix to mono, resample with ``torchaudio.functional.resample``, a power mel spectrogram
(``torchaudio.transforms.MelSpectrogram``, HTK mel scale, centred frames) and dB conversion
(``AmplitudeToDB`` with ``top_db``), then fixed-length segments of ``segment_frames``.

>>> cfg = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
...                     segment_seconds=0.5, segment_hop_seconds=0.5)
>>> wave = np.sin(np.linspace(0, 2000, 8000 * 2)).astype(np.float32)  # 2 s of a tone
>>> mel = log_mel(wave, cfg)
>>> tuple(mel.shape)  # (n_mels, frames): 2 s / 128 samples per hop, centred
(16, 126)
>>> segment(mel.numpy(), cfg).shape  # (n_segments, n_mels, segment_frames)
(4, 16, 31)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError

__all__ = [
    "AudioError",
    "FeatureConfig",
    "audio_to_segments",
    "load_audio",
    "log_mel",
    "segment",
    "silence_db",
]

AMIN_DB = -100.0
"""dB value of digital silence: ``AmplitudeToDB`` clamps power at amin=1e-10 (10*log10)."""


class AudioError(UserError):
    """A file that does not decode to usable audio; the message names the file."""


def load_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """Decode, downmix and resample one file -> float32 ``(samples,)`` at ``sample_rate``.

    Raises :class:`AudioError` for a missing, unreadable, corrupt, truncated-header or empty
    file. A file whose header promises more frames than it holds decodes to what is there.
    """
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        reason = str(e).split(": ", 1)[-1] if isinstance(e, sf.LibsndfileError) else str(e)
        raise AudioError(f"{path}: cannot decode audio ({reason.strip()})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples (empty or truncated file)")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (samples,)
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    if rate != sample_rate:
        resampled = torchaudio.functional.resample(torch.from_numpy(wave), rate, sample_rate)
        wave = resampled.numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _transforms(cfg: FeatureConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The mel and dB transforms of one config, built once per process (filterbank is cached)."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        f_min=cfg.f_min,
        f_max=cfg.f_max,
        n_mels=cfg.n_mels,
        power=2.0,
    )
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=cfg.top_db)
    return mel, to_db


def log_mel(waveform: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """``(samples,)`` float32 at ``cfg.sample_rate`` -> dB mel spectrogram ``(n_mels, frames)``.

    ``frames = 1 + samples // hop_length`` (centred STFT frames).
    """
    wave = torch.as_tensor(waveform, dtype=torch.float32)
    mel, to_db = _transforms(cfg)
    with torch.no_grad():
        return to_db(mel(wave))  # (n_mels, frames)


def silence_db(mel_db: np.ndarray, cfg: FeatureConfig) -> float:
    """The value silence takes in this clip's dB spectrogram (``top_db`` floors it per clip)."""
    if cfg.top_db is None or mel_db.size == 0:
        return AMIN_DB
    return max(AMIN_DB, float(mel_db.max()) - cfg.top_db)


def segment(mel: np.ndarray, cfg: FeatureConfig, pad_value: float | None = None) -> np.ndarray:
    """``(n_mels, frames)`` -> ``(n_segments, n_mels, segment_frames)`` float32.

    Windows of ``cfg.segment_frames`` start every ``cfg.segment_hop_frames``; a trailing
    partial window is dropped. A clip shorter than one segment is padded on the right with
    ``pad_value`` (default: the clip's silence level, :func:`silence_db`) when
    ``cfg.short_clip == "pad"``, or gives zero segments when it is ``"skip"``.

    >>> cfg = FeatureConfig(sample_rate=8000, hop_length=256, n_fft=512, segment_seconds=0.32,
    ...                     segment_hop_seconds=0.32)
    >>> cfg.segment_frames
    10
    >>> segment(np.zeros((4, 25), np.float32), cfg).shape  # two full windows, 5 frames dropped
    (2, 4, 10)
    >>> short = np.full((4, 6), -20.0, np.float32)
    >>> padded = segment(short, cfg)
    >>> padded.shape, float(padded[0, 0, -1])  # top_db=80 below the clip's -20 dB peak
    ((1, 4, 10), -100.0)
    >>> segment(short, cfg.replace(short_clip="skip")).shape
    (0, 4, 10)
    """
    n_mels, frames = mel.shape
    width, hop = cfg.segment_frames, cfg.segment_hop_frames
    mel = np.asarray(mel, dtype=np.float32)
    if frames < width:
        if cfg.short_clip == "skip":
            return np.empty((0, n_mels, width), np.float32)
        fill = silence_db(mel, cfg) if pad_value is None else pad_value
        padded = np.full((n_mels, width), fill, np.float32)
        padded[:, :frames] = mel
        return padded[None]  # (1, n_mels, segment_frames)
    starts = range(0, frames - width + 1, hop)
    return np.stack([mel[:, s : s + width] for s in starts])  # (n_segments, n_mels, width)


def audio_to_segments(path: str | os.PathLike[str], cfg: FeatureConfig) -> np.ndarray:
    """Decode one file and cut it -> ``(n_segments, n_mels, segment_frames)`` float32.

    Zero segments means the clip was shorter than one segment and ``short_clip="skip"``.
    """
    wave = load_audio(Path(path), cfg.sample_rate)
    return segment(log_mel(wave, cfg).numpy(), cfg)
