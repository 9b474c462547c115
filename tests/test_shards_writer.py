"""prepare's map writes its own shards: row groups sized for training reads, files that read
back as ``write_parquet``'s did, and a batch retried after its actor died rewriting the same
files (shards/writer.py, shards/segment.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from mrnet_ray.datasets import SPLITS, SplitOptions
from mrnet_ray.shards import job, open_prepared
from mrnet_ray.shards.ledger import Ledger
from mrnet_ray.shards.segment import SegmentTracks
from mrnet_ray.shards.writer import ShardWriter, rows_per_group

OPTS = SplitOptions(seed=0, valid_fraction=0.2, test_fraction=0.2)  # as tiny_prepared


def track(i: int, split: str = "train") -> dict:
    return {"track_id": f"t{i}", "track_index": i, "label": i % 3, "label_name": f"c{i % 3}",
            "split": split}  # fmt: skip


def test_row_groups_fill_to_the_size_and_end_at_tracks(tmp_path):
    assert rows_per_group(128, 129) == 254  # 16 MiB of mel at the default features
    path = tmp_path / "a.parquet"
    writer = ShardWriter(pafs.LocalFileSystem(), str(path), group_rows=10)
    rng = np.random.default_rng(0)
    mels = [rng.standard_normal((n, 4, 5)).astype(np.float32) for n in (4, 4, 4, 7, 1)]
    for i, mel in enumerate(mels):  # (n_segments, n_mels, frames)
        writer.add(track(i), mel)
    assert path.exists()  # the first group (12 rows, three tracks) is on disk already
    writer.close()
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [12, 8]
    table = pq.read_table(path)
    assert table.column("track_index").to_pylist() == [i for i, m in enumerate(mels) for _ in m]
    assert table.column("segment").to_pylist() == [s for m in mels for s in range(len(m))]
    mel = table.column("mel").combine_chunks()
    assert mel.type.shape == (4, 5)  # Ray's tensor type, one (n_mels, frames) per row
    values = mel.storage.flatten().to_numpy().reshape(-1, 4, 5)
    np.testing.assert_array_equal(values, np.concatenate(mels))


def test_a_writer_given_nothing_leaves_no_file_and_abort_removes_its_file(tmp_path):
    fs = pafs.LocalFileSystem()
    ShardWriter(fs, str(tmp_path / "empty.parquet"), group_rows=4).close()
    writer = ShardWriter(fs, str(tmp_path / "torn.parquet"), group_rows=4)
    writer.add(track(0), np.zeros((6, 4, 5), np.float32))  # a group written, the file opened
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_retried_batch_rewrites_its_files_and_its_outcomes(ray_session, audio_folder, tmp_path):
    """A batch spanning two splits, with an undecodable file, run twice on one actor's object
    (as when its actor died after a torn write): the same two files, the same contents."""
    from mrnet_ray.config import FeatureConfig

    cfg = FeatureConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32,
                        segment_seconds=1.0)  # fmt: skip
    sources = [audio_folder.corrupt, *audio_folder.good["low"][:2], audio_folder.good["mid"][0]]
    rows = [track(10 + i, "train" if i < 2 else "valid") for i in range(len(sources))]
    batch = {c: np.array([r[c] for r in rows]) for c in rows[0]}
    batch["path"] = np.array([os.fsencode(p) for p in sources], dtype=object)
    for split in SPLITS:
        (tmp_path / split).mkdir()
    ledger = Ledger.remote()
    segment = SegmentTracks(cfg.to_dict(), "audio", {}, ledger, str(tmp_path),
                            pafs.LocalFileSystem(), "run1")  # fmt: skip
    torn = tmp_path / "valid" / "run1-0000010.parquet"  # named for the batch's first track
    torn.write_bytes(b"PAR1 cut short")
    assert list(segment(batch)) == []  # no rows: the shards are the output
    shards = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
    assert shards == [Path("train/run1-0000010.parquet"), Path("valid/run1-0000010.parquet")]
    first = {p: pq.read_table(tmp_path / p) for p in shards}
    assert first[shards[0]].column("track_index").unique().to_pylist() == [11]
    assert first[shards[1]].column("track_index").unique().to_pylist() == [12, 13]
    list(segment(batch))  # the retry
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")) == shards
    for p in shards:
        assert pq.read_table(tmp_path / p).equals(first[p])
    counts, skipped = ray_session.get(ledger.result.remote())
    assert set(counts) == {11, 12, 13} and all(n > 0 for n in counts.values())
    assert list(skipped) == [10] and "cannot decode" in skipped[10]
    ray_session.kill(ledger)


class DiesOnce(SegmentTracks):
    """On the first batch of training tracks, tears that batch's shard and kills its own
    process: what an actor killed mid-write leaves. ``MARK`` (set before the job) says it did."""

    MARK = ""

    def __call__(self, batch):
        if batch["split"][0] == "train" and not os.path.exists(self.MARK):
            Path(self.MARK).write_text("died")
            name = f"{self.run}-{int(batch['track_index'][0]):07d}.parquet"
            Path(self.staging, "train", name).write_bytes(b"PAR1 torn")
            os._exit(1)
        yield from super().__call__(batch)


@pytest.mark.slow
def test_an_actor_killed_mid_batch_is_retried_into_the_same_files(
    ray_session, audio_folder, tiny_feature, tiny_prepared, tmp_path, monkeypatch
):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors load DiesOnce
    monkeypatch.setattr(DiesOnce, "MARK", str(tmp_path / "died"))
    monkeypatch.setattr(job, "SegmentTracks", DiesOnce)
    monkeypatch.setattr(job, "TRACKS_PER_BATCH", 8)  # several batches, on two actors
    try:
        out = job.prepare("folder", audio_folder.root, tmp_path / "p", OPTS, tiny_feature)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (tmp_path / "died").exists()
    redone, reference = open_prepared(out), open_prepared(tiny_prepared)
    assert redone.manifest["counts"] == reference.manifest["counts"]
    assert redone.manifest["skipped"] == reference.manifest["skipped"]
    for split in SPLITS:  # every file whole (the torn one rewritten), every segment once
        got, want = redone.read_arrays(split), reference.read_arrays(split)
        np.testing.assert_array_equal(got.mel, want.mel)
        assert got.track_id == want.track_id
        names = [p.name for p in (Path(out) / split).glob("*.parquet")]
        assert len({n.split("-")[0] for n in names}) == 1  # one run's files
