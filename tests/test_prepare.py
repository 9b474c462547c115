"""prepare: real audio through real Ray Data into Parquet shards, and reading them back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mrnet_ray import features
from mrnet_ray.data import open_prepared


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def test_tiny_prepared_layout_and_counts(tiny_prepared, audio_folder, tiny_feature):
    m = _manifest(tiny_prepared)
    assert m["format"] == 1 and m["dataset"] == "folder"
    assert m["labels"] == ["high", "low", "mid"]
    assert m["feature"] == tiny_feature.to_dict()
    prepared = open_prepared(tiny_prepared)
    total_tracks = 0
    for split in ("train", "valid", "test"):
        files = sorted((tiny_prepared / split).glob("*.parquet"))
        assert files, split
        table = pq.read_table(files[0])
        assert table.column_names[:6] == [
            "track_id", "track_index", "segment", "label", "label_name", "split"
        ]  # fmt: skip
        arrays = prepared.read_arrays(split)
        # (n, n_mels, segment_frames) float32 with one label per row
        assert arrays.mel.shape[1:] == (32, 62) and arrays.mel.dtype == np.float32
        assert arrays.mel.shape[0] == len(arrays.label) == m["counts"][split]["segments"]
        assert len(set(arrays.track_index.tolist())) == m["counts"][split]["tracks"]
        names = {m["labels"][i] for i in arrays.label}
        assert names == {k for k, v in m["counts"][split]["per_class"].items() if v}
        total_tracks += m["counts"][split]["tracks"]
    # 27 listed files, 2 undecodable; the short clip is padded, the empty label folder reported
    assert total_tracks == 25
    reasons = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "silence"}
    assert "cannot decode" in reasons["corrupt.wav"]
    assert "empty file" in reasons["empty.wav"]
    assert "no audio" in reasons["silence"]


def test_segments_equal_direct_frontend(tiny_prepared, audio_folder, tiny_feature):
    """The stored rows are exactly features.audio_to_segments of the source file."""
    prepared = open_prepared(tiny_prepared)
    checked = set()
    for split in ("train", "valid", "test"):
        arrays = prepared.read_arrays(split)
        for track_id in ("low/low_01", "mid/mid_03"):  # 44.1 kHz stereo flac, 22 kHz stereo OGG
            rows = [i for i, t in enumerate(arrays.track_id) if t == track_id]
            if rows:
                source = next(audio_folder.root.glob(f"{track_id}.*"))
                expected = features.audio_to_segments(source, tiny_feature)
                np.testing.assert_allclose(arrays.mel[rows], expected, atol=1e-4)
                checked.add(track_id)
    assert checked == {"low/low_01", "mid/mid_03"}
