"""Melon Playlist Dataset (Ferraro et al., ICASSP 2021): ready mel-spectrograms, no audio.

``ROOT/arena_mel/<id//1000>/<id>.npy`` holds one song's mel-spectrogram ``(48, frames)``
(1876 frames, about 30 s, for most songs; some are shorter or longer), computed by the
dataset's authors at 16 kHz with a 512-point FFT, hop 256 and 48 mel bands up to 8 kHz, and
already log-scaled. The arrays are taken as they are: prepare only cuts them into segments
(their own scale is kept, and short ones are padded with their minimum). ``song_meta.json``
lists songs with ``song_gn_gnr_basket`` (genre codes) and ``genre_gn_all.json`` names the
codes. Following common practice, only songs with exactly one genre that is a major genre
(``GNxx00``; codes ending in other digits are detailed genres) are kept; the label is
``"<name> (<code>)"``, e.g. ``"발라드 (GN0100)"``. Melon has no official genre split, so the
default is a seeded stratified random split (``kfold`` works too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import Listing, Skipped, SplitOptions, Track, require_dir
from mrnet_ray.datasets.splits import seeded_split
from mrnet_ray.errors import UserError
from mrnet_ray.features import AudioError, segment
from mrnet_ray.text import printable

LAYOUT = "ROOT/arena_mel/<id//1000>/<id>.npy, ROOT/song_meta.json and ROOT/genre_gn_all.json"
MELON_FEATURE = FeatureConfig(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=48, f_max=8000.0, top_db=None
)
"""The spectrogram settings of Melon's arrays (segmenting fields come from the user)."""


def _read_json(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: not found; expected {LAYOUT} (unpack Melon's files into ROOT)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); download it again") from None


def mel_to_segments(path: str | os.PathLike[str], cfg: FeatureConfig) -> np.ndarray:
    """One ``.npy`` array ``(n_mels, frames)`` -> ``(n_segments, n_mels, segment_frames)``.

    Raises :class:`~mrnet_ray.features.AudioError` for unreadable or wrongly shaped arrays and
    for arrays longer than ``cfg.max_track_seconds``. The header's shape is checked on a
    memory map before anything is read, so a header that lies about it costs no memory.
    """
    label = printable(os.fspath(path))
    try:
        mel = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise AudioError(f"{label}: cannot read mel array ({e})") from None
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels or mel.shape[1] == 0:
        raise AudioError(f"{label}: array shape {mel.shape}; expected ({cfg.n_mels}, frames)")
    seconds = mel.shape[1] * cfg.hop_length / cfg.sample_rate
    if seconds > cfg.max_track_seconds:
        raise AudioError(
            f"{label}: {mel.shape[1]} frames ({seconds:,.0f} s), over the "
            f"{cfg.max_track_seconds:g} s limit (FeatureConfig.max_track_seconds)"
        )
    mel = np.array(mel)  # off the memory map: the file may change once this returns
    if not np.isfinite(mel).all():
        raise AudioError(f"{label}: array holds NaN or infinite values")
    return segment(mel, cfg, pad_value=float(mel.min()))


def list_tracks(root: Path, opts: SplitOptions) -> Listing:
    root = require_dir(root, LAYOUT).resolve()
    mode = opts.resolve("melon", ("random", "kfold"), "random")
    if not (root / "arena_mel").is_dir():
        raise UserError(f"--root {root}: expected {LAYOUT}; no arena_mel/ folder there")
    names = _read_json(root / "genre_gn_all.json")
    songs = _read_json(root / "song_meta.json")
    if not isinstance(names, dict) or not isinstance(songs, list):
        raise UserError(f"--root {root}: expected {LAYOUT}; the JSON files have other shapes")

    found: list[tuple[int, Path, str]] = []
    skipped: list[Skipped] = []
    for song in songs:
        sid = int(song["id"])
        path = root / "arena_mel" / str(sid // 1000) / f"{sid}.npy"
        codes = song.get("song_gn_gnr_basket") or []
        if len(codes) != 1 or not str(codes[0]).endswith("00") or codes[0] not in names:
            why = "no genre" if not codes else f"genres {codes} are not one major genre"
            skipped.append(Skipped(str(path), why))
        elif not path.is_file():
            skipped.append(Skipped(str(path), "mel array missing from arena_mel"))
        else:
            found.append((sid, path, f"{names[codes[0]]} ({codes[0]})"))
    if not found:
        raise UserError(f"--root {root}: no single-major-genre song has a mel array")

    labels = [label for *_, label in found]
    splits = seeded_split(labels, opts, mode)
    tracks = tuple(
        Track(str(sid), str(path), label, split)
        for (sid, path, label), split in zip(found, splits, strict=True)
    )
    return Listing(tracks, tuple(skipped), kind="mel", feature=MELON_FEATURE)
