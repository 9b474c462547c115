"""Classify audio with an exported model: decode, the shared frontend, segment logits, a track.

Every file goes through :func:`mrnet_ray.features.audio_to_segments` with the bundle's
FeatureConfig, the code path preparation used, so inference sees exactly the features
training saw. The model scores each segment; a track's prediction is the softmax of its
segments' mean logits, whose arg-max is the track-level prediction validation measured.

``predict`` runs these steps one file at a time; serving (:mod:`~mrnet_ray.inference.serving`),
bulk inference (:mod:`~mrnet_ray.inference.bulk`) and the MLflow pyfunc model run the same
steps on several files at once (:func:`file_segments`, then :func:`predict_batch`: their
segments in one forward pass), so every way of asking gives the same answer for a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError
from mrnet_ray.export.bundle import WEIGHTS, Bundle, load_bundle, weights_sha256
from mrnet_ray.features import AudioError, AudioSource, audio_to_segments
from mrnet_ray.text import format_table, printable

if TYPE_CHECKING:
    from mrnet_ray.tracking import ModelVersion

BATCH = 64
"""Segments per forward pass."""
REGISTRY = "models:/"


@dataclass(frozen=True)
class Prediction:
    """Class probabilities of one file, whole and per segment."""

    file: str
    probabilities: np.ndarray
    """``(n_classes,)``: softmax of the mean segment logits."""
    segment_probabilities: np.ndarray
    """``(n_segments, n_classes)``: softmax of each segment's logits."""


@dataclass(frozen=True)
class ModelInfo:
    """Which model answers: its registered name and version (None for a bundle directory, named
    after it) and the sha256 of its weights."""

    name: str
    version: str | None
    sha256: str

    def to_json(self) -> dict:
        return asdict(self)


def open_model(model: str, mlflow_uri: str | None = None) -> Bundle:
    """A bundle directory, or a registered model's bundle fetched from the store."""
    return open_model_info(model, mlflow_uri)[0]


def open_model_info(model: str, mlflow_uri: str | None = None) -> tuple[Bundle, ModelInfo]:
    """:func:`open_model` and what it opened. A registered model's downloaded weights must
    hash to the sha256 its version was tagged with at registration, or it is refused."""
    if not model.startswith(REGISTRY):
        bundle = load_bundle(model)
        return bundle, ModelInfo(bundle.path.resolve().name, None, weights_sha256(bundle.path))
    from mrnet_ray.tracking import registry  # MLflow loads only here

    uri, version = _registered(model, mlflow_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download_bundle(uri, version, Path(tmp))
        digest = _checked_digest(model, version, path)
        return load_bundle(path), ModelInfo(version.name, version.version, digest)


def registered_version(model: str, mlflow_uri: str | None = None) -> str:
    """The version a ``models:/`` reference names now (one registry call, no download)."""
    return _registered(model, mlflow_uri)[1].version


def _registered(model: str, mlflow_uri: str | None) -> tuple[str, ModelVersion]:
    """The store and the registered version of a ``models:/`` reference."""
    from mrnet_ray.tracking import missing_local_store, registry

    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError(
            f"{model}: a registered model needs its tracking store; pass --mlflow-uri "
            "(e.g. sqlite:///runs/NAME/mlflow.db) or set MLFLOW_TRACKING_URI"
        )
    missing = missing_local_store(uri)
    if missing:
        raise UserError(f"--mlflow-uri {uri}: no store file {missing}; check the path")
    return uri, registry.resolve_model_uri(uri, model)


def _checked_digest(model: str, version: ModelVersion, path: Path) -> str:
    """The downloaded weights' sha256, if it is the one the version was registered with."""
    from mrnet_ray.tracking.registry import TAG_WEIGHTS_SHA256

    where = f"{model} (version {version.version})"
    expected = version.tags.get(TAG_WEIGHTS_SHA256)
    if not expected:
        raise UserError(
            f"{where}: the version has no {TAG_WEIGHTS_SHA256} tag, so its downloaded weights "
            "cannot be checked; re-export with python -m mrnet_ray.best --export"
        )
    if not (path / WEIGHTS).is_file():
        return expected  # load_bundle names the missing file
    actual = weights_sha256(path)
    if actual != expected:
        raise UserError(
            f"{where}: the downloaded {WEIGHTS} has sha256 {actual[:16]}..., not the "
            f"{expected[:16]}... it was registered with; its artifacts changed after "
            "registration, so it is refused; re-export with python -m mrnet_ray.best --export"
        )
    return actual


def absolute_store(uri: str | None) -> str | None:
    """The store a ``models:/`` reference reads from (``uri``, else ``MLFLOW_TRACKING_URI``),
    a relative ``sqlite:///path`` made absolute: for processes that do not share this one's
    working directory or environment (Ray workers, Serve replicas).

    >>> absolute_store("sqlite:////abs/mlflow.db"), absolute_store("http://host:5000")
    ('sqlite:////abs/mlflow.db', 'http://host:5000')
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    prefix = "sqlite:///"
    if uri is None or not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + str(Path(uri[len(prefix) :]).absolute())


def pinned(model: str, info: ModelInfo) -> str:
    """What other processes should open to get the model :func:`open_model_info` opened: the
    version an alias named (``models:/NAME/V``), or the bundle's absolute path."""
    if model.startswith(REGISTRY):
        return f"{REGISTRY}{info.name}/{info.version}"
    return str(Path(model).expanduser().absolute())


def _label(source: AudioSource, name: str) -> str:
    return name if hasattr(source, "read") else printable(os.fspath(source))


def file_segments(source: AudioSource, feature: FeatureConfig, name: str = "<audio>") -> np.ndarray:
    """Decode and cut one file (a path, or a binary file-like object called ``name`` in
    messages) -> ``(n_segments, n_mels, segment_frames)``, every ``eval_hop_seconds`` as the
    test split was cut; AudioError if it gives none."""
    segments = audio_to_segments(source, feature.scoring(), name=name)
    if len(segments) == 0:
        raise AudioError(
            f"{_label(source, name)}: shorter than one {feature.segment_seconds:g} s "
            "segment, which this model's feature settings skip (short_clip=skip)"
        )
    return segments


def segment_logits(model: torch.nn.Module, segments: np.ndarray) -> torch.Tensor:
    """``(n_segments, n_mels, frames)`` -> logits ``(n_segments, n_classes)`` on the CPU, in
    forward passes of :data:`BATCH` segments on the model's device."""
    device = next(model.parameters()).device
    x = torch.from_numpy(segments)
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + BATCH].to(device)).cpu() for i in range(0, len(x), BATCH)]
        )


