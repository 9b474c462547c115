"""One trial of a search: a Tune *function* trainable that trains one drawn configuration.

It maps the drawn parameters to a :class:`TrialConfig` and drives Ray Train (Ray Train V2: a
``TorchTrainer`` is never handed to ``Tuner``): :func:`mrnet_ray.training.raytrain.make_trainer`
named after the Tune trial id, then ``fit()``.

Failures are retried in one place, Tune (``--max-failures``): a retried trial builds a trainer
of the same name, and Ray Train resumes it from that run's latest checkpoint. Ray Train's own
worker restarts are off inside a search, so a deterministic error (a diverged loss) costs at
most ``max_failures`` re-runs of one epoch; node preemptions are still retried by Ray Train
without limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from mrnet_ray.config import ResourcesConfig
from mrnet_ray.search.settings import SearchSettings
from mrnet_ray.search.space import SearchSpace
from mrnet_ray.training.raytrain import make_trainer, worker_error


class TrialFailed(RuntimeError):
    """A trial's training failed; the message is the first worker's error, in one line."""


@dataclass(frozen=True)
class TrialJob:
    """What every trial needs besides its drawn parameters (given via ``tune.with_parameters``)."""

    data: str
    space: SearchSpace
    n_mels: int
    n_classes: int
    resources: ResourcesConfig
    train_storage: str


def mrnet_trial(config: dict[str, Any], job: TrialJob) -> None:
    """Tune function trainable: train one drawn config with Ray Train, reporting every epoch."""
    trial = job.space.to_trial(config, n_mels=job.n_mels, n_classes=job.n_classes)
    trainer = make_trainer(
        job.data,
        trial,
        job.resources,
        job.train_storage,
        # The trial id, never a timestamp: a retried or resumed trial finds its checkpoints.
        tune.get_context().get_trial_id(),
        [TuneReportCallback()],
        max_failures=0,  # retries happen once, in Tune (module docstring)
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as e:
        rank, cause = worker_error(e)
        message = str(cause).strip().splitlines()[-1] if str(cause).strip() else ""
        raise TrialFailed(f"rank {rank}: {type(cause).__name__}: {message}") from e


def trainable(settings: SearchSettings, space: SearchSpace, n_mels: int, n_classes: int) -> Any:
    """The Tune trainable of a search (rebuilt identically on ``--resume``)."""
    job = TrialJob(
        settings.data, space, n_mels, n_classes, settings.resources, settings.train_storage
    )
    return tune.with_resources(
        tune.with_parameters(mrnet_trial, job=job), {"CPU": settings.trial_cpus}
    )
