"""The linear baseline every exported model is measured against: log-mel statistics + logistic
regression, deterministic, equal to a direct scikit-learn computation, kept in the manifest;
and a final fit trains on train + valid, never on test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mrnet_ray.shards import open_prepared
from mrnet_ray.shards.baseline import C_GRID, ensure_baseline, fit_baseline
from mrnet_ray.training.feed import MemoryFeed, concat


def direct_features(split, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Per track: its segments laid back on the track's timeline, one every ``hop`` frames
    (overlapping ones write the same frames again), then each band's mean and std."""
    x, y = [], []
    for track in np.unique(split.track_index):
        segments = split.mel[split.track_index == track].astype(np.float64)
        n, n_mels, width = segments.shape
        timeline = np.full((n_mels, (n - 1) * hop + width), np.nan)
        for i, seg in enumerate(segments):
            timeline[:, i * hop : i * hop + width] = seg
        assert not np.isnan(timeline).any()  # hop <= width here: no gaps
        x.append(np.concatenate([timeline.mean(axis=1), timeline.std(axis=1)]))
        y.append(split.label[split.track_index == track][0])
    return np.array(x), np.array(y)


def test_the_baseline_is_a_direct_scikit_learn_fit_kept_in_the_manifest(tiny_prepared, tmp_path):
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)  # the baseline is written into its manifest
    prepared = open_prepared(data)
    x, y = {}, {}
    for split in ("train", "valid", "test"):
        cut = prepared.feature if split == "train" else prepared.feature.scoring()
        hop = min(cut.segment_hop_frames, cut.segment_frames)
        x[split], y[split] = direct_features(prepared.read_arrays(split), hop)
    assert prepared.feature.scoring().segment_hop_frames < prepared.feature.segment_frames

    def fitted(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(
            x["train"], y["train"]
        )

    valid = {c: float((fitted(c).predict(x["valid"]) == y["valid"]).mean()) for c in C_GRID}
    c = max(C_GRID, key=lambda c: (valid[c], -c))
    test = float((fitted(c).predict(x["test"]) == y["test"]).mean())

    baseline = ensure_baseline(prepared)
    assert baseline["C"] == c and baseline["valid_track_acc"] == pytest.approx(valid[c])
    assert baseline["test_track_acc"] == pytest.approx(test)
    assert baseline == fit_baseline(open_prepared(data))  # deterministic
    kept = json.loads((data / "manifest.json").read_text())["baseline"]
    assert kept == baseline and ensure_baseline(open_prepared(data)) == kept  # not refitted
    assert open_prepared(data).content_hash == prepared.content_hash  # the data did not change


def test_a_final_fit_trains_on_train_and_valid_and_never_on_test(tiny_prepared):
    prepared = open_prepared(tiny_prepared)
    train, valid, test = (prepared.read_arrays(s) for s in ("train", "valid", "test"))
    both = concat(train, valid)
    feed = MemoryFeed(both, valid, batch_size=4, seed=0)
    seen = np.concatenate([b["track_index"].numpy() for b in feed.train(1, 0, 1)])
    assert set(seen) <= set(train.track_index) | set(valid.track_index)
    assert set(seen) & set(valid.track_index) and set(seen) & set(train.track_index)
    assert not set(seen) & set(test.track_index)
    assert len(seen) == len(both.label) // 4 * 4
