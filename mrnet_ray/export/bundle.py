"""Exported model bundles: one directory that ``predict`` (or another runtime) needs, and nothing
else: no search directory, no prepared data, no MLflow.

::

    DIR/model.safetensors      weights (the state dict); loading never unpickles anything
    DIR/config.json            format, trial (TrialConfig), feature (FeatureConfig), labels,
                               input/output description, lineage (``metadata``)
    DIR/model.ts               TorchScript (``torch.jit.script``) of the eval-mode model
    DIR/model.onnx             ONNX: "mel" (batch, n_mels, frames) -> "logits" (batch, n_classes),
                               batch and frames dynamic
    DIR/metrics.json, confusion_matrix.png, MODEL_CARD.md   (``extra`` files from ``best``)

:func:`load_bundle` reads only ``config.json`` and ``model.safetensors``. Every model maps log-mel
segments (the frontend of :mod:`mrnet_ray.features` with the bundle's FeatureConfig) to logits.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): for these models it gives the
same outputs as the ``torch.export``-based one (both checked with dynamic batch and frames,
within 1e-7) but runs about five times faster and prints nothing. :func:`export_bundle` checks
both exported formats against PyTorch before the bundle appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mrnet_ray.config import FeatureConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.storage import replace_dir

FORMAT = 1
"""The bundle format this module writes and reads (``config.json["format"]``)."""
WEIGHTS, CONFIG, TORCHSCRIPT, ONNX = "model.safetensors", "config.json", "model.ts", "model.onnx"
ONNX_OPSET = 17
TOLERANCE = 1e-4
"""Largest absolute logit difference allowed between PyTorch and an exported format."""
REEXPORT = "re-export with python -m mrnet_ray.best --run-dir RUN_DIR --export"


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model in eval mode on the CPU and what it needs to be used."""

    path: Path
    model: nn.Module
    trial: TrialConfig
    feature: FeatureConfig
    labels: tuple[str, ...]
    metadata: dict[str, Any]
    """The rest of ``config.json``: input/output description, lineage, test metrics."""


def write_torchscript(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; it still serves C++
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))


