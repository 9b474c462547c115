"""Audio -> log-mel segments: the one place audio becomes features.

``prepare`` (training data) and ``predict`` (inference) both call :func:`audio_to_segments`, so
the two can never drift apart. The frontend is the usual music-tagging one: decode with
soundfile (wav, flac, mp3 and ogg decode with the bundled libsndfile, no system packages),
downmix to mono, resample with ``torchaudio.functional.resample``, a power mel spectrogram
(``torchaudio.transforms.MelSpectrogram``, HTK mel scale, centred frames) and dB conversion
(``AmplitudeToDB`` with ``top_db``), then fixed-length segments of ``segment_frames``.

Decoding is bounded: a track's declared length is checked before it is read, tracks longer
than ``max_track_seconds`` are refused, and the rest is read in blocks, so no header can
make it allocate more than that.

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
import io
import math
import os
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio

from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError
from mrnet_ray.text import printable

__all__ = [
    "AudioError",
    "AudioSource",
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


AudioSource = str | bytes | os.PathLike[str] | BinaryIO
"""A path (any name the OS allows, also bytes) or a binary file-like object with ``read``,
``seek`` and ``tell``, such as ``io.BytesIO`` of an uploaded request body."""

MAX_SOURCE_RATE = 384_000
"""Highest sample rate (Hz) a file's header may declare: above it, the header is not audio."""
BLOCK_SAMPLES = 1 << 20
"""Samples (frames x channels) decoded per block: 4 MB of float32 at any channel count."""


def _label(source: AudioSource, name: str) -> str:
    """What error messages call ``source``: the path, printable, or ``name`` for a stream."""
    return name if hasattr(source, "read") else printable(os.fspath(source))


def _open(source: AudioSource, label: str) -> sf.SoundFile:
    """The opened file; AudioError for a missing or empty one."""
    if hasattr(source, "read"):
        stream = source
        if getattr(stream, "seekable", lambda: False)():
            here = stream.tell()
            size = stream.seek(0, io.SEEK_END) - here
            stream.seek(here)
            if size <= 0:
                raise AudioError(f"{label}: empty file (0 bytes)")
        return sf.SoundFile(stream)
    path = os.fsencode(source)  # bytes: soundfile would encode a str name strictly as UTF-8
    if not os.path.isfile(path):
        raise AudioError(f"{label}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{label}: empty file (0 bytes)")
    return sf.SoundFile(path)


def _decode(f: sf.SoundFile, label: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """Mono float32 ``(samples,)`` at the file's own rate, read block by block.

    The header's length is checked before anything is read (soundfile believes it: a 3 KB
    FLAC may declare 2^35 samples, and a whole-file read would allocate 128 GiB for them),
    and reading stops as soon as the data runs past the limit, so memory stays within
    ``max_seconds`` of mono audio plus one block, whatever the header says.
    """
    rate, declared = f.samplerate, f.frames
    if not 0 < rate <= MAX_SOURCE_RATE:
        raise AudioError(f"{label}: its header declares a sample rate of {rate} Hz; not audio")
    limit = math.ceil(max_seconds * rate)
    over = (
        f"over the {max_seconds:g} s limit (FeatureConfig.max_track_seconds); cut the file "
        "into shorter tracks or raise the limit"
    )
    if declared > limit:
        raise AudioError(
            f"{label}: its header declares {declared / rate:,.0f} s of audio ({declared:,} "
            f"samples at {rate} Hz), {over}"
        )
    block = max(1024, BLOCK_SAMPLES // max(1, f.channels))
    parts, total = [], 0
    while True:
        data = f.read(block, dtype="float32", always_2d=True)  # (frames, channels)
        if len(data) == 0:
            break
        parts.append(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])  # (frames,)
        total += len(data)
        if total > limit:
            raise AudioError(f"{label}: holds more than {max_seconds:g} s of audio, {over}")
        if len(data) < block:
            break
    wave = np.concatenate(parts) if parts else np.empty(0, np.float32)
    return wave, rate


def load_audio(
    source: AudioSource,
    sample_rate: int,
    *,
    max_seconds: float = FeatureConfig.max_track_seconds,
    name: str = "<audio>",
) -> np.ndarray:
    """Decode, downmix and resample one file -> float32 ``(samples,)`` at ``sample_rate``.

    ``source`` is a path or a binary file-like object (see :data:`AudioSource`); ``name``
    stands for a file-like object in error messages. Raises :class:`AudioError` for a
    missing, unreadable, corrupt, truncated-header or empty file, one whose header or data
    is longer than ``max_seconds``, and one that runs out of memory. A file whose header
    promises more frames than it holds decodes to what is there, if its decoder allows.
    """
    label = _label(source, name)
    try:
        with _open(source, label) as f:
            wave, rate = _decode(f, label, max_seconds)
        if len(wave) == 0:
            raise AudioError(f"{label}: no audio samples (empty or truncated file)")
        if not np.isfinite(wave).all():
            raise AudioError(f"{label}: audio holds NaN or infinite samples")
        if rate != sample_rate:
            resampled = torchaudio.functional.resample(torch.from_numpy(wave), rate, sample_rate)
            wave = resampled.numpy()
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        reason = str(e).split(": ", 1)[-1] if isinstance(e, sf.LibsndfileError) else str(e)
        raise AudioError(f"{label}: cannot decode audio ({reason.strip()})") from None
    except MemoryError:
        raise AudioError(f"{label}: out of memory decoding it; lower max_track_seconds") from None
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


def audio_to_segments(
    source: AudioSource, cfg: FeatureConfig, *, name: str = "<audio>"
) -> np.ndarray:
    """Decode one file and cut it -> ``(n_segments, n_mels, segment_frames)`` float32.

    ``source`` and ``name`` as for :func:`load_audio`; tracks longer than
    ``cfg.max_track_seconds`` are refused with :class:`AudioError`. Zero segments means the
    clip was shorter than one segment and ``short_clip="skip"``.
    """
    wave = load_audio(source, cfg.sample_rate, max_seconds=cfg.max_track_seconds, name=name)
    try:
        return segment(log_mel(wave, cfg).numpy(), cfg)
    except MemoryError:
        raise AudioError(
            f"{_label(source, name)}: out of memory computing its features; lower max_track_seconds"
        ) from None
