"""The search's Ray side: its settings, the trial trainable, and the Tuner around them.

A trial is a Tune *function* trainable that drives Ray Train (Ray Train V2: a ``TorchTrainer``
is never handed to ``Tuner``): it maps the drawn parameters to a :class:`TrialConfig`, builds
:func:`mrnet_ray.train.make_trainer` named after the Tune trial id and calls ``fit()``. The
trainable itself holds only ``trial_cpus`` (0.2 CPU); its Train workers reserve their own
resources, which Tune does not see, so the driver caps concurrency itself
(:func:`default_concurrency`).

Failures are retried in one place, Tune (``--max-failures``): a retried trial builds a trainer
of the same name, and Ray Train resumes it from that run's latest checkpoint. Ray Train's own
worker restarts are off inside a search, so a deterministic error (a diverged loss) costs at
most ``max_failures`` re-runs of one epoch; node preemptions are still retried by Ray Train
without limit.

>>> trial_needs(ResourcesConfig(num_workers=2, cpus_per_worker=0.4), trial_cpus=0.2)
{'CPU': 1.0, 'GPU': 0.0}
>>> default_concurrency({"CPU": 1.0, "GPU": 0.0}, {"CPU": 8.0})
7
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import ray
import ray.train
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from mrnet_ray.config import ResourcesConfig, TrainConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search_space import SearchSpace
from mrnet_ray.space_file import Fixed, values
from mrnet_ray.storage import join
from mrnet_ray.train import make_trainer

METRIC = "valid_track_acc"
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "acc": (METRIC,),
    "acc-params": (METRIC, "params"),
    "acc-flops": (METRIC, "flops"),
}
"""``--objective`` -> the metrics Optuna optimises (more than one: a Pareto front)."""
MODES = {METRIC: "max", "params": "min", "flops": "min"}
DATA_CPU_RESERVE = 1.0
"""CPUs left free when deriving concurrency: Ray Data's read tasks take one whole CPU each,
and trials whose workers hold every CPU would wait on them forever."""

Scheduler = Literal["asha", "fifo"]
Sampler = Literal["tpe", "random"]


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search was started with; saved in ``search.json`` so ``--resume`` (and
    ``best``) need only the run directory."""

    name: str
    data: str
    space: str
    """The space file (absolute path)."""
    run_dir: str
    storage: str
    """Ray results root: an absolute local path or a URI (s3://...)."""
    tracking_uri: str
    experiment: str
    num_samples: int
    time_budget_s: float | None
    max_concurrent: int
    resources: ResourcesConfig
    trial_cpus: float
    scheduler: Scheduler
    searcher: Sampler
    seed: int
    objective: str
    max_failures: int

    @property
    def experiment_path(self) -> str:
        """Tune's experiment directory (``Tuner.restore`` takes it)."""
        return join(self.storage, self.name)

    @property
    def train_storage(self) -> str:
        """Ray Train runs (checkpoints) of the trials: ``<train_storage>/<trial_id>``."""
        return join(self.experiment_path, "train")

    @property
    def journal(self) -> Path:
        """The Optuna study's journal file (``optuna-dashboard`` and ``optuna.load_study``)."""
        return Path(self.run_dir) / "optuna.journal"

    @property
    def metrics(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["resources"] = self.resources.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        return cls(**{**kept, "resources": ResourcesConfig.from_dict(kept["resources"])})


def init_ray() -> None:
    """Connect to the cluster (``RAY_ADDRESS``, else one ``ray start`` made here), else start
    a local one.

    A local one gets a known dashboard address in its job's environment: when Tune stops a
    trial (ASHA), Ray Train's placement-group cleaner asks the dashboard whether the trial's
    controller still lives, and on a machine running other Ray instances it cannot tell which
    dashboard is its own; the stopped trial's workers' CPUs then stay reserved and later
    trials wait for them forever.
    """
    if ray.is_initialized():
        return
    try:  # what ray.init() itself does to decide between connecting and starting
        from ray._private.services import canonicalize_bootstrap_address

        existing = canonicalize_bootstrap_address(None)
    except Exception:
        existing = "unknown"
    if existing is not None:
        ray.init()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        # Ray Data's INFO lines (execution plans, per-epoch starts) from every trial's data
        # split would bury the trial table; RAY_DATA_LOG_LEVEL=INFO brings them back.
        "RAY_DATA_LOG_LEVEL": os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING"),
    }
    ray.init(dashboard_port=port, runtime_env={"env_vars": env})


