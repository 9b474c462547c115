"""The Ray Data stage of ``prepare``: track rows in, one row per log-mel segment out.

:func:`segment_tracks` runs inside ``Dataset.map_batches`` on numpy batches of track rows
(``path`` as bytes, ``track_id``, ``track_index``, ``label``, ``label_name``, ``split``) and
returns segment rows (the prepared directory's columns, ``mel`` as ``(n, n_mels, segment_frames)``).
A file that fails to decode, is longer than ``max_track_seconds`` (by its header or its
data), or is too short under ``short_clip="skip"``, yields no rows; its reason goes to the
:class:`~mrnet_ray.shards.ledger.Ledger` actor together with every track's segment count, so
one bad file never fails the job and the manifest can still report it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import torch

from mrnet_ray.config import FeatureConfig
from mrnet_ray.features import AudioError, audio_to_segments
from mrnet_ray.text import printable

TRACK_COLUMNS = ("path", "track_id", "track_index", "label", "label_name", "split")


def _segments_of(path: str, cfg: FeatureConfig, kind: str) -> np.ndarray:
    if kind == "mel":
        from mrnet_ray.datasets.melon import mel_to_segments

        return mel_to_segments(path, cfg)
    return audio_to_segments(path, cfg)


def segment_tracks(
    batch: dict[str, np.ndarray],
    feature: dict[str, Any],
    kind: str,
    known_faults: dict[str, str],
    ledger: Any,
) -> Iterator[dict[str, np.ndarray]]:
    """Track rows -> segment rows; reports outcomes to ``ledger`` (a ``Ledger`` actor handle)."""
    torch.set_num_threads(1)  # parallelism comes from Ray tasks; one thread each avoids thrash
    cfg = FeatureConfig.from_dict(feature)
    columns: dict[str, list[Any]] = {c: [] for c in TRACK_COLUMNS[1:]}
    columns["segment"] = []
    mels: list[np.ndarray] = []
    counts: dict[int, int] = {}
    skipped: dict[int, str] = {}
    for i in range(len(batch["path"])):
        # The path travels as bytes (an Arrow binary column holds any file name).
        path, index = os.fsdecode(bytes(batch["path"][i])), int(batch["track_index"][i])
        try:
            cut = cfg.for_split(str(batch["split"][i]))  # scored splits: overlapping
            segs = _segments_of(path, cut, kind)  # (n_segments, n_mels, segment_frames)
        except AudioError as e:
            # The manifest names the path already.
            reason = str(e).removeprefix(f"{printable(path)}: ")
            known = known_faults.get(path)
            skipped[index] = f"{known} ({reason})" if known else reason
            continue
        counts[index] = len(segs)
        if len(segs) == 0:
            skipped[index] = (
                f"shorter than one segment ({cfg.segment_seconds:g} s) and short_clip='skip'"
            )
            continue
        for name in TRACK_COLUMNS[1:]:
            columns[name] += [batch[name][i]] * len(segs)
        columns["segment"] += range(len(segs))
        mels.append(segs)
    ray.get(ledger.record.remote(counts, skipped))
    if not mels:
        return  # no rows: Ray cannot build an empty tensor column, so yield no batch at all
    yield {
        "track_id": np.asarray(columns["track_id"], dtype=np.str_),
        "track_index": np.asarray(columns["track_index"], dtype=np.int64),
        "segment": np.asarray(columns["segment"], dtype=np.int32),
        "label": np.asarray(columns["label"], dtype=np.int64),
        "label_name": np.asarray(columns["label_name"], dtype=np.str_),
        "split": np.asarray(columns["split"], dtype=np.str_),
        "mel": np.concatenate(mels),  # (n_rows, n_mels, segment_frames)
    }
