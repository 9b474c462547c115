"""What a search was started with: :class:`SearchSettings`, saved in ``search.json``.

``--resume``, ``best`` and the reports need only the run directory: the record
(:mod:`~mrnet_ray.search.record`) holds these settings and where everything went.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mrnet_ray import ranking
from mrnet_ray.config import ResourcesConfig
from mrnet_ray.errors import UserError
from mrnet_ray.storage import join

METRIC = ranking.PRIMARY
STORAGE_ENV = "MRNET_RAY_STORAGE"
"""The results root of searches started without ``--storage`` (else ``RUN_DIR/ray``)."""
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "acc": (METRIC,),
    "acc-params": (METRIC, "params"),
    "acc-flops": (METRIC, "flops"),
}
"""``--objective`` -> the metrics Optuna optimises (more than one: a Pareto front)."""

Scheduler = Literal["asha", "fifo"]
Sampler = Literal["tpe", "random"]
TrialExecutor = Literal["auto", "train", "tune"]
"""How trials train: ``tune`` in the Tune trial's own process (one worker), ``train`` through
Ray Train (any number of workers), ``auto`` the first for one worker and the second for DDP."""


@dataclass(frozen=True)
class SearchSettings:
    """Everything a search was started with; saved in ``search.json`` so ``--resume`` (and
    ``best``) need only the run directory."""

    name: str
    """The search's name: Tune experiment, Optuna study and MLflow search run."""
    data: str
    """The prepared directory (local path or URI)."""
    space: str
    """The space file (absolute path)."""
    run_dir: str
    """Where search.json, the Optuna journal and a local MLflow store live."""
    storage: str
    """Ray results root: an absolute local path or a URI (s3://...)."""
    tracking_uri: str
    """The MLflow store."""
    experiment: str = "mrnet_ray"
    """MLflow experiment."""
    num_samples: int = 16
    """Trials to train."""
    time_budget_s: float | None = None
    """Stop the search after this many seconds; None: no limit."""
    max_concurrent: int = 0
    """Trials at once; 0: what the cluster fits (set when the search starts)."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Each trial's workers."""
    trial_cpus: float = 0.2
    """CPU of a trial's driver when Ray Train runs its workers."""
    scheduler: Scheduler = "asha"
    """ASHA early stopping, or FIFO (every trial runs all its epochs)."""
    searcher: Sampler = "tpe"
    """Optuna's sampler."""
    seed: int = 0
    """The sampler's seed."""
    objective: str = "acc"
    """A key of :data:`OBJECTIVES`."""
    max_failures: int = 1
    """Restarts of a failed trial from its last checkpoint."""
    trial_executor: TrialExecutor = "auto"
    """See :data:`TrialExecutor`."""
    warm_start: tuple[str, ...] = ()
    """Run directories of earlier searches to start from (:mod:`~mrnet_ray.search.warm`)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"--objective {self.objective}: must be one of {', '.join(OBJECTIVES)}")
        if len(self.metrics) > 1 and self.scheduler == "asha":
            raise UserError(
                f"--objective {self.objective} has two metrics but ASHA ranks trials by one; "
                "drop --scheduler asha (FIFO is the default here)"
            )
        if self.num_samples < 1 or (self.time_budget_s is not None and self.time_budget_s <= 0):
            raise UserError("--num-samples and --time-budget must be positive")
        if self.max_failures < 0 or self.trial_cpus <= 0 or self.max_concurrent < 0:
            raise UserError("--max-failures and --max-concurrent must be >= 0, --trial-cpus > 0")
        if self.trial_executor == "tune" and self.resources.num_workers > 1:
            raise UserError(
                f"--trial-executor tune trains each trial in its own process, on one worker, "
                f"but --workers is {self.resources.num_workers}; use --trial-executor train "
                "(or auto) for DDP trials"
            )

    @property
    def executor(self) -> Literal["train", "tune"]:
        """The executor ``trial_executor`` resolves to."""
        if self.trial_executor != "auto":
            return self.trial_executor
        return "train" if self.resources.num_workers > 1 else "tune"

    @property
    def experiment_path(self) -> str:
        """Tune's experiment directory (``Tuner.restore`` takes it)."""
        return join(self.storage, self.name)

    @property
    def train_storage(self) -> str:
        """Ray Train runs (checkpoints) of the trials: ``<train_storage>/<trial_id>``."""
        return join(self.experiment_path, "train")

    def checkpoints(self, trial_id: str) -> str:
        """Where trial ``trial_id``'s checkpoints are (:func:`checkpoint_location`)."""
        return checkpoint_location(
            self.executor, self.experiment_path, self.train_storage, trial_id
        )

    def in_results(self, name: str) -> str:
        """``<experiment_path>/mrnet_ray/<name>``: what the search keeps in the results root
        beside Tune's state (:func:`results_file`)."""
        return results_file(self.experiment_path, name)

    @property
    def journal(self) -> Path:
        """The Optuna study's journal file (``optuna-dashboard`` and ``optuna.load_study``)."""
        return Path(self.run_dir) / "optuna.journal"

    @property
    def metrics(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective]

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(ranking.mode(m) for m in self.metrics)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["resources"] = self.resources.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        kept["warm_start"] = tuple(kept.get("warm_start", ()))
        return cls(**{**kept, "resources": ResourcesConfig.from_dict(kept["resources"])})


def checkpoint_location(
    executor: str, experiment_path: str, train_storage: str, trial_id: str
) -> str:
    """Where a trial's checkpoints are: its Tune trial directory when it trained itself, else
    its Ray Train run ``<train_storage>/<trial_id>``."""
    if executor == "tune":
        return join(experiment_path, trial_dirname_of(trial_id))
    return join(train_storage, trial_id)


def storage_root(storage: str) -> str:
    """A results root as the record keeps it: a URI as given, a path absolute."""
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


RESULTS_DIR = "mrnet_ray"


def results_file(experiment_path: str, name: str) -> str:
    """Where a search keeps ``name`` in the results root, beside Tune's state: its lock and
    copies of ``search.json`` and the Optuna journal, so that ``--resume`` works from a head
    whose run directory is empty (``s3://`` or any storage the heads share).

    >>> results_file("s3://b/runs/demo?endpoint_override=h:9000", "search.json")
    's3://b/runs/demo/mrnet_ray/search.json?endpoint_override=h:9000'
    """
    return join(experiment_path, RESULTS_DIR, name)


def trial_dirname_of(trial_id: str) -> str:
    """A trial's directory under the Tune experiment, ``mrnet_trial_<id>`` (Tune's default name
    would append every drawn parameter)."""
    return f"mrnet_trial_{trial_id}"


def default_name(space: Path, dataset: str, content_hash: str) -> str:
    """Space, dataset and data hash: stable, so ``--resume`` finds the same search.

    >>> default_name(Path("spaces/demo.yaml"), "demo", "0123456789abcdef")
    'demo-demo-01234567'
    """
    raw = f"{space.stem}-{dataset}-{content_hash[:8]}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)