# ---- resources --------------------------------------------------------------------------------


def trial_needs(resources: ResourcesConfig, trial_cpus: float) -> dict[str, float]:
    """What one running trial holds: its driver plus its Train workers."""
    n = resources.num_workers
    return {
        "CPU": round(trial_cpus + n * resources.cpus_per_worker, 6),
        "GPU": round(n * resources.gpus_per_worker, 6),
    }


BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
"""The cluster config ``ray up`` leaves on the head node (node types with their resources)."""


def cluster_capacity(bootstrap: Path = BOOTSTRAP_CONFIG) -> dict[str, float]:
    """The cluster's CPUs and GPUs: those up now, or more if an autoscaler may add nodes (a
    launcher cluster's GPU workers start at zero)."""
    have, most = ray.cluster_resources(), autoscaler_max(bootstrap)
    return {k: max(float(have.get(k, 0)), most.get(k, 0.0)) for k in ("CPU", "GPU")}


def autoscaler_max(bootstrap: Path = BOOTSTRAP_CONFIG) -> dict[str, float]:
    """The most CPUs and GPUs the autoscaler may reach: from the cluster config it keeps in
    Ray's GCS (autoscaler v2, KubeRay), else from ``ray up``'s config on this head node."""
    try:  # a private API, hence the broad except: no autoscaler info is no autoscaler
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:
        found = None
    if found:
        return {k: float(found.get(k, 0)) for k in ("CPU", "GPU")}
    path = bootstrap.expanduser()
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    limit = config.get("max_workers", math.inf)
    most = {"CPU": 0.0, "GPU": 0.0}
    for name, node in (config.get("available_node_types") or {}).items():
        count = (
            1 if name == config.get("head_node_type") else min(node.get("max_workers", 0), limit)
        )
        for k in most:
            most[k] += count * float((node.get("resources") or {}).get(k, 0))
    return most


