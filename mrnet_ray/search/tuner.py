"""The search's Tuner: Optuna as the searcher (its study in a journal file), ASHA or FIFO,
the trial table, and restoring an interrupted search."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mrnet_ray.config import TrainConfig
from mrnet_ray.search.journal import JOURNAL_COPY, CopiedOptunaSearch
from mrnet_ray.search.limits import GIVE_UP_AFTER, CostCheck, LimitedSearch
from mrnet_ray.search.settings import METRIC, SearchSettings, trial_dirname_of
from mrnet_ray.search.space import SearchSpace
from mrnet_ray.search.specs import Fixed, values


def max_epochs(space: SearchSpace) -> int:
    """The most epochs a trial of ``space`` trains (ASHA's ``max_t``)."""
    spec = space.fields["train"].get("epochs", Fixed(TrainConfig().epochs))
    return int(max(values(spec)))


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """The Optuna study's storage: a journal file (``optuna-dashboard FILE`` reads it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def drop_stale_study(settings: SearchSettings) -> None:
    """Delete the study of a new search's name if the journal already has one: it is left from
    a start that failed before its first trial, and would hand its queued default point on.
    Called under the search's lock (:mod:`~mrnet_ray.search.lock`), after the check that no
    Tune experiment of the run directory or the name exists, so the study is no running
    search's."""
    if not settings.journal.exists():
        return
    storage = journal_storage(settings.journal)
    if settings.name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        optuna.delete_study(study_name=settings.name, storage=storage)


def new_study(settings: SearchSettings) -> optuna.Study:
    """The search's study in its journal, created empty (the searcher loads it)."""
    directions = ["maximize" if m == "max" else "minimize" for m in settings.modes]
    return optuna.create_study(
        study_name=settings.name, storage=journal_storage(settings.journal),
        directions=directions, load_if_exists=True,
    )  # fmt: skip


def startup_trials(num_samples: int) -> int:
    """Trials TPE draws at random before it models the results: Optuna's 10 for searches of
    40 trials or more, a quarter of a smaller budget (at least 3), so a short search is not
    random search from start to end.

    >>> [startup_trials(n) for n in (4, 12, 24, 64)]
    [3, 3, 6, 10]
    """
    return min(10, max(3, num_samples // 4))


def make_searcher(
    settings: SearchSettings,
    space: SearchSpace,
    *,
    first: Sequence[dict[str, Any]] = (),
    check: CostCheck | None = None,
    record: Callable[[dict[str, Any], str, dict[str, float]], None] | None = None,
) -> OptunaSearch:
    """Optuna over the space's define-by-run function; the first trials are ``first`` (a warm
    start's), then the paper-like default; the study lives in the journal file beside the run.
    With a ``check`` of the space's limits, proposals over them are recorded (``record``) and
    never trained (:mod:`~mrnet_ray.search.limits`). Either keeps a copy of the journal in the
    results root (:mod:`~mrnet_ray.search.journal`)."""
    with warnings.catch_warnings():  # multivariate/group/constant_liar are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = (
            optuna.samplers.TPESampler(
                n_startup_trials=startup_trials(settings.num_samples),
                seed=settings.seed,
                multivariate=True,
                group=True,
                constant_liar=True,
            )
            if settings.searcher == "tpe"
            else optuna.samplers.RandomSampler(seed=settings.seed)
        )
    metrics = settings.metrics
    options: dict[str, Any] = {
        "space": space.define_by_run,
        "metric": metrics[0] if len(metrics) == 1 else list(metrics),
        "mode": settings.modes[0] if len(metrics) == 1 else list(settings.modes),
        "points_to_evaluate": [*first, space.default_point()],
        "sampler": sampler,
        "study_name": settings.name,
        # A file path and offsets: it pickles with the searcher into Tune's experiment state
        # and reads the journal again after a restore.
        "storage": journal_storage(settings.journal),
    }
    searcher: CopiedOptunaSearch | LimitedSearch
    if check is None or not space.limits:
        searcher = CopiedOptunaSearch(**options)
    else:
        searcher = LimitedSearch(
            **options,
            check=check,
            record=record or (lambda *_: None),
            give_up_after=GIVE_UP_AFTER * settings.num_samples,
        )
    searcher.journal_copy = (str(settings.journal), settings.in_results(JOURNAL_COPY))
    return searcher


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
    """Tune's ``trial_dirname_creator``: :func:`trial_dirname_of` the trial."""
    return trial_dirname_of(trial.trial_id)


def make_tuner(
    settings: SearchSettings,
    space: SearchSpace,
    trainable_: Any,
    callbacks: list[tune.Callback],
    searcher: Searcher,
    *,
    scheduler: TrialScheduler | None = None,
    num_samples: int | None = None,
) -> tune.Tuner:
    """The search's Tuner (a confirmation's too: its own searcher, FIFO, its own count)."""
    single = len(settings.metrics) == 1
    return tune.Tuner(
        trainable_,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler or make_scheduler(settings, space),
            metric=METRIC if single else None,
            mode="max" if single else None,
            num_samples=num_samples or settings.num_samples,
            max_concurrent_trials=settings.max_concurrent,
            time_budget_s=settings.time_budget_s,
            trial_dirname_creator=trial_dirname,
            # A trial that trains itself imports torch once per process, not once per trial.
            reuse_actors=settings.executor == "tune",
        ),
        run_config=tune.RunConfig(
            name=settings.name,
            storage_path=settings.storage,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            # Checkpoints of trials that train themselves (Ray Train keeps its own): the two
            # best by the metric, and the latest, which a retried trial resumes from.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=METRIC, checkpoint_score_order="max"
            ),
            progress_reporter=make_reporter(settings, space),
            verbose=2,
        ),
    )


def restore_tuner(settings: SearchSettings, trainable_: Any) -> tune.Tuner:
    """Continue an interrupted search: Tune brings back the pickled searcher (with its Optuna
    journal), scheduler and MLflow callback; unfinished trials resume from their latest
    checkpoints. Errored trials stay errored: they were already retried ``max_failures`` times,
    and a deterministic error would only repeat."""
    return tune.Tuner.restore(
        settings.experiment_path,
        trainable_,
        resume_unfinished=True,
        resume_errored=False,
        restart_errored=False,
    )
