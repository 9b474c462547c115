"""Dataset adapters on tiny trees in each real layout, and the split functions (no Ray)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fixtures.audio import write_clip

from mrnet_ray.datasets import ADAPTERS, SplitOptions, adapter, gtzan, melon
from mrnet_ray.datasets.splits import kfold_split, random_split
from mrnet_ray.errors import UserError

# ---- splits ---------------------------------------------------------------------------------


def test_random_split_is_stratified_seeded_and_group_aware():
    labels = ["a"] * 40 + ["b"] * 20
    groups = [f"piece{i // 4}" for i in range(60)]  # 4 clips per piece, 15 pieces
    splits = random_split(labels, 0.2, 0.2, seed=1, groups=groups)
    assert splits == random_split(labels, 0.2, 0.2, seed=1, groups=groups)
    assert splits != random_split(labels, 0.2, 0.2, seed=2, groups=groups)
    by_group: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())  # no piece straddles splits
    # 10 pieces of a -> 2 valid, 2 test; 5 pieces of b -> 1 and 1
    assert Counter(zip(labels, splits, strict=True)) == {
        ("a", "train"): 24, ("a", "valid"): 8, ("a", "test"): 8,
        ("b", "train"): 12, ("b", "valid"): 4, ("b", "test"): 4,
    }  # fmt: skip


def test_random_split_keeps_training_data_in_tiny_classes():
    splits = random_split(["a", "b", "b"], 0.3, 0.3, seed=0)
    assert splits[0] == "train" and sorted(splits[1:]) == ["train", "valid"]
    assert Counter(random_split(["a"] * 3, 0.1, 0.1, seed=0)) == {"train": 1, "valid": 1, "test": 1}


def test_kfold_split_each_item_is_test_exactly_once():
    labels = list("aaaaabbbbbcccccc")
    groups = [f"g{i // 2}" for i in range(len(labels))]
    test_count = np.zeros(len(labels), int)
    for fold in range(4):
        splits = kfold_split(labels, 4, fold, seed=3, groups=groups)
        assert splits == kfold_split(labels, 4, fold, seed=3, groups=groups)
        test_count += [s == "test" for s in splits]
        valid_next = kfold_split(labels, 4, (fold + 1) % 4, seed=3, groups=groups)
        assert [s == "valid" for s in splits] == [s == "test" for s in valid_next]
    assert (test_count == 1).all()


# ---- registry and options -------------------------------------------------------------------


def test_registry_and_unknown_dataset():
    assert set(ADAPTERS) == {"gtzan", "fma", "melon", "folder", "demo"}
    with pytest.raises(UserError, match="unknown dataset 'gztan'; known datasets: demo, fma"):
        adapter("gztan")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"mode": "stratified"}, "--split-mode stratified"),
        ({"valid_fraction": 0.6, "test_fraction": 0.5}, "leave no training data"),
        ({"n_folds": 5, "fold": 5}, "--fold 5"),
        ({"mode": "file"}, "needs --split-file"),
    ],
)
def test_split_options_validation(kwargs, words):
    with pytest.raises(UserError, match=words):
        SplitOptions(**kwargs)


def test_modes_that_do_not_apply_are_refused(gtzan_tree, audio_folder):
    with pytest.raises(UserError, match="official does not apply to gtzan"):
        adapter("gtzan")(gtzan_tree.root, SplitOptions(mode="official"))
    with pytest.raises(UserError, match="--subset only applies to fma"):
        adapter("folder")(audio_folder.root, SplitOptions(subset="small"))


def test_listing_limit_deals_tracks_over_splits_and_labels(audio_folder):
    listing = adapter("folder")(audio_folder.root, SplitOptions(seed=0))
    picked = listing.limit(6)
    assert len(picked.tracks) == 6 and picked.skipped == listing.skipped
    assert len({t.label for t in picked.tracks}) == 3
    assert {t.split for t in picked.tracks} == {"train", "valid", "test"}


# ---- folder ---------------------------------------------------------------------------------


def test_folder_lists_every_format_and_reports_empty_label(audio_folder):
    listing = adapter("folder")(audio_folder.root, SplitOptions(seed=0))
    assert listing.labels == ("high", "low", "mid") and listing.kind == "audio"
    assert len(listing.tracks) == 27  # 8 good + 1 bad per class; bad ones fail in prepare
    assert {Path(t.path).suffix for t in listing.tracks} >= {".mp3", ".OGG", ".flac", ".wav"}
    [skip] = listing.skipped
    assert skip.path == str(audio_folder.empty_label)
    assert skip.reason.startswith("label folder has no audio")
    assert {t.track_id for t in listing.tracks} >= {"low/low_00", "high/short"}


def test_folder_split_file_and_group_regex(audio_folder, tmp_path):
    csv = tmp_path / "split.csv"
    csv.write_text("path,split\nlow/low_00.wav,test\nmid/mid_01.flac,valid\nhigh/short.wav,train\n")
    listing = adapter("folder")(audio_folder.root, SplitOptions(split_file=str(csv)))
    assert {(t.track_id, t.split) for t in listing.tracks} == {
        ("low/low_00", "test"), ("mid/mid_01", "valid"), ("high/short", "train")
    }  # fmt: skip
    assert sum("not listed in split file" in s.reason for s in listing.skipped) == 24

    # clips named <label>_<nn>: key them by nn's parity, so two groups per class
    grouped = adapter("folder")(
        audio_folder.root, SplitOptions(group_regex=r"_\d(\d)$", valid_fraction=0.3)
    )
    by_group: dict[str | None, set[str]] = {}
    for t in grouped.tracks:
        by_group.setdefault(t.group, set()).add(t.split)
    assert all(len(v) == 1 for k, v in by_group.items() if k is not None)


def test_folder_bad_split_file_and_bad_roots(audio_folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,set\nlow/low_00.wav,test\n")
    with pytest.raises(UserError, match="expected exactly path,split"):
        adapter("folder")(audio_folder.root, SplitOptions(split_file=str(bad)))
    bad.write_text("path,split\nlow/low_00.wav,holdout\n")
    with pytest.raises(UserError, match="line 2: split 'holdout'"):
        adapter("folder")(audio_folder.root, SplitOptions(split_file=str(bad)))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.wav").touch()
    with pytest.raises(UserError, match=r"expected ROOT/<label>/\*.*found a.wav"):
        adapter("folder")(tmp_path / "flat", SplitOptions())
    with pytest.raises(UserError, match="found nothing there"):
        adapter("folder")(tmp_path / "missing", SplitOptions())
    with pytest.raises(UserError, match="matches no file name"):
        adapter("folder")(audio_folder.root, SplitOptions(group_regex="^zzz(.)"))


# ---- GTZAN ----------------------------------------------------------------------------------


def test_gtzan_filtered_split_matches_the_shipped_lists(gtzan_tree):
    listing = adapter("gtzan")(gtzan_tree.root, SplitOptions())
    got = {f"{t.label}/{t.track_id}.wav": t.split for t in listing.tracks}
    assert got == {**gtzan_tree.splits, gtzan_tree.corrupt: "train"}
    reasons = Counter(s.reason.split(" (")[0] for s in listing.skipped)
    assert reasons["left out of the fault-filtered split"] == len(gtzan_tree.unlisted)
    # the other listed clips of the three genres present are reported missing, no others
    assert reasons["listed in the fault-filtered split but missing"] == sum(
        g in ("blues", "jazz", "pop") for g in (k.split("/")[0] for k in gtzan.filtered_split())
    ) - len(got)
    assert list(listing.known_faults.values()) == ["known corrupt file in common GTZAN copies"]


def test_gtzan_other_layouts_and_random_kfold_modes(gtzan_tree, tmp_path):
    kaggle = tmp_path / "kaggle"
    shutil.copytree(gtzan_tree.root / "genres", kaggle / "genres_original")
    (kaggle / "features_30_sec.csv").write_text("filename\n")
    for root in (kaggle, kaggle / "genres_original"):
        listing = adapter("gtzan")(root, SplitOptions(mode="random", seed=0))
        assert len(listing.tracks) == 15 and not listing.skipped
        assert Counter(t.label for t in listing.tracks) == {"blues": 4, "jazz": 6, "pop": 5}
    folds = adapter("gtzan")(kaggle, SplitOptions(mode="kfold", n_folds=4, fold=2))
    assert Counter(t.split for t in folds.tracks) == {"train": 8, "valid": 3, "test": 4}


def test_gtzan_wrong_layout_says_what_was_expected(audio_folder, tmp_path):
    with pytest.raises(UserError, match=r"expected ROOT/genres/<genre>.*found high/, low/"):
        adapter("gtzan")(audio_folder.root, SplitOptions())
    (tmp_path / "genres" / "blues").mkdir(parents=True)
    (tmp_path / "genres" / "lofi").mkdir()
    with pytest.raises(UserError, match=r"holds other folders too \(lofi\)"):
        adapter("gtzan")(tmp_path, SplitOptions())


# ---- FMA ------------------------------------------------------------------------------------


def test_fma_tracks_csv_has_the_real_header(fma_tree):
    lines = (fma_tree.root / "fma_metadata" / "tracks.csv").read_text().splitlines()
    assert lines[0].startswith(",album,set,set,track")
    assert lines[1].startswith(",title,split,subset,genre_top")
    assert lines[2].startswith("track_id,")


def test_fma_subsets_official_split_and_skips(fma_tree):
    small = adapter("fma")(fma_tree.root, SplitOptions())
    expected = {t: v for t, v in fma_tree.tracks.items() if v["subset"] == "small" and v["genre"]}
    del expected[fma_tree.missing_audio]
    official = {"training": "train", "validation": "valid", "test": "test"}
    assert {(int(t.track_id), t.label, t.split) for t in small.tracks} == {
        (t, v["genre"], official[v["split"]]) for t, v in expected.items()
    }
    track = small.tracks[0]
    assert track.path.endswith(f"fma_small/{int(track.track_id) // 1000:03d}/{track.track_id}.mp3")
    reasons = {Path(s.path).stem: s.reason for s in small.skipped}
    assert reasons[f"{fma_tree.no_genre:06d}"].startswith("no top-level genre")
    assert reasons[f"{fma_tree.missing_audio:06d}"].startswith("audio file missing")

    medium = adapter("fma")(fma_tree.root, SplitOptions(subset="medium", mode="random"))
    assert len(medium.tracks) == len(small.tracks) + 8  # medium includes small
    assert any("fma_medium" in t.path for t in medium.tracks)
    large = adapter("fma")(fma_tree.root, SplitOptions(subset="large"))
    assert len(large.skipped) == len(small.skipped) + 1  # the large-only track has no audio


def test_fma_missing_metadata_names_the_fix(fma_tree, tmp_path):
    (tmp_path / "fma_small").mkdir()
    with pytest.raises(UserError, match=r"tracks.csv: not found; download fma_metadata.zip"):
        adapter("fma")(tmp_path, SplitOptions())
    with pytest.raises(UserError, match="no fma_<subset>/ audio folder"):
        adapter("fma")(fma_tree.root / "fma_metadata", SplitOptions())


# ---- Melon ----------------------------------------------------------------------------------


def test_melon_keeps_single_major_genre_songs(melon_tree):
    listing = adapter("melon")(melon_tree.root, SplitOptions())
    assert listing.kind == "mel" and listing.feature == melon.MELON_FEATURE
    assert listing.feature.n_mels == 48 and listing.feature.f_max == 8000
    kept = {int(t.track_id) for t in listing.tracks}
    assert kept == set(melon_tree.kept) | {melon_tree.bad_shape}
    assert listing.labels == ("댄스 (GN0200)", "랩/힙합 (GN0300)", "발라드 (GN0100)")
    reasons = {Path(s.path).stem: s.reason for s in listing.skipped}
    assert "not one major genre" in reasons[str(melon_tree.multi_genre)]
    assert reasons[str(melon_tree.missing_array)] == "mel array missing from arena_mel"
    assert reasons["9004"] == "no genre"


def test_melon_arrays_become_segments_as_they_are(melon_tree):
    cfg = melon.MELON_FEATURE.replace(segment_seconds=1.0, segment_hop_seconds=1.0)
    path = melon_tree.root / "arena_mel" / "0" / "0.npy"
    segs = melon.mel_to_segments(path, cfg)
    assert segs.shape == (1876 // 62, 48, 62)
    np.testing.assert_array_equal(segs[1], np.load(path)[:, 62:124])
    bad = melon_tree.root / "arena_mel" / "9" / f"{melon_tree.bad_shape}.npy"
    with pytest.raises(melon.AudioError, match=r"array shape \(40, \d+\); expected \(48, frames\)"):
        melon.mel_to_segments(bad, cfg)


def test_melon_and_audio_roots_are_not_confused(melon_tree, tmp_path):
    write_clip(tmp_path / "x" / "a.wav", 440.0, 0.5, 16000)
    with pytest.raises(UserError, match="no arena_mel/ folder"):
        adapter("melon")(tmp_path, SplitOptions())
