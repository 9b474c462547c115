"""Classify audio files with an exported model.

    python -m mrnet_ray.predict MODEL AUDIO... [--top-k K] [--json] [--segments]
        [--mlflow-uri URI]

MODEL is a bundle directory (``python -m mrnet_ray.best --export``) or a registered model,
``models:/<name>@<alias>`` or ``models:/<name>/<version>``, whose bundle is downloaded from the
store that ``--mlflow-uri`` or ``MLFLOW_TRACKING_URI`` names.

Every file goes through :func:`mrnet_ray.features.audio_to_segments` with the bundle's
FeatureConfig, the code path preparation used, so inference sees exactly the features
training saw. The model scores each segment; a track's prediction is the softmax of its
segments' mean logits, whose arg-max is the track-level prediction validation measured.

Exit status: 0 when every file was predicted. A file that cannot be decoded gets one line on
stderr (``error: FILE: why``) and the others are still predicted and printed; the status is
then 2, as for any user error, so scripts notice. A missing or damaged bundle stops before
the first file, also with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrnet_ray.bundle import Bundle, load_bundle
from mrnet_ray.errors import EXIT_USER_ERROR, UserError, cli
from mrnet_ray.features import AudioError, audio_to_segments

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
    from mrnet_ray.best import format_table

    ordinals = ["1st", "2nd", "3rd"] + [f"{i}th" for i in range(4, k + 1)]
    rows = []
    for r in results:
        rows.append([r["file"], str(r["segments"]), *_cells(r["top_k"])])
        for s in r.get("segment_predictions", []):
            rows.append([f"  segment {s['index']} @ {s['start_s']:g} s", "", *_cells(s["top_k"])])
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    return format_table(["file", "segments", *ordinals[: width - 2]], rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray predict", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundle directory, or models:/<name>@<alias>")
    p.add_argument("audio", nargs="+", help="audio files (any format soundfile reads)")
    p.add_argument("--top-k", type=int, default=3, help="labels per file (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--segments", action="store_true", help="add per-segment predictions")
    p.add_argument("--mlflow-uri", help="store of models:/ (default $MLFLOW_TRACKING_URI)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be >= 1")
    bundle = open_model(args.model, args.mlflow_uri)
    k = min(args.top_k, len(bundle.labels))
    results, failed = [], 0
    for path in args.audio:
        try:
            prediction = predict_file(bundle, path)
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            results.append({"file": path, "error": str(e)})
            continue
        results.append(to_json(prediction, bundle, k, args.segments))
    good = [r for r in results if "error" not in r]
    if args.json:
        print(json.dumps(results, indent=2))
    elif good:
        print(table(good, k))
    if failed:
        raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
