"""Open a prepared directory (``python -m mrnet_ray.prepare`` writes it) and read its splits.

``DIR/manifest.json`` plus ``DIR/<split>/*.parquet`` with one row per segment: ``track_id``,
``track_index``, ``segment``, ``label``, ``label_name``, ``split`` and ``mel`` (a float32
``(n_mels, frames)`` tensor). ``DIR`` may be a local path or an object-store URI
(``s3://bucket/prefix``): everything goes through ``pyarrow.fs``. On object stores the splits
are under the prefix the manifest's ``shards`` names (``DIR/<shards>/<split>/``), so that a
re-prepare can write new ones beside them (:mod:`~mrnet_ray.shards.target`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrnet_ray import storage
from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError
from mrnet_ray.shards.manifest import FORMAT, MANIFEST

__all__ = ["Prepared", "SplitArrays", "open_prepared"]

COLUMNS = ("track_id", "track_index", "segment", "label", "label_name", "split", "mel")


@dataclass(frozen=True)
class SplitArrays:
    """One split in memory, rows sorted by ``(track_index, segment)``."""

    mel: np.ndarray
    """float32 ``(n, n_mels, frames)``."""
    label: np.ndarray
    """int64 ``(n,)``."""
    track_index: np.ndarray
    """int64 ``(n,)``: segments of one track share it (for track-level scores)."""
    track_id: list[str]
    segment: np.ndarray | None = None
    """int64 ``(n,)``: the segment's place in its track (None when not needed)."""


@dataclass(frozen=True)
class Prepared:
    """An opened prepared directory."""

    path: str
    """The directory as given (local path or URI)."""
    manifest: dict[str, Any]
    feature: FeatureConfig
    labels: tuple[str, ...]
    content_hash: str
    shards: str = ""
    """The prefix under ``path`` that holds the splits ("" for the split folders themselves)."""

    def split_location(self, split: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem and the folder of one split's Parquet files."""
        fs, path, _ = storage.resolve(self.path)
        return fs, "/".join(p for p in (path, self.shards, split) if p)

    def check_features(self, expected: FeatureConfig) -> None:
        """UserError naming the fields where this directory's settings differ from ``expected``."""
        ours, theirs = self.feature.to_dict(), expected.to_dict()
        diff = [k for k in ours if ours[k] != theirs[k]]
        if diff:
            pairs = ", ".join(f"{k}: prepared {ours[k]!r}, asked {theirs[k]!r}" for k in diff)
            raise UserError(
                f"{self.path}: prepared with other feature settings ({pairs}); re-run prepare "
                "with those settings into another --out, or drop the differing flags"
            )

    def segments(self, split: str) -> int:
        return int(self.manifest["counts"].get(split, {}).get("segments", 0))

    def ray_datasets(self, splits: Sequence[str] = ("train", "valid")) -> dict[str, Any]:
        """``{split: ray.data.Dataset}`` read lazily from the shards (needs Ray)."""
        import ray.data

        out = {}
        for split in splits:
            if self.segments(split) == 0:
                raise UserError(
                    f"{self.path}: split {split!r} holds no segments; re-run prepare with a "
                    "split mode or fractions that put tracks there"
                )
            fs, folder = self.split_location(split)
            out[split] = ray.data.read_parquet(folder, filesystem=fs)
        return out

    def read_arrays(self, split: str) -> SplitArrays:
        """One split as numpy arrays, without Ray (evaluation, benchmarks, tests)."""
        parts = list(self.iter_arrays(split, sort=False))
        if not parts:
            n_mels, frames = self.feature.n_mels, self.feature.segment_frames
            return SplitArrays(
                np.empty((0, n_mels, frames), np.float32),
                np.empty(0, np.int64),
                np.empty(0, np.int64),
                [],
            )
        return _sorted(
            SplitArrays(
                np.concatenate([p.mel for p in parts]),
                np.concatenate([p.label for p in parts]),
                np.concatenate([p.track_index for p in parts]),
                [t for p in parts for t in p.track_id],
                np.concatenate([p.segment for p in parts]),
            )
        )

    def iter_arrays(self, split: str, sort: bool = True) -> Iterator[SplitArrays]:
        """One split, one Parquet file at a time (each sorted by track and segment when
        ``sort``): what reads a split too large to hold."""
        fs, folder = self.split_location(split)
        n_mels, frames = self.feature.n_mels, self.feature.segment_frames
        files = sorted(
            info.path
            for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
            if info.path.endswith(".parquet")
        )
        for f in files:
            table = pq.read_table(f, filesystem=fs, columns=list(COLUMNS))
            mel = table.column("mel").combine_chunks()
            if isinstance(mel, pa.ExtensionArray):  # Ray's tensor type, when ray.data is loaded
                mel = mel.storage
            values = mel.flatten().to_numpy(zero_copy_only=False)
            part = SplitArrays(
                mel=values.astype(np.float32, copy=False).reshape(len(table), n_mels, frames),
                label=table.column("label").to_numpy().astype(np.int64),
                track_index=table.column("track_index").to_numpy().astype(np.int64),
                track_id=table.column("track_id").to_pylist(),
                segment=table.column("segment").to_numpy().astype(np.int64),
            )
            yield _sorted(part) if sort else part


def _sorted(arrays: SplitArrays) -> SplitArrays:
    """Rows ordered by ``(track_index, segment)``."""
    order = np.lexsort((arrays.segment, arrays.track_index))
    return SplitArrays(
        arrays.mel[order],
        arrays.label[order],
        arrays.track_index[order],
        [arrays.track_id[i] for i in order],
        arrays.segment[order],
    )


def open_prepared(path: str | os.PathLike[str]) -> Prepared:
    """Open ``path``; UserError if it is missing, incomplete or of another format."""
    fs, inner, uri = storage.resolve(path)
    manifest = storage.read_json(fs, f"{inner}/{MANIFEST}")
    if not isinstance(manifest, dict):
        state = (
            "does not exist"
            if fs.get_file_info(inner).type == pafs.FileType.NotFound
            else (f"has no readable {MANIFEST} (incomplete or not a prepared directory)")
        )
        raise UserError(f"{uri}: {state}; run `mrnet-ray prepare --out {uri} ...` first")
    if manifest.get("format") != FORMAT:
        raise UserError(
            f"{uri}: prepared-data format {manifest.get('format')!r}, this version reads "
            f"{FORMAT}; re-run prepare with --force"
        )
    try:
        feature = FeatureConfig.from_dict(manifest["feature"])
        labels = tuple(manifest["labels"])
        digest = str(manifest["content_hash"])
        shards = str(manifest.get("shards", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{uri}/{MANIFEST}: malformed ({e}); re-run prepare --force") from None
    local = isinstance(fs, pafs.LocalFileSystem)
    if "/" in shards or shards.startswith("."):  # one folder of DIR, nothing outside it
        raise UserError(f"{uri}/{MANIFEST}: shards {shards!r} is not a folder of it; prepare again")
    return Prepared(inner if local else uri, manifest, feature, labels, digest, shards)