def write_onnx(model: nn.Module, path: Path, n_mels: int, frames: int) -> None:
    """ONNX with dynamic batch and frames (module docstring says why this exporter)."""
    example = torch.randn(2, n_mels, frames)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notice
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["mel"],
            output_names=["logits"],
            dynamic_axes={"mel": {0: "batch", 2: "frames"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def export_differences(
    path: Path,
    model: nn.Module,
    n_mels: int,
    batches: Sequence[int] = (1, 3),
    frames: Sequence[int] = (62, 37),
    seed: int = 0,
) -> dict[str, float]:
    """Largest absolute difference between ``model`` and the bundle's TorchScript and ONNX
    files on random input of every ``(batch, n_mels, frames)`` combination."""
    import onnxruntime

    with warnings.catch_warnings():  # TorchScript's deprecation notice
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(path / TORCHSCRIPT))
    session = onnxruntime.InferenceSession(str(path / ONNX), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    worst = {TORCHSCRIPT: 0.0, ONNX: 0.0}
    with torch.no_grad():
        for b in batches:
            for f in frames:
                x = torch.randn(b, n_mels, f, generator=generator) * 20 - 40  # dB-like
                expected = model(x).numpy()
                outputs = {
                    TORCHSCRIPT: scripted(x).numpy(),
                    ONNX: session.run(None, {"mel": x.numpy()})[0],
                }
                for name, out in outputs.items():
                    worst[name] = max(worst[name], float(np.abs(out - expected).max()))
    return worst


def export_bundle(
    out: str | os.PathLike[str],
    model: nn.Module,
    trial: TrialConfig,
    feature: FeatureConfig,
    labels: Sequence[str],
    *,
    metadata: Mapping[str, Any] = {},
    extra: Mapping[str, str | bytes] = {},
) -> Path:
    """Write a bundle to ``out`` (replacing an older bundle there) and return its path.

    ``extra`` maps more file names to their text or bytes. Everything is written to a staging
    sibling, checked (the bundle loads; TorchScript and ONNX agree with PyTorch within
    :data:`TOLERANCE`), flushed to disk and then renamed into place
    (:func:`mrnet_ray.storage.replace_dir`), so ``out`` is never half-written.
    """
    out = Path(out).expanduser().resolve()
    _check_replaceable(out)
    model = model.eval().cpu()
    if len(labels) != trial.model.n_classes:
        raise ValueError(f"{len(labels)} labels for a model of {trial.model.n_classes} classes")
    with replace_dir(out) as tmp:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        n_mels, frames = feature.n_mels, feature.segment_frames
        config = {
            "format": FORMAT,
            "trial": trial.to_dict(),
            "feature": feature.to_dict(),
            "labels": list(labels),
            "input": {"name": "mel", "shape": ["batch", n_mels, "frames"], "dtype": "float32",
                      "segment_frames": frames},
            "output": {"name": "logits", "shape": ["batch", len(labels)], "dtype": "float32"},
            **metadata,
        }  # fmt: skip
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        write_torchscript(model, tmp / TORCHSCRIPT)
        write_onnx(model, tmp / ONNX, n_mels, frames)
        for name, content in extra.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
        loaded = load_bundle(tmp)
        # the segment length and a shorter odd one: strided convs round odd lengths
        worst = export_differences(tmp, loaded.model, n_mels, frames=(frames, frames // 2 | 1))
        bad = {k: v for k, v in worst.items() if not v <= TOLERANCE}
        if bad:
            raise RuntimeError(f"exported model differs from PyTorch by {bad} (> {TOLERANCE})")
    return out


def _check_replaceable(out: Path) -> None:
    if out.is_file():
        raise UserError(f"{out}: is a file; choose a directory for the bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG).is_file():
        raise UserError(
            f"{out}: exists and holds no model bundle; choose an empty or new directory "
            "for --export (an older bundle there would be replaced)"
        )


def _fail(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: {' '.join(problem.split())}; {REEXPORT}")


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the bundle's ``model.safetensors``: what the registry tags a version with
    and checks a downloaded bundle against."""
    with open(Path(path) / WEIGHTS, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Load a bundle directory; UserError naming the file and the fix if it is missing or
    damaged (no file, bad JSON, weights that do not fit the config)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(
            f"{root}: no such model bundle directory; export one with "
            f"python -m mrnet_ray.best --run-dir RUN_DIR --export {root}"
        )
    config_path, weights_path = root / CONFIG, root / WEIGHTS
    if not config_path.is_file():
        raise _fail(config_path, "missing, so this is no complete model bundle")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(config_path, f"not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise _fail(config_path, f"bundle format {found!r}, this version reads {FORMAT}")
    try:
        trial = TrialConfig.from_dict(config["trial"])
        feature = FeatureConfig.from_dict(config["feature"])
        labels = tuple(str(x) for x in config["labels"])
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(config_path, f"bad or missing entry {e}") from None
    if len(labels) != trial.model.n_classes or feature.n_mels != trial.model.n_mels:
        raise _fail(
            config_path,
            f"{len(labels)} labels and {feature.n_mels} mel bands do not fit a model of "
            f"{trial.model.n_classes} classes and {trial.model.n_mels} bands",
        )
    if not weights_path.is_file():
        raise _fail(weights_path, "missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _fail(weights_path, f"unreadable safetensors file ({e})") from None
    from mrnet_ray.nn import model_from_weights

    model = model_from_weights(trial.model, weights, str(weights_path), REEXPORT)
    rest = {k: v for k, v in config.items() if k not in ("format", "trial", "feature", "labels")}
    return Bundle(root, model, trial, feature, labels, rest)
