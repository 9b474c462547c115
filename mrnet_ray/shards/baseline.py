"""The linear baseline of a prepared directory: log-mel statistics + logistic regression.

The cheapest honest answer to "is the network any good?": per track, the mean and the
standard deviation over time of every mel band (``2 x n_mels`` numbers, over the frames of
the track's segments, each frame once where scoring segments overlap), standardised and fed to
a logistic regression (scikit-learn, L-BFGS) whose inverse regularisation ``C`` is chosen from
:data:`C_GRID` by track accuracy on the valid split (ties: the smaller ``C``), then scored once
on the test split. It is deterministic, and computed once per prepared directory: the first
search on it (or ``best``) computes it and keeps it in ``manifest.json`` under ``baseline``.

>>> split = SplitArrays(np.stack([np.full((2, 3), v, np.float32) for v in (0, 1, 2, 3)]),
...                     np.array([0, 0, 1, 1]), np.array([7, 7, 8, 8]), [])
>>> x, y = track_features(split)
>>> x.shape, y.tolist()  # two tracks; per band: mean, then std
((2, 4), [0, 1])
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from mrnet_ray.shards.manifest import MANIFEST
from mrnet_ray.shards.reader import Prepared, SplitArrays
from mrnet_ray.storage import resolve, write_atomic

C_GRID = (0.01, 0.1, 1.0, 10.0)
"""Inverse regularisation strengths tried; the valid split picks one."""
VERSION = 2
"""Bumped when the baseline's recipe changes, so cached scores are recomputed (2: frames of
overlapping segments counted once)."""
NAME = "log-mel mean/std per band + logistic regression"


def track_features(
    split: SplitArrays, new_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(tracks, 2 * n_mels)`` per-band mean and std over a track's frames, and the tracks'
    labels, in ``track_index`` order; ``new_frames`` as for :class:`TrackStats`."""
    stats = TrackStats(new_frames)
    stats.add(split)
    return stats.features()


class TrackStats:
    """Per-track sums of frames, squared frames and counts: a split's features without holding
    the split (tracks may continue across the files :meth:`add` is given, in segment order).

    ``new_frames``: the frames a segment adds to the one before it, where segments overlap
    (the hop in frames); its first segment counts whole, each later one only its last
    ``new_frames``, so every frame counts once. None: segments do not overlap.
    """

    def __init__(self, new_frames: int | None = None) -> None:
        self.new_frames = new_frames
        self.sums: dict[int, np.ndarray] = {}
        self.squares: dict[int, np.ndarray] = {}
        self.frames: dict[int, int] = {}
        self.labels: dict[int, int] = {}

    def add(self, split: SplitArrays) -> None:
        for track in np.unique(split.track_index):
            mine = split.track_index == track
            key = int(track)
            mel = split.mel[mine].astype(np.float64)  # (segments, n_mels, frames)
            parts = [mel]
            if self.new_frames is not None and self.new_frames < mel.shape[2]:
                whole = 0 if key in self.frames else 1  # the track's first segment
                parts = [mel[:whole], mel[whole:, :, mel.shape[2] - self.new_frames :]]
            for part in parts:
                self.sums[key] = self.sums.get(key, 0.0) + part.sum(axis=(0, 2))
                self.squares[key] = self.squares.get(key, 0.0) + (part**2).sum(axis=(0, 2))
                self.frames[key] = self.frames.get(key, 0) + part.shape[0] * part.shape[2]
            self.labels[key] = int(split.label[mine][0])

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        tracks = sorted(self.frames)
        rows = []
        for t in tracks:
            mean = self.sums[t] / self.frames[t]
            var = np.maximum(self.squares[t] / self.frames[t] - mean**2, 0.0)
            rows.append(np.concatenate([mean, np.sqrt(var)]))
        return np.asarray(rows), np.asarray([self.labels[t] for t in tracks], dtype=np.int64)


def fit_baseline(prepared: Prepared) -> dict[str, Any]:
    """Fit on train, choose ``C`` on valid, score valid and test (track accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = {}, {}
    for split in ("train", "valid", "test"):
        stats = TrackStats(prepared.feature.for_split(split).segment_hop_frames)
        for part in prepared.iter_arrays(split):
            stats.add(part)
        x[split], y[split] = stats.features()

    def fitted(c: float) -> Any:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        return model.fit(x["train"], y["train"])

    def accuracy(model: Any, split: str) -> float:
        return float((model.predict(x[split]) == y[split]).mean()) if len(y[split]) else 0.0

    grid = {c: accuracy(fitted(c), "valid") for c in C_GRID}
    best_c = max(C_GRID, key=lambda c: (grid[c], -c))
    model = fitted(best_c)
    return {
        "version": VERSION,
        "model": NAME,
        "C": best_c,
        "valid_by_C": {str(c): v for c, v in grid.items()},
        "valid_track_acc": accuracy(model, "valid"),
        "test_track_acc": accuracy(model, "test"),
        "train_tracks": len(y["train"]),
    }


def ensure_baseline(prepared: Prepared) -> dict[str, Any]:
    """The prepared directory's baseline: from its manifest, else fitted now and kept there."""
    kept = prepared.manifest.get("baseline")
    if isinstance(kept, dict) and kept.get("version") == VERSION:
        return kept
    baseline = fit_baseline(prepared)
    manifest = {**prepared.manifest, "baseline": baseline}
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    fs, path, _ = resolve(prepared.path)
    if isinstance(fs, pafs.LocalFileSystem):
        write_atomic(f"{path}/{MANIFEST}", text)
    else:  # an object store writes a whole object at once
        with fs.open_output_stream(f"{path}/{MANIFEST}") as f:
            f.write(text.encode())
    prepared.manifest["baseline"] = baseline
    return baseline


def margin_sentence(test_track_acc: float, baseline: dict[str, Any]) -> tuple[bool, str]:
    """Whether a model beats the baseline on test, and the words the model card and ``best
    --export`` say it in (after "the model")."""
    theirs = baseline["test_track_acc"]
    points = 100 * (test_track_acc - theirs)
    if points > 0:
        return True, (
            f"beats the linear baseline ({NAME}) by {points:.1f} points of test track "
            f"accuracy ({test_track_acc:.3f} against {theirs:.3f})"
        )
    return False, (
        f"does not beat the linear baseline ({NAME}): test track accuracy "
        f"{test_track_acc:.3f} against its {theirs:.3f} ({points:+.1f} points); more epochs, "
        "more data or a smaller model may help"
    )
