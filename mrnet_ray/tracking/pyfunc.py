"""The registered model as MLflow sees it: a pyfunc model that takes audio.

A registered version is this model, so it loads without Ray and without mrnet_ray's commands::

    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    model.predict(pd.DataFrame({"audio": [open("song.mp3", "rb").read()]}))  # or {"path": [...]}

and ``mlflow models serve -m models:/NAME@champion --env-manager local`` answers
``POST /invocations`` with ``{"dataframe_split": {"columns": ["audio"], "data": [[BASE64]]}}``
(binary values travel base64-encoded; send ``audio`` or ``path``, leaving the other column
out) and ``{"params": {"top_k": K}}``. Each input row gives one output row: ``label``,
``prob``, ``top_k`` (``[{"label", "prob"}, ...]``), ``segments`` and ``error`` (None, or the
one-line reason the row's audio could not be classified: the other rows still are).

The model holds the bundle's ``config.json`` and ``model.safetensors`` (artifact ``bundle``)
and the weights' sha256 (``model_config``), which it checks when it loads. Decoding, the
frontend and the model are :mod:`mrnet_ray.inference.predict`'s, so its answers equal
``predict``'s. MLflow keeps the model class by reference (``python_model.pkl``, cloudpickle),
so mrnet_ray must be importable where it loads: ``--env-manager local`` in this project's
environment; loading it unpickles that file, so load models only from a store you trust.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

AUDIO_MODEL = "audio_model"
"""Name of the pyfunc model in the export run (the PyTorch model is ``model``)."""
SHA256_KEY = "weights_sha256"
COLUMNS = ["label", "prob", "top_k", "segments", "error"]
REQUIREMENTS = ("torch", "torchaudio", "soundfile", "safetensors", "numpy", "pandas")


class AudioModel(mlflow.pyfunc.PythonModel):
    """Audio in a DataFrame (``audio`` bytes or ``path``) -> one answer row per input row."""

    def load_context(self, context: Any) -> None:
        from mrnet_ray.errors import UserError
        from mrnet_ray.export.bundle import WEIGHTS, load_bundle, weights_sha256

        path = Path(context.artifacts["bundle"])
        expected = (context.model_config or {}).get(SHA256_KEY)
        if (path / WEIGHTS).is_file() and weights_sha256(path) != expected:
            raise UserError(
                f"{path / WEIGHTS}: its sha256 is not the {str(expected)[:16]}... this model "
                "was logged with; its artifacts changed after logging, so it is refused"
            )
        self.bundle = load_bundle(path)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from mrnet_ray.features import AudioError
        from mrnet_ray.inference.predict import answer, file_segments, predict_batch

        frame = pd.DataFrame(model_input)
        labels = self.bundle.labels
        k = min(max(1, int((params or {}).get("top_k", len(labels)))), len(labels))
        rows: list[dict] = []
        good, batch = [], []
        for i in range(len(frame)):
            try:
                source, name = _source(frame, i)
                batch.append(file_segments(source, self.bundle.feature, name))
            except AudioError as e:
                rows.append(
                    {"label": None, "prob": None, "top_k": [], "segments": 0, "error": str(e)}
                )
                continue
            rows.append({})
            good.append(i)
        if batch:
            names = [f"row {i}" for i in good]
            for i, p in zip(good, predict_batch(self.bundle.model, batch, names), strict=True):
                rows[i] = {**answer(p, labels, k), "error": None}
        # object columns: None stays None (pandas' string columns would make it NaN)
        return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in COLUMNS})


def _source(frame: pd.DataFrame, i: int) -> tuple[io.BytesIO | str, str]:
    """Row ``i``'s audio and what messages call it: its ``audio`` bytes if non-empty, else
    its ``path``; AudioError for a row with neither."""
    from mrnet_ray.features import AudioError

    audio = frame["audio"].iloc[i] if "audio" in frame else None
    path = frame["path"].iloc[i] if "path" in frame else None
    if isinstance(audio, bytes | bytearray) and len(audio) > 0:
        return io.BytesIO(bytes(audio)), f"row {i}"
    if isinstance(path, str) and path:
        return path, path
    if isinstance(audio, str) and audio:
        raise AudioError(f"row {i}: audio must be bytes, not text (base64 only over HTTP)")
    raise AudioError(f"row {i}: no audio; give an 'audio' column of bytes or a 'path' column")


def signature() -> Any:
    """Inputs: optional ``audio`` (binary) and ``path`` (string) columns; param ``top_k``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec("binary", "audio", required=False), ColSpec("string", "path", required=False)]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", 3)]),
    )


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """``logger`` at ERROR and MLflow's artifact progress bars off, for a while."""
    log, bar = logging.getLogger(logger), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    level, shown = log.level, os.environ.get(bar)
    log.setLevel(logging.ERROR)
    os.environ[bar] = "false"
    try:
        yield
    finally:
        log.setLevel(level)
        if shown is None:
            os.environ.pop(bar, None)
        else:
            os.environ[bar] = shown


def log_audio_model(bundle_dir: Path, sha256: str) -> str:
    """Log the pyfunc model of ``bundle_dir`` in the active run; returns its model URI."""
    from mrnet_ray.export.bundle import CONFIG, WEIGHTS

    pins = [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "bundle"
        staged.mkdir()
        for name in (CONFIG, WEIGHTS):  # what load_bundle reads; not the exported formats
            shutil.copy2(bundle_dir / name, staged / name)
        # MLflow warns that a pickled model runs code when loaded (module docstring)
        with warnings.catch_warnings(), _quiet("mlflow.pyfunc"):
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name=AUDIO_MODEL,
                python_model=AudioModel(),
                artifacts={"bundle": str(staged)},
                signature=signature(),
                model_config={SHA256_KEY: sha256},
                pip_requirements=pins,
            )
    return info.model_uri
