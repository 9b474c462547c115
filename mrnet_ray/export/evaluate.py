"""The one evaluation of an exported model on the test split, and how it is reported.

The test split is one that neither training nor the search looked at: segment and track
accuracy, macro-F1, a per-class report and the track-level confusion matrix.
"""

from __future__ import annotations

import numpy as np
import torch

from mrnet_ray.errors import UserError
from mrnet_ray.shards import Prepared
from mrnet_ray.text import format_table
from mrnet_ray.training.loop import evaluate
from mrnet_ray.training.metrics import EvalStats

BATCH = 64


def evaluate_test(model: torch.nn.Module, prepared: Prepared) -> tuple[EvalStats, np.ndarray]:
    """Test-split stats and a 2-segment input example ``(2, n_mels, frames)``."""
    test = prepared.read_arrays("test")
    n = len(test.label)
    if n == 0:
        raise UserError(
            f"{prepared.path}: the test split holds no segments; prepare the data with a "
            "test split to export a model"
        )
    batches = (
        {
            "mel": torch.tensor(test.mel[i : i + BATCH]),
            "label": torch.tensor(test.label[i : i + BATCH]),
            "track_index": torch.tensor(test.track_index[i : i + BATCH]),
        }
        for i in range(0, n, BATCH)
    )
    stats = evaluate(model, batches, len(prepared.labels), torch.device("cpu"))
    # Two rows: MLflow's torch.export keeps a size-1 batch dimension fixed.
    example = np.ascontiguousarray(test.mel[[0, min(1, n - 1)]], dtype=np.float32)
    return stats, example


def held_out_metrics(stats: EvalStats) -> dict[str, float]:
    """``test_loss``, ``test_acc`` (segments), ``test_track_acc`` and ``test_macro_f1``."""
    return {k.replace("valid_", "test_", 1): v for k, v in stats.metrics().items()}


def class_report(cm: np.ndarray, labels: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per class: precision, recall, F1 (0 where undefined) and support, from a confusion
    matrix whose rows are true classes.

    >>> class_report(np.array([[2, 0], [1, 1]]), ("a", "b"))["a"]
    {'precision': 0.6666666666666666, 'recall': 1.0, 'f1': 0.8, 'support': 2}
    """
    out = {}
    for i, name in enumerate(labels):
        tp, predicted, support = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def held_out_report(stats: EvalStats, labels: tuple[str, ...]) -> str:
    """The test scores and the per-class table, as printed."""
    test = held_out_metrics(stats)
    rows = [
        [name, *(f"{r[m]:.3f}" for m in ("precision", "recall", "f1")), str(r["support"])]
        for name, r in class_report(stats.track_confusion, labels).items()
    ]
    return (
        f"test split ({len(stats.track_index)} tracks, {stats.segments} segments): segment acc "
        f"{test['test_acc']:.4f}, track acc {test['test_track_acc']:.4f}, "
        f"macro-F1 {test['test_macro_f1']:.4f}\n"
        + format_table(["class", "precision", "recall", "F1", "tracks"], rows)
    )
