"""One trial of a search: a Tune *function* trainable that trains one drawn configuration.

It maps the drawn parameters to a :class:`TrialConfig`, then trains it one of two ways, the
same epoch body either way (:func:`mrnet_ray.training.fit.fit`):

- ``tune``: in the trial's own process (:func:`~mrnet_ray.training.intrial.train_in_trial`),
  reporting every epoch to Tune: no Ray Train controller, worker group or placement group,
  so a trial starts in about a second; Tune reuses trial processes, so imports are paid once;
- ``train``: through Ray Train (Ray Train V2: a ``TorchTrainer`` is never handed to
  ``Tuner``), :func:`~mrnet_ray.training.raytrain.make_trainer` named after the Tune trial id,
  then ``fit()``; DDP trials take this way.

Both read the train and valid splits the driver shared once for the whole search.

Failures are retried in one place, Tune (``--max-failures``): a retried trial resumes from
its latest checkpoint (Tune's own, or the Ray Train run of the same name). Ray Train's own
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

from mrnet_ray.config import ResourcesConfig, TrialConfig
from mrnet_ray.search.settings import SearchSettings
from mrnet_ray.search.space import SearchSpace
from mrnet_ray.shards import open_prepared
from mrnet_ray.training.feed import SharedSplits
from mrnet_ray.training.fit import plan
from mrnet_ray.training.intrial import train_in_trial
from mrnet_ray.training.raytrain import fit_to_data, make_trainer, worker_error

SEED_KEY = "confirm.seed"
"""A Tune config key that replaces ``train.seed``: a confirmation's new seeds."""
EPOCHS_KEY = "final.epochs"
"""A Tune config key that replaces ``train.epochs``: a final fit's epoch count."""
FIT_ON_KEY = "final.fit_on"
"""A Tune config key saying what to train on (``train+valid``: a final fit)."""


def trial_config(
    space: SearchSpace, n_mels: int, n_classes: int, config: dict[str, Any]
) -> TrialConfig:
    """What a trial of ``config`` trains: the space's drawn and fixed fields, the data's bands
    and classes, and a planned run's seed (:data:`SEED_KEY`) or epochs (:data:`EPOCHS_KEY`)."""
    trial = space.to_trial(config, n_mels=n_mels, n_classes=n_classes)
    if SEED_KEY in config:
        trial = trial.replace(train=trial.train.replace(seed=int(config[SEED_KEY])))
    if EPOCHS_KEY in config:
        trial = trial.replace(train=trial.train.replace(epochs=int(config[EPOCHS_KEY])))
    return trial


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
    executor: str
    """``tune`` or ``train`` (:data:`mrnet_ray.search.settings.TrialExecutor`)."""
    shared: SharedSplits | None
    """The splits in Ray's object store; None: trials stream them from Parquet."""


def mrnet_trial(config: dict[str, Any], job: TrialJob) -> None:
    """Tune function trainable: train one drawn config, reporting every epoch."""
    trial = trial_config(job.space, job.n_mels, job.n_classes, config)
    fit_on = config.get(FIT_ON_KEY, "train")
    if job.executor == "tune":
        prepared = open_prepared(job.data)
        trial = fit_to_data(trial, prepared)
        run = plan(prepared, trial, 1, fit_on)
        train_in_trial(job.data, trial, run, job.resources, job.shared, fit_on)
        return
    trainer = make_trainer(
        job.data,
        trial,
        job.resources,
        job.train_storage,
        # The trial id, never a timestamp: a retried or resumed trial finds its checkpoints.
        tune.get_context().get_trial_id(),
        [TuneReportCallback()],
        max_failures=0,  # retries happen once, in Tune (module docstring)
        shared=job.shared,
        fit_on=fit_on,
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as e:
        rank, cause = worker_error(e)
        message = str(cause).strip().splitlines()[-1] if str(cause).strip() else ""
        raise TrialFailed(f"rank {rank}: {type(cause).__name__}: {message}") from e


def trainable(
    settings: SearchSettings,
    space: SearchSpace,
    n_mels: int,
    n_classes: int,
    shared: SharedSplits | None,
) -> Any:
    """The Tune trainable of a search (rebuilt identically on ``--resume``): a trial that
    trains itself holds its worker's CPUs and GPUs, one driving Ray Train only ``trial_cpus``."""
    job = TrialJob(
        settings.data, space, n_mels, n_classes, settings.resources, settings.train_storage,
        settings.executor, shared,
    )  # fmt: skip
    r = settings.resources
    held = (
        {"CPU": r.cpus_per_worker, "GPU": r.gpus_per_worker}
        if settings.executor == "tune"
        else {"CPU": settings.trial_cpus}
    )
    return tune.with_resources(tune.with_parameters(mrnet_trial, job=job), held)
