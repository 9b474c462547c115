"""Classify audio with an exported model: decode, the shared frontend, segment logits, a track.

Every file goes through :func:`mrnet_ray.features.audio_to_segments` with the bundle's
FeatureConfig, the code path preparation used, so inference sees exactly the features
training saw. The model scores each segment; a track's prediction is the softmax of its
segments' mean logits, whose arg-max is the track-level prediction validation measured.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrnet_ray.errors import UserError
from mrnet_ray.export.bundle import Bundle, load_bundle
from mrnet_ray.features import AudioError, audio_to_segments
from mrnet_ray.text import format_table

BATCH = 64
REGISTRY = "models:/"


@dataclass(frozen=True)
class Prediction:
    """Class probabilities of one file, whole and per segment."""

    file: str
    probabilities: np.ndarray
    """``(n_classes,)``: softmax of the mean segment logits."""
    segment_probabilities: np.ndarray
    """``(n_segments, n_classes)``: softmax of each segment's logits."""


def open_model(model: str, mlflow_uri: str | None = None) -> Bundle:
    """A bundle directory, or a registered model's bundle fetched from the store."""
    if not model.startswith(REGISTRY):
        return load_bundle(model)
    from mrnet_ray import tracking  # MLflow loads only for registered models

    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError(
            f"{model}: a registered model needs its tracking store; pass --mlflow-uri "
            "(e.g. sqlite:///runs/NAME/mlflow.db) or set MLFLOW_TRACKING_URI"
        )
    missing = tracking.missing_local_store(uri)
    if missing:
        raise UserError(f"--mlflow-uri {uri}: no store file {missing}; check the path")
    version = tracking.resolve_model_uri(uri, model)
    with tempfile.TemporaryDirectory() as tmp:
        return load_bundle(tracking.download_bundle(uri, version, Path(tmp)))


def predict_file(bundle: Bundle, path: str | os.PathLike[str]) -> Prediction:
    """Decode, cut and score one file; AudioError if it is unreadable or too short."""
    segments = audio_to_segments(path, bundle.feature)  # (n_segments, n_mels, frames)
    if len(segments) == 0:
        raise AudioError(
            f"{path}: shorter than one {bundle.feature.segment_seconds:g} s segment, which "
            "this model's feature settings skip (short_clip=skip)"
        )
    with torch.no_grad():
        logits = torch.cat(
            [
                bundle.model(torch.from_numpy(segments[i : i + BATCH]))
                for i in range(0, len(segments), BATCH)
            ]
        )  # (n_segments, n_classes)
        track = torch.softmax(logits.mean(dim=0), dim=0)  # (n_classes,)
        per_segment = torch.softmax(logits, dim=1)
    return Prediction(os.fspath(path), track.numpy(), per_segment.numpy())


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    """The ``k`` likeliest labels, likeliest first.

    >>> top_k(np.array([0.2, 0.7, 0.1]), ("a", "b", "c"), 2)
    [{'label': 'b', 'probability': 0.7}, {'label': 'a', 'probability': 0.2}]
    """
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i], "probability": round(float(probabilities[i]), 6)} for i in order]


def to_json(p: Prediction, bundle: Bundle, k: int, segments: bool) -> dict:
    out: dict = {
        "file": p.file,
        "segments": len(p.segment_probabilities),
        "top_k": top_k(p.probabilities, bundle.labels, k),
    }
    if segments:
        hop = bundle.feature.segment_hop_seconds
        out["segment_predictions"] = [
            {"index": i, "start_s": round(i * hop, 3), "top_k": top_k(s, bundle.labels, k)}
            for i, s in enumerate(p.segment_probabilities)
        ]
    return out


def _cells(ranked: list[dict]) -> list[str]:
    return [f"{r['label']} {r['probability']:.3f}" for r in ranked]


def table(results: list[dict], k: int) -> str:
    ordinals = ["1st", "2nd", "3rd"] + [f"{i}th" for i in range(4, k + 1)]
    rows = []
    for r in results:
        rows.append([r["file"], str(r["segments"]), *_cells(r["top_k"])])
        for s in r.get("segment_predictions", []):
            rows.append([f"  segment {s['index']} @ {s['start_s']:g} s", "", *_cells(s["top_k"])])
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    return format_table(["file", "segments", *ordinals[: width - 2]], rows)
