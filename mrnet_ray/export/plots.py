"""Figures of an exported model: the confusion matrix, as PNG bytes.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so they work off the main
thread and leave no global state behind. Learning curves are drawn by ``tracking.runs``.

>>> png = confusion_matrix_png(np.array([[3, 1], [0, 4]]), ["jazz", "rock"], "test tracks")
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def figure_png(fig: Figure, dpi: int = 120) -> bytes:
    """``fig`` rendered as PNG bytes."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def confusion_matrix_figure(cm: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    """Row-normalised heat map (colour = share of each true class) with the raw counts
    written in each cell; rows are true classes, columns predicted ones."""
    n = len(labels)
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape, dtype=float), where=support > 0)
    side = min(14.0, 2.5 + 0.55 * n)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:  # beyond that the numbers are unreadable; colours still tell
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    return fig


def confusion_matrix_png(cm: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """:func:`confusion_matrix_figure` as PNG bytes."""
    return figure_png(confusion_matrix_figure(np.asarray(cm), labels, title))