def check_feasible(needs: dict[str, float], capacity: dict[str, float]) -> None:
    """One line naming what a trial needs and what the cluster has, if it can never start."""
    short = [k for k in ("CPU", "GPU") if needs[k] > capacity.get(k, 0.0) + 1e-9]
    if short:
        want = ", ".join(f"{needs[k]:g} {k}" for k in ("CPU", "GPU"))
        have = ", ".join(f"{capacity.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))
        raise UserError(
            f"one trial needs {want} (--trial-cpus + --workers x --cpus-per-worker / "
            f"--gpus-per-worker) but the cluster has {have}; ask for less or add nodes"
        )


def default_concurrency(needs: dict[str, float], capacity: dict[str, float]) -> int:
    """How many trials fit at once, keeping :data:`DATA_CPU_RESERVE` CPUs free; at least 1."""
    fits = [math.floor((capacity.get("CPU", 0.0) - DATA_CPU_RESERVE) / needs["CPU"] + 1e-9)]
    if needs["GPU"] > 0:
        fits.append(math.floor(capacity.get("GPU", 0.0) / needs["GPU"] + 1e-9))
    return max(1, min(fits))


# ---- the trial --------------------------------------------------------------------------------


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
        rank, error = min(e.worker_failures.items())
        cause = getattr(error, "cause", None) or error  # a RayTaskError wraps the worker's error
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


# ---- searcher, scheduler, tuner ---------------------------------------------------------------


def max_epochs(space: SearchSpace) -> int:
    """The most epochs a trial of ``space`` trains (ASHA's ``max_t``)."""
    spec = space.fields["train"].get("epochs", Fixed(TrainConfig().epochs))
    return int(max(values(spec)))


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """The Optuna study's storage: a journal file (``optuna-dashboard FILE`` reads it)."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def drop_stale_study(settings: SearchSettings) -> None:
    """Delete the study of a new search's name if the journal already has one: it is left from
    a start that failed before its first trial, and would hand its queued default point on."""
    if not settings.journal.exists():
        return
    storage = journal_storage(settings.journal)
    if settings.name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        optuna.delete_study(study_name=settings.name, storage=storage)


def make_searcher(settings: SearchSettings, space: SearchSpace) -> OptunaSearch:
    """Optuna over the space's define-by-run function; the first trial is the paper-like
    default; the study lives in the journal file beside the run."""
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = (
            optuna.samplers.TPESampler(
                seed=settings.seed, multivariate=True, group=True, constant_liar=True
            )
            if settings.searcher == "tpe"
            else optuna.samplers.RandomSampler(seed=settings.seed)
        )
    metrics = settings.metrics
    return OptunaSearch(
        space=space.define_by_run,
        metric=metrics[0] if len(metrics) == 1 else list(metrics),
        mode=MODES[metrics[0]] if len(metrics) == 1 else [MODES[m] for m in metrics],
        points_to_evaluate=[space.default_point()],
        sampler=sampler,
        study_name=settings.name,
        # A file path and offsets: it pickles with the searcher into Tune's experiment state
        # and reads the journal again after a restore.
        storage=journal_storage(settings.journal),
    )


def make_scheduler(settings: SearchSettings, space: SearchSpace) -> TrialScheduler:
    """ASHA on the epoch count (not Tune's iteration, which restarts with a resumed trial), or
    FIFO; short searches get a grace period of 1 epoch and halving, long ones 2 and thirds."""
    if settings.scheduler == "fifo":
        return FIFOScheduler()
    top = max_epochs(space)
    return ASHAScheduler(
        time_attr="epoch",
        max_t=top,
        grace_period=1 if top < 10 else 2,
        reduction_factor=2 if top < 10 else 3,
    )


def make_reporter(settings: SearchSettings, space: SearchSpace) -> tune.CLIReporter:
    """The trial table: accuracy, loss and size columns, and the first few drawn parameters."""
    single = len(settings.metrics) == 1
    return tune.CLIReporter(
        metric_columns={
            "epoch": "epoch",
            METRIC: "track acc",
            "valid_loss": "valid loss",
            "params": "params",
        },
        parameter_columns=list(space.default_point())[:4],
        max_report_frequency=30,
        sort_by_metric=single,  # by TuneConfig's metric and mode
    )


def trial_dirname(trial: Any) -> str:
    """``mrnet_trial_<id>``: Tune's default appends every drawn parameter to the name."""
    return f"mrnet_trial_{trial.trial_id}"


def make_tuner(
    settings: SearchSettings,
    space: SearchSpace,
    trainable_: Any,
    callbacks: list[tune.Callback],
) -> tune.Tuner:
    single = len(settings.metrics) == 1
    return tune.Tuner(
        trainable_,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(settings, space),
            scheduler=make_scheduler(settings, space),
            metric=METRIC if single else None,
            mode="max" if single else None,
            num_samples=settings.num_samples,
            max_concurrent_trials=settings.max_concurrent,
            time_budget_s=settings.time_budget_s,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            progress_reporter=make_reporter(settings, space),
            verbose=2,
        ),
    )


def restore_tuner(settings: SearchSettings, trainable_: Any) -> tune.Tuner:
    """Continue an interrupted search: Tune brings back the pickled searcher (with its Optuna
    journal), scheduler and MLflow callback; unfinished trials resume from their Train
    checkpoints. Errored trials stay errored: they were already retried ``max_failures`` times,
    and a deterministic error would only repeat."""
    return tune.Tuner.restore(
        settings.experiment_path,
        trainable_,
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
