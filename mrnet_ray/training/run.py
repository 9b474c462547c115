"""One training run, as ``python -m mrnet_ray.train`` asks for it: config file, run name, resume.

``FILE.yaml`` has ``model:`` and ``train:`` sections of :class:`MRNetConfig` and
:class:`TrainConfig` fields; ``n_mels`` and ``n_classes`` come from the prepared data. The run
is named from the config and the data unless ``--name`` is given, so running the same command
again resumes it, and a larger ``--epochs`` continues it. Ray is joined at ``RAY_ADDRESS`` or
started locally.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import ray
import ray.train
import yaml

from mrnet_ray import ranking
from mrnet_ray.config import ResourcesConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.shards import Prepared, open_prepared
from mrnet_ray.storage import join as storage_join
from mrnet_ray.training.checkpoint import load_checkpoint
from mrnet_ray.training.fit import check_same_model
from mrnet_ray.training.raytrain import absolute_storage, fit_to_data, make_trainer, worker_error


class ProgressPrinter(ray.train.UserCallback):
    """One line per epoch. Runs in the Train controller; Ray forwards its output to the driver."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        print(f"epoch {metrics[0]['epoch']}/{self.epochs}  {_summary(metrics[0])}", flush=True)


def _summary(m: dict[str, Any]) -> str:
    return (
        f"train loss {m['train_loss']:.3f} acc {m['train_acc']:.3f} | valid loss "
        f"{m['valid_loss']:.3f} acc {m['valid_acc']:.3f} track acc {m['valid_track_acc']:.3f} "
        f"macro-F1 {m['valid_macro_f1']:.3f} | lr {m['lr']:.2e} "
        f"{m['samples_per_s']:.0f} samples/s {m['epoch_time_s']:.1f} s"
    )


def load_trial(path: str | None) -> tuple[TrialConfig, dict[str, Any]]:
    """The ``TrialConfig`` of a YAML file of ``model:`` and ``train:`` sections, and its values."""
    if path is None:
        return TrialConfig(), {}
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read the config ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(values, dict) or any(
        not isinstance(values.get(s) or {}, dict) for s in ("model", "train")
    ):
        raise UserError(f"{path}: expected a mapping with model: and train: sections of fields")
    try:
        return TrialConfig.from_dict(values), values
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    except TypeError as e:  # a string where a number belongs, and similar
        raise UserError(f"{path}: a field has a value of the wrong type ({e})") from None


def _check_data_fields(values: dict[str, Any], prepared: Prepared, path: str | None) -> None:
    """A config may name n_mels/n_classes, but they must agree with the data they come from."""
    model = values.get("model") or {}
    actual = {"n_mels": prepared.feature.n_mels, "n_classes": len(prepared.labels)}
    for field, value in actual.items():
        if field in model and model[field] != value:
            raise UserError(
                f"{path}: model.{field}={model[field]} but {prepared.path} has {value}; "
                f"remove {field} (it is read from the prepared data)"
            )


def default_name(trial: TrialConfig, prepared: Prepared) -> str:
    """Same config and data -> same name, so re-running resumes; epochs are left out so that
    asking for more epochs continues the run."""
    spec = trial.to_dict()
    del spec["train"]["epochs"]
    digest = hashlib.sha1(
        json.dumps([spec, prepared.content_hash], sort_keys=True).encode()
    ).hexdigest()
    return f"{trial.model.arch}-{digest[:10]}"


def _latest_state(storage: str, name: str) -> dict[str, Any] | None:
    """The latest checkpoint of run ``name`` under ``storage``, if that run has one."""
    try:
        result = ray.train.Result.from_path(storage_join(absolute_storage(storage), name))
    except RuntimeError:  # no such run yet
        return None
    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def train_run(
    data: str,
    config: str | None,
    epochs: int | None,
    resources: ResourcesConfig,
    storage: str,
    name: str | None,
) -> None:
    """Train (or resume, or leave alone when done) the run of ``config`` on ``data``; prints
    a line per epoch, then the last and the best epoch and the best checkpoint."""
    trial, values = load_trial(config)
    if epochs is not None:
        try:
            trial = trial.replace(train=trial.train.replace(epochs=epochs))
        except ValueError as e:
            raise UserError(f"--epochs: {e}") from None
    prepared = open_prepared(data)
    _check_data_fields(values, prepared, config)
    name = name or default_name(fit_to_data(trial, prepared), prepared)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    previous = _latest_state(storage, name)
    if previous is not None:
        check_same_model(previous, fit_to_data(trial, prepared), storage_join(storage, name))
        if previous["epoch"] >= trial.train.epochs:
            print(f"run {name} already has {previous['epoch']} epochs; ask for more with --epochs")
            print(f"last (epoch {previous['epoch']}): {_summary(previous['metrics'])}")
            return
        print(f"resuming run {name} after epoch {previous['epoch']}")
    trainer = make_trainer(
        data, trial, resources, storage, name, [ProgressPrinter(trial.train.epochs)]
    )
    try:
        result = trainer.fit()
    except ray.train.WorkerGroupError as e:  # a worker found a user mistake: say it in one line
        _, cause = worker_error(e)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise
    best, best_metrics = ranking.best_of(
        result.best_checkpoints or [(result.checkpoint, result.metrics)],
        metrics_of=lambda pair: pair[1],
    )
    run = storage_join(absolute_storage(storage), name)  # result.path drops s3:// etc.
    print(f"run {name} in {run}")
    print(f"last (epoch {result.metrics['epoch']}): {_summary(result.metrics)}")
    print(f"best (epoch {best_metrics['epoch']}): {_summary(best_metrics)}")
    print(f"best checkpoint: {storage_join(run, Path(best.path).name)}")
