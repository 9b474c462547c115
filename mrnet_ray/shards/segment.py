"""The Ray Data stage of ``prepare``: track rows in, Parquet shards and per-track outcomes out.

:class:`SegmentTracks` runs inside ``Dataset.map_batches`` on an actor pool: each actor builds
the frontend once (config, mel filterbank, one torch thread) and then takes batches of track
rows (``path`` as bytes, ``track_id``, ``track_index``, ``label``, ``label_name``, ``split``).
Each batch's segments go straight into that batch's own shard per split,
``<staging>/<split>/<run>-<first track_index of the batch>.parquet``
(:mod:`~mrnet_ray.shards.writer`), so they never travel through the object store. The name
depends on the batch alone, not on which of its files decode: a batch retried after its actor
died rewrites the same files, whatever the first attempt left.

A file that fails to decode, is longer than ``max_track_seconds`` (by its header or its
data), or is too short under ``short_clip="skip"``, yields no rows; its reason goes to the
:class:`~mrnet_ray.shards.ledger.Ledger` actor together with every track's segment count, so
one bad file never fails the job and the manifest can still report it. The map itself
returns no rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
import torch

from mrnet_ray.config import FeatureConfig
from mrnet_ray.features import AudioError, audio_to_segments, log_mel
from mrnet_ray.shards.writer import SCALAR_COLUMNS, ShardWriter, rows_per_group
from mrnet_ray.text import printable


def _segments_of(path: str, cfg: FeatureConfig, kind: str) -> np.ndarray:
    if kind == "mel":
        from mrnet_ray.datasets.melon import mel_to_segments

        return mel_to_segments(path, cfg)
    return audio_to_segments(path, cfg)


class SegmentTracks:
    """Track rows -> shards under ``staging`` on ``fs``; outcomes to ``ledger`` (a ``Ledger``
    actor handle). ``run`` names this run's files, so a rebuild never reuses a name."""

    def __init__(
        self,
        feature: dict[str, Any],
        kind: str,
        known_faults: dict[str, str],
        ledger: Any,
        staging: str,
        fs: pafs.FileSystem,
        run: str,
    ) -> None:
        torch.set_num_threads(1)  # parallelism comes from the actors; one thread each
        self.cfg = FeatureConfig.from_dict(feature)
        self.kind, self.known_faults, self.ledger = kind, known_faults, ledger
        self.staging, self.fs, self.run = staging, fs, run
        self.group_rows = rows_per_group(self.cfg.n_mels, self.cfg.segment_frames)
        if kind == "audio":  # build the transforms (and torch's FFT plans) before the first batch
            log_mel(np.zeros(self.cfg.n_fft, np.float32), self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        writers: dict[str, ShardWriter] = {}
        counts: dict[int, int] = {}
        skipped: dict[int, str] = {}
        name = f"{self.run}-{int(batch['track_index'][0]):07d}.parquet"
        try:
            for i in range(len(batch["path"])):
                index = int(batch["track_index"][i])
                split = str(batch["split"][i])
                path = os.fsdecode(bytes(batch["path"][i]))
                segs = self._track(path, self.cfg.for_split(split), index, skipped)
                if segs is None:
                    continue
                counts[index] = len(segs)
                if len(segs) == 0:
                    skipped[index] = (
                        f"shorter than one segment ({self.cfg.segment_seconds:g} s) "
                        "and short_clip='skip'"
                    )
                    continue
                if split not in writers:
                    shard = f"{self.staging}/{split}/{name}"
                    writers[split] = ShardWriter(self.fs, shard, self.group_rows)
                track = {c: batch[c][i] for c in SCALAR_COLUMNS if c != "segment"}
                writers[split].add(track, segs)
        except BaseException:
            for writer in writers.values():
                writer.abort()  # no shard that looks complete from a failed batch
            raise
        for writer in writers.values():
            writer.close()
        # Only once the shards are complete: a batch whose actor died is retried (and recorded
        # then); one that raised fails the job, whose staging goes.
        ray.get(self.ledger.record.remote(counts, skipped))
        yield from ()  # no rows: the shards are the output

    def _track(
        self, path: str, cfg: FeatureConfig, index: int, skipped: dict[int, str]
    ) -> np.ndarray | None:
        """``(n_segments, n_mels, segment_frames)``, or None with the reason in ``skipped``."""
        try:
            return _segments_of(path, cfg, self.kind)
        except AudioError as e:
            # The manifest names the path already.
            reason = str(e).removeprefix(f"{printable(path)}: ")
            known = self.known_faults.get(path)
            skipped[index] = f"{known} ({reason})" if known else reason
            return None
