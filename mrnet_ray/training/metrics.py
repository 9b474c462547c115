"""Classification metrics that merge across workers.

Validation is split across Ray Train workers, and the segments of one track may land on
different workers. :class:`EvalStats` therefore keeps sums, not ratios: the loss sum, the
segment confusion matrix and, per ``track_index``, the sum of segment logits and their count.
Merging sums is exact, so the merged metrics equal those of one worker evaluating everything.

Track-level prediction averages a track's segment logits and takes the arg-max, the usual
convention in music classification (e.g. Won et al. 2020, "Evaluation of CNN-based automatic
music tagging models").

>>> cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
>>> cm.tolist()  # rows: true class, columns: predicted class
[[1, 0], [1, 1]]
>>> accuracy(cm), round(macro_f1(cm), 3)
(0.6666666666666666, 0.667)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts; row = true class, column = predicted class."""
    flat = np.asarray(true, dtype=np.int64) * n_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(cm: np.ndarray) -> float:
    """Share of correct predictions; 0.0 for an empty matrix."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or prediction."""
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp[present] / (support[present] + predicted[present])
    return float(f1.mean())


@dataclass(frozen=True)
class EvalStats:
    """Mergeable evaluation sums of one worker (or of all, after :meth:`merge`).

    ``track_index``, ``track_logit_sum`` ``(tracks, n_classes)``, ``track_count`` and
    ``track_label`` are aligned arrays sorted by ``track_index``.
    """

    n_classes: int
    loss_sum: float
    segments: int
    segment_confusion: np.ndarray
    track_index: np.ndarray
    track_logit_sum: np.ndarray
    track_count: np.ndarray
    track_label: np.ndarray

    @classmethod
    def empty(cls, n_classes: int) -> EvalStats:
        return cls(
            n_classes=n_classes,
            loss_sum=0.0,
            segments=0,
            segment_confusion=np.zeros((n_classes, n_classes), dtype=np.int64),
            track_index=np.zeros(0, dtype=np.int64),
            track_logit_sum=np.zeros((0, n_classes), dtype=np.float64),
            track_count=np.zeros(0, dtype=np.int64),
            track_label=np.zeros(0, dtype=np.int64),
        )

    @classmethod
    def from_segments(
        cls, logits: np.ndarray, label: np.ndarray, track_index: np.ndarray, loss_sum: float
    ) -> EvalStats:
        """Stats of ``logits`` ``(segments, n_classes)`` and their ``label``, ``track_index``."""
        n_classes = logits.shape[1]
        logits = logits.astype(np.float64)
        tracks, inverse = np.unique(track_index, return_inverse=True)
        logit_sum = np.zeros((len(tracks), n_classes))
        np.add.at(logit_sum, inverse, logits)
        track_label = np.zeros(len(tracks), dtype=np.int64)
        track_label[inverse] = label
        return cls(
            n_classes=n_classes,
            loss_sum=float(loss_sum),
            segments=len(label),
            segment_confusion=confusion_matrix(label, logits.argmax(axis=1), n_classes),
            track_index=tracks.astype(np.int64),
            track_logit_sum=logit_sum,
            track_count=np.bincount(inverse, minlength=len(tracks)).astype(np.int64),
            track_label=track_label,
        )

    def merge(self, others: Iterable[EvalStats]) -> EvalStats:
        """Sum of these stats and ``others`` (e.g. every worker's), grouping tracks by index."""
        parts = [self, *others]
        index = np.concatenate([p.track_index for p in parts])
        tracks, inverse = np.unique(index, return_inverse=True)
        logit_sum = np.zeros((len(tracks), self.n_classes))
        np.add.at(logit_sum, inverse, np.concatenate([p.track_logit_sum for p in parts]))
        count = np.zeros(len(tracks), dtype=np.int64)
        np.add.at(count, inverse, np.concatenate([p.track_count for p in parts]))
        label = np.zeros(len(tracks), dtype=np.int64)
        label[inverse] = np.concatenate([p.track_label for p in parts])
        return EvalStats(
            n_classes=self.n_classes,
            loss_sum=sum(p.loss_sum for p in parts),
            segments=sum(p.segments for p in parts),
            segment_confusion=sum((p.segment_confusion for p in parts), start=np.int64(0)),
            track_index=tracks,
            track_logit_sum=logit_sum,
            track_count=count,
            track_label=label,
        )

    @property
    def track_confusion(self) -> np.ndarray:
        """Confusion matrix of track predictions (arg-max of the mean segment logits)."""
        mean_logits = self.track_logit_sum / np.maximum(self.track_count, 1)[:, None]
        return confusion_matrix(self.track_label, mean_logits.argmax(axis=1), self.n_classes)

    def metrics(self) -> dict[str, float]:
        """``valid_loss`` (mean per segment), ``valid_acc`` (segment level),
        ``valid_track_acc`` and ``valid_macro_f1`` (track level)."""
        track_cm = self.track_confusion
        return {
            "valid_loss": self.loss_sum / self.segments if self.segments else float("nan"),
            "valid_acc": accuracy(self.segment_confusion),
            "valid_track_acc": accuracy(track_cm),
            "valid_macro_f1": macro_f1(track_cm),
        }
