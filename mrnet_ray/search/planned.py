"""Planned trials after a search: given configurations, trained by the search's own trainable.

A confirmation (new seeds of the top configurations) and a final fit (the winner on train +
valid) both run configurations known in advance rather than drawn: :func:`run_planned` hands
them to Tune one per trial (:class:`Points`), in a Tune experiment of their own beside the
search's (same Ray storage, same shared data, FIFO), each trial's MLflow run nested under the
search's run and tagged with its ``role``. Running it again resumes it: finished trials are
not trained again.

A planned configuration may carry keys the space does not draw, read by the trainable
(:func:`mrnet_ray.search.trial.trial_config`): a seed, an epoch count, the splits to fit on.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from mrnet_ray import tracking
from mrnet_ray.config import TrialConfig
from mrnet_ray.search import outcomes as outcomes_mod
from mrnet_ray.search import tuner as tuner_mod
from mrnet_ray.search.resources import init_ray
from mrnet_ray.search.settings import METRIC, SearchSettings
from mrnet_ray.search.space import SearchSpace, load_space
from mrnet_ray.search.trial import trainable, trial_config
from mrnet_ray.shards import Prepared, open_prepared
from mrnet_ray.training.feed import share


class Points(Searcher):
    """Hands Tune the given configurations, one per trial, in order. Tune saves it with the
    experiment, so a restored run asks for no new ones."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.points, self.handed = list(points), 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.handed >= len(self.points):
            return Searcher.FINISHED
        self.handed += 1
        return dict(self.points[self.handed - 1])

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        return None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


@dataclasses.dataclass(frozen=True)
class Search:
    """A finished search, opened again: its settings, data, space and config mapping."""

    record: dict[str, Any]
    settings: SearchSettings
    prepared: Prepared
    space: SearchSpace
    to_trial: Callable[[dict[str, Any]], TrialConfig]

    @classmethod
    def open(cls, record: dict[str, Any]) -> Search:
        settings = SearchSettings.from_dict(record)
        prepared = open_prepared(settings.data)
        space = load_space(settings.space)
        to_trial = functools.partial(
            trial_config, space, prepared.feature.n_mels, len(prepared.labels)
        )
        return cls(record, settings, prepared, space, to_trial)

    def outcomes(self, experiment_path: str | None = None) -> list[outcomes_mod.TrialOutcome]:
        """The trials of the search (or of one of its planned runs)."""
        return outcomes_mod.collect(experiment_path or self.settings.experiment_path, self.to_trial)


def run_planned(
    search: Search,
    run_dir: Path,
    name: str,
    points: list[dict[str, Any]],
    role: str,
    config_tags: Mapping[str, str] = {},
) -> SearchSettings:
    """Train ``points`` as the Tune experiment ``name`` (resumed when it exists); returns its
    settings (``experiment_path``, ``checkpoints(trial_id)``)."""
    settings = dataclasses.replace(search.settings, name=name, scheduler="fifo")
    prepared, space = search.prepared, search.space
    init_ray()
    shared = share(prepared)
    trainable_ = trainable(settings, space, prepared.feature.n_mels, len(prepared.labels), shared)
    path = settings.experiment_path
    if tune.Tuner.can_restore(path):
        print(f"resuming the {role} in {path}")
        tuner = tune.Tuner.restore(path, trainable_, resume_unfinished=True, resume_errored=False)
    else:
        where = tracking.setup_tracking(settings.tracking_uri, run_dir, settings.experiment)
        tags = tracking.run_tags(prepared.content_hash) | {tracking.TAG_ROLE: role}
        callback = tracking.MLflowTrialCallback(
            where, search.record["parent_run_id"], search.to_trial, tags=tags,
            config_tags=config_tags,
        )  # fmt: skip
        tuner = tuner_mod.make_tuner(
            settings, space, trainable_, [callback], Points(points),
            scheduler=FIFOScheduler(), num_samples=len(points),
        )  # fmt: skip
    tuner.fit()
    return settings
