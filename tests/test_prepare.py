"""prepare: real audio through real Ray Data into Parquet shards, and reading them back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mrnet_ray import features
from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError
from mrnet_ray.prepare import main
from mrnet_ray.shards import open_prepared, target
from mrnet_ray.shards.job import prepare


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
    """The stored rows are exactly features.audio_to_segments of the source file: every
    segment_hop_seconds in train, every eval_hop_seconds (overlapping) in valid and test."""
    prepared = open_prepared(tiny_prepared)
    checked = set()
    for split in ("train", "valid", "test"):
        cfg = tiny_feature.for_split(split)
        arrays = prepared.read_arrays(split)
        for track_id in ("low/low_01", "mid/mid_03"):  # 44.1 kHz stereo flac, 22 kHz stereo OGG
            rows = [i for i, t in enumerate(arrays.track_id) if t == track_id]
            if rows:
                source = next(audio_folder.root.glob(f"{track_id}.*"))
                expected = features.audio_to_segments(source, cfg)
                np.testing.assert_allclose(arrays.mel[rows], expected, atol=1e-4)
                checked.add(track_id)
    assert checked == {"low/low_01", "mid/mid_03"}


def test_gtzan_cli_rerun_is_a_noop_and_force_rebuilds(ray_session, gtzan_tree, tmp_path, capsys):
    out = tmp_path / "gtzan"
    argv = [
        "--dataset", "gtzan", "--root", str(gtzan_tree.root), "--out", str(out),
        "--sample-rate", "8000", "--n-mels", "16", "--hop-length", "128", "--n-fft", "256",
        "--segment-seconds", "0.5",
    ]  # fmt: skip
    main(argv)
    first = _manifest(out)
    assert first["feature"]["segment_hop_seconds"] == 0.5  # the hop follows --segment-seconds
    assert first["labels"] == ["blues", "jazz", "pop"]
    expected = Counter(gtzan_tree.splits.values())
    assert {s: c["tracks"] for s, c in first["counts"].items()} == expected
    # 2 s clips (126 frames): 4 segments of 0.5 s (31 frames) to train on, 6 overlapping ones
    # every 0.25 s (16 frames) to score
    per_track = {"train": 4, "valid": 6, "test": 6}
    assert {s: c["segments"] for s, c in first["counts"].items()} == {
        s: per_track[s] * c["tracks"] for s, c in first["counts"].items()
    }
    reasons = {Path(s["path"]).name: s["reason"] for s in first["skipped"]}
    assert reasons["jazz.00054.wav"].startswith("known corrupt file in common GTZAN copies (")
    files = sorted(p.name for p in out.rglob("*.parquet"))
    assert "tracks" in capsys.readouterr().out

    main(argv)
    assert "up to date" in capsys.readouterr().out
    assert _manifest(out) == first and sorted(p.name for p in out.rglob("*.parquet")) == files

    main([*argv, "--force"])
    assert "prepared gtzan" in capsys.readouterr().out
    rebuilt = _manifest(out)
    assert rebuilt["content_hash"] == first["content_hash"]
    assert sorted(p.name for p in out.rglob("*.parquet")) != files  # new shards were written
    assert not list(tmp_path.glob("gtzan.*"))  # no temporary or old sibling left behind


def test_changed_settings_rebuild_and_other_datasets_need_force(
    ray_session, gtzan_tree, melon_tree, tmp_path, capsys
):
    feature = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    out = prepare("gtzan", gtzan_tree.root, tmp_path / "p", feature=feature, limit=3)
    before = _manifest(out)
    assert sum(c["tracks"] for c in before["counts"].values()) == 3
    prepare("gtzan", gtzan_tree.root, out, feature=feature.replace(n_mels=12), limit=3)
    assert "inputs changed" in capsys.readouterr().out
    assert _manifest(out)["feature"]["n_mels"] == 12
    with pytest.raises(UserError, match="holds prepared gtzan data.*pass --force"):
        prepare("melon", melon_tree.root, out)
    not_ours = tmp_path / "notes"
    not_ours.mkdir()
    (not_ours / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a prepared directory"):
        prepare("gtzan", gtzan_tree.root, not_ours, feature=feature, force=True)
    assert (not_ours / "todo.txt").read_text() == "keep me"


def test_interrupted_run_leaves_no_complete_looking_dir(
    ray_session, gtzan_tree, tmp_path, monkeypatch
):
    out = tmp_path / "p"
    seen = {}

    def fail_at_manifest(self, directory, manifest):
        seen["staging"] = Path(directory)
        seen["shards"] = len(list(Path(directory).rglob("*.parquet")))
        seen["out_exists"] = out.exists()
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C just before the manifest

    monkeypatch.setattr(target.Target, "write_manifest", fail_at_manifest)
    feature = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    with pytest.raises(KeyboardInterrupt):
        prepare("gtzan", gtzan_tree.root, out, feature=feature, limit=4)
    assert seen["staging"].name.startswith("p.tmp-") and seen["shards"] > 0
    assert not seen["out_exists"] and not out.exists() and not seen["staging"].exists()
    with pytest.raises(UserError, match="does not exist; run `mrnet-ray prepare"):
        open_prepared(out)


def test_short_clips_skipped_fma_mp3s_and_ray_datasets(
    ray_session, audio_folder, fma_tree, tiny_feature, tmp_path
):
    skip = tiny_feature.replace(short_clip="skip")
    out = prepare("folder", audio_folder.root, tmp_path / "skip", feature=skip)
    reasons = {Path(s["path"]).name: s["reason"] for s in _manifest(out)["skipped"]}
    assert reasons["short.wav"] == "shorter than one segment (1 s) and short_clip='skip'"

    out = prepare("fma", fma_tree.root, tmp_path / "fma", feature=tiny_feature)
    m = _manifest(out)
    assert m["labels"] == ["Hip-Hop", "Rock"]
    reasons = {Path(s["path"]).stem: s["reason"] for s in m["skipped"]}
    assert "cannot decode audio" in reasons[f"{fma_tree.corrupt:06d}"]
    assert m["counts"]["train"]["tracks"] == 4 and m["counts"]["test"]["tracks"] == 2
    datasets = open_prepared(out).ray_datasets()
    assert datasets["train"].count() == m["counts"]["train"]["segments"]
    batch = datasets["valid"].take_batch(2, batch_format="numpy")
    assert batch["mel"].shape == (2, 32, 62) and batch["label"].dtype == np.int64


def test_melon_arrays_prepare_without_decoding(ray_session, melon_tree, tmp_path):
    feature = FeatureConfig(segment_seconds=1.0)
    out = prepare("melon", melon_tree.root, tmp_path / "melon", feature=feature)
    prepared = open_prepared(out)
    assert prepared.feature.n_mels == 48 and prepared.feature.sample_rate == 16000
    assert prepared.feature.segment_frames == 62
    m = prepared.manifest
    assert sum(c["tracks"] for c in m["counts"].values()) == len(melon_tree.kept)
    bad = next(s for s in m["skipped"] if Path(s["path"]).stem == str(melon_tree.bad_shape))
    assert "array shape (40," in bad["reason"]
    arrays = {s: prepared.read_arrays(s) for s in ("train", "valid", "test")}
    first = {}  # track id -> its first segment (rows sorted by track, then segment)
    for a in arrays.values():
        for i, t in enumerate(a.track_id):
            first.setdefault(t, a.mel[i])
    source = np.load(melon_tree.root / "arena_mel" / "0" / "0.npy")
    np.testing.assert_array_equal(first["0"], source[:, :62])  # taken as they are


def test_open_prepared_refuses_mismatch_and_incomplete_dirs(tiny_prepared, tiny_feature, tmp_path):
    prepared = open_prepared(tiny_prepared)
    prepared.check_features(tiny_feature)
    with pytest.raises(UserError, match=r"n_mels: prepared 32, asked 64.*re-run prepare"):
        prepared.check_features(tiny_feature.replace(n_mels=64, short_clip="skip"))
    with pytest.raises(UserError, match="short_clip: prepared 'pad', asked 'skip'"):
        prepared.check_features(tiny_feature.replace(short_clip="skip"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_prepared, copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(UserError, match="has no readable manifest.json"):
        open_prepared(copy)


def test_cli_bad_root_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mrnet_ray.prepare", "--dataset", "gtzan", "--root",
         str(tmp_path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: --root ") and result.stderr.count("\n") == 1
    assert "expected ROOT/genres/<genre>/<genre>.000NN.wav" in result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_to_s3_and_read_back(ray_session, gtzan_tree, s3_uri):
    """Object stores: shards written through pyarrow.fs; the manifest, last, marks completion."""
    feature = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    uri = s3_uri("prepared", "gtzan/tiny")
    assert prepare("gtzan", gtzan_tree.root, uri, feature=feature, limit=6) == uri
    prepared = open_prepared(uri)
    assert prepared.feature == feature and prepared.labels == ("blues", "jazz", "pop")
    for split in ("train", "valid", "test"):
        arrays = prepared.read_arrays(split)
        assert arrays.mel.shape == (prepared.segments(split), 16, 188)
    assert prepared.ray_datasets(["train"])["train"].count() == prepared.segments("train")
    assert prepare("gtzan", gtzan_tree.root, uri, feature=feature, limit=6) == uri  # no-op
    with pytest.raises(UserError, match="does not exist; run `mrnet-ray prepare"):
        open_prepared(s3_uri("prepared", "elsewhere"))