def track_prediction(file: str, logits: torch.Tensor) -> Prediction:
    """One file's segment logits ``(n_segments, n_classes)`` -> its :class:`Prediction`."""
    track = torch.softmax(logits.mean(dim=0), dim=0)  # (n_classes,)
    per_segment = torch.softmax(logits, dim=1)  # (n_segments, n_classes)
    return Prediction(file, track.numpy(), per_segment.numpy())


def predict_batch(
    model: torch.nn.Module, batch: Sequence[np.ndarray], files: Sequence[str]
) -> list[Prediction]:
    """Several files' segments through the model together: one :class:`Prediction` each."""
    counts = [len(s) for s in batch]
    logits = segment_logits(model, np.concatenate(batch))  # (sum(counts), n_classes)
    return [track_prediction(f, part) for f, part in zip(files, logits.split(counts), strict=True)]


def predict_file(bundle: Bundle, path: str | os.PathLike[str]) -> Prediction:
    """Decode, cut and score one file; AudioError if it is unreadable or too short."""
    segments = file_segments(path, bundle.feature)  # (n_segments, n_mels, frames)
    return track_prediction(os.fspath(path), segment_logits(bundle.model, segments))


def top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    """The ``k`` likeliest labels, likeliest first.

    >>> top_k(np.array([0.2, 0.7, 0.1]), ("a", "b", "c"), 2)
    [{'label': 'b', 'probability': 0.7}, {'label': 'a', 'probability': 0.2}]
    """
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": labels[i], "probability": round(float(probabilities[i]), 6)} for i in order]


def answer(p: Prediction, labels: tuple[str, ...], k: int) -> dict:
    """One file's answer as serving, bulk inference and the pyfunc model give it: the label,
    its probability, the ``k`` likeliest ``{"label", "prob"}`` and the segment count."""
    ranked = [
        {"label": r["label"], "prob": r["probability"]} for r in top_k(p.probabilities, labels, k)
    ]
    return {
        "label": ranked[0]["label"],
        "prob": ranked[0]["prob"],
        "top_k": ranked,
        "segments": len(p.segment_probabilities),
    }


def to_json(p: Prediction, bundle: Bundle, k: int, segments: bool) -> dict:
    out: dict = {
        "file": p.file,
        "segments": len(p.segment_probabilities),
        "top_k": top_k(p.probabilities, bundle.labels, k),
    }
    if segments:
        hop = bundle.feature.scoring().segment_hop_seconds
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
