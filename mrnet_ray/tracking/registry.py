"""The model registry: ``best --export`` logs and registers bundles, ``predict models:/...``
reads them back.

An export run holds the PyTorch model (``model``), the bundle's files (``bundle/``) and the
pyfunc model that takes audio (``audio_model``, :mod:`~mrnet_ray.tracking.pyfunc`); the
registered version is the pyfunc model, tagged with the sha256 of the bundle's weights, which
``predict models:/...`` checks the downloaded bundle against."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mrnet_ray.errors import UserError
from mrnet_ray.tracking.runs import log_metrics
from mrnet_ray.tracking.store import TAG_PARENT

TAG_TEST_ACC = "test_track_acc"
"""Model-version tag: track accuracy on the prepared data's test split."""
TAG_SOURCE_TRIAL = "mrnet_ray.source_trial"
"""Export runs name their trial here, not in ``trial_id``, which marks trial runs."""
TAG_WEIGHTS_SHA256 = "weights_sha256"
"""Model-version tag: hex sha256 of the bundle's ``model.safetensors``."""
BUNDLE_ARTIFACTS = "bundle"
"""Artifact folder of an export run holding the exported bundle's files."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version, as ``best`` compares and ``predict`` downloads it."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]


def log_export(
    uri: str,
    experiment_id: str,
    parent_run_id: str | None,
    run_name: str,
    model: Any,
    input_example: Any,
    bundle_dir: Path,
    tags: Mapping[str, str],
    metrics: Mapping[str, float] = {},
) -> tuple[str, str]:
    """A new run (nested under ``parent_run_id``) holding ``metrics``, the model in MLflow's
    format, the bundle's files under :data:`BUNDLE_ARTIFACTS` and the pyfunc model of the
    bundle; returns ``(run_id, model_uri)`` of the pyfunc model, the one to register.
    ``tags`` (set on the run) must hold :data:`TAG_WEIGHTS_SHA256`.

    The signature leaves batch and frames open: ``(-1, n_mels, -1)`` -> ``(-1, n_classes)``.
    MLflow 3 saves the model with ``torch.export`` (no pickle); the input example must have
    more than one row and frame, or export fixes that dimension.
    """
    import importlib.metadata

    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from mrnet_ray.tracking.pyfunc import log_audio_model

    with torch.no_grad():
        n_classes = model(torch.from_numpy(input_example)).shape[1]
    n_mels = input_example.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_mels, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes))]),
    )
    client = MlflowClient(uri)
    run_tags = {**tags, **({TAG_PARENT: parent_run_id} if parent_run_id else {})}
    run_id = client.create_run(experiment_id, run_name=run_name, tags=run_tags).info.run_id
    with _global_uri(uri), mlflow.start_run(run_id=run_id):  # log_model is fluent-only
        mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            # Pinned here: inferring requirements reloads the model in a subprocess.
            pip_requirements=[f"torch=={importlib.metadata.version('torch')}"],
        )
        client.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACTS)
        audio_uri = log_audio_model(bundle_dir, tags[TAG_WEIGHTS_SHA256])
        log_metrics(client, run_id, metrics, step=0)
    return run_id, audio_uri


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for a while: fluent calls use it, and so
    does the sqlite registry when it resolves a ``models:/m-...`` source (MLflow 3.17)."""
    import mlflow

    # set_tracking_uri also exports MLFLOW_TRACKING_URI; restoring through it would leave the
    # resolved default (sqlite:///mlflow.db in the cwd) in the environment for later searches.
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            mlflow.set_tracking_uri(None)
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(previous_env)


def register_version(
    uri: str, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]
) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``name`` (created if missing)."""
    client = MlflowClient(uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with _global_uri(uri):
        mv = client.create_model_version(
            name, model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
        )
    return ModelVersion(name, str(mv.version), run_id, dict(tags))


def alias_version(uri: str, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points to, or None if the model or the alias does not exist."""
    client = MlflowClient(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return ModelVersion(name, str(mv.version), mv.run_id, dict(mv.tags))


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``. Two first writes of an alias at once can collide in a
    database store (both insert: a unique-constraint error); the second then updates."""
    client = MlflowClient(uri)
    for attempt in range(3):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as e:
            collided = "UNIQUE constraint" in str(e) or "Duplicate entry" in str(e)
            if not collided or attempt == 2:
                raise


def resolve_model_uri(uri: str, model_uri: str) -> ModelVersion:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> the registered version."""
    ref = model_uri.removeprefix("models:/")
    name, at, alias = ref.partition("@")
    if not at:
        name, _, alias = ref.rpartition("/")
    if not name or not alias:
        raise UserError(
            f"{model_uri}: not a registered-model URI; use models:/<name>@<alias> "
            "or models:/<name>/<version>"
        )
    client = MlflowClient(uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if at
            else client.get_model_version(name, alias)
        )
    except MlflowException as e:
        raise UserError(
            f"{model_uri}: not found in the registry at {uri} ({e.message.splitlines()[0]}); "
            "check the name and alias, or --mlflow-uri"
        ) from None
    return ModelVersion(name, str(mv.version), mv.run_id, dict(mv.tags))


def download_bundle(uri: str, version: ModelVersion, dst: Path) -> Path:
    """The bundle files logged with ``version`` (by :func:`log_export`), downloaded to ``dst``."""
    import mlflow.artifacts

    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one line per error on stderr
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=BUNDLE_ARTIFACTS, dst_path=str(dst),
            tracking_uri=uri,
        )  # fmt: skip
    except (MlflowException, OSError) as e:
        raise UserError(
            f"models:/{version.name}/{version.version}: its run {version.run_id} holds no "
            f"readable {BUNDLE_ARTIFACTS}/ artifacts ({e}); re-export with "
            "python -m mrnet_ray.best --export"
        ) from None
    return Path(path)
