"""Limits the sampler understands: proposals over a space's ``limits:`` are never trained.

A space may bound what a trained configuration costs (``limits: {params: 5.0e6, flops:
2.0e9}``, FLOPs of one segment's forward pass). :class:`LimitedSearch` is Ray's
``OptunaSearch`` with one change: before it hands Tune a proposal it computes the proposal's
cost on the driver (:class:`CostCheck`), and one over a limit is not trained: Optuna is told
it is infeasible (``Trial.set_constraint`` with ``value / limit - 1``, then PRUNED; TPE ranks
infeasible trials by how far they overshoot, so it learns where the boundary is instead of
being fed a fake bad score), MLflow records it as a nested run tagged ``infeasible``
(:func:`mrnet_ray.tracking.record_infeasible`), and Optuna is asked again. Feasible proposals
carry their (negative) constraint values too, so every trial of the study compares.

Tune's ``num_samples`` therefore counts trained trials. After ``10 x num_samples`` infeasible
proposals in a row the searcher gives up (``exhausted`` says which limit to loosen).

>>> check = CostCheck(lambda config: None, frames=10, limits={"params": 100.0})
>>> check.violations({"params": 150.0, "flops": 9.0})
{'params': 0.5}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from mrnet_ray.config import TrialConfig
from mrnet_ray.nn import model_cost
from mrnet_ray.search.journal import JournalCopy

logger = logging.getLogger(__name__)

GIVE_UP_AFTER = 10
"""Infeasible proposals in a row, per trial the search asks for, before it stops."""


class CostCheck:
    """A proposal's ``params`` and ``flops`` against the limits (picklable: Tune saves it with
    the searcher). ``to_trial`` maps a Tune config to its TrialConfig."""

    def __init__(
        self, to_trial: Callable[[dict[str, Any]], TrialConfig], frames: int,
        limits: dict[str, float],
    ) -> None:  # fmt: skip
        self.to_trial, self.frames, self.limits = to_trial, frames, dict(limits)
        self._costs: dict[str, dict[str, float]] = {}

    def cost(self, config: dict[str, Any]) -> dict[str, float]:
        """``params`` and ``flops`` (per segment the trial sees) of the config's model, as the
        trial would report them (cached: TPE repeats proposals)."""
        trial = self.to_trial(config)
        frames = trial.train.crop_frames or self.frames
        key = repr((sorted(trial.model.to_dict().items()), frames))
        if key not in self._costs:
            c = model_cost(trial.model, frames)
            self._costs[key] = {"params": float(c.params), "flops": float(c.flops)}
        return self._costs[key]

    def violations(self, cost: dict[str, float]) -> dict[str, float]:
        """``value / limit - 1`` of every limit the cost exceeds."""
        ratios = self.constraints(cost)
        return {k: round(v, 6) for k, v in ratios.items() if v > 0}

    def constraints(self, cost: dict[str, float]) -> dict[str, float]:
        """``value / limit - 1`` per limit: <= 0 is within it (Optuna's convention)."""
        return {k: cost[k] / limit - 1 for k, limit in self.limits.items()}


def record_infeasible(
    where: Any,
    parent_run_id: str,
    to_trial: Callable[[dict[str, Any]], TrialConfig],
    tags: dict[str, str],
    config: dict[str, Any],
    reason: str,
    cost: dict[str, float],
) -> None:
    """An infeasible proposal as a nested MLflow run of the search (``functools.partial`` of
    its first four arguments is the searcher's picklable ``record``)."""
    from mrnet_ray import tracking

    tracking.record_infeasible(where, parent_run_id, to_trial(config).flat(), reason, cost, tags)


class LimitedSearch(JournalCopy, OptunaSearch):
    """``OptunaSearch`` whose proposals over the limits are told infeasible, never trained
    (and which keeps the journal's copy, :class:`~mrnet_ray.search.journal.JournalCopy`)."""

    def __init__(
        self,
        *args: Any,
        check: CostCheck,
        record: Callable[[dict[str, Any], str, dict[str, float]], None],
        give_up_after: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.check, self.record, self.give_up_after = check, record, give_up_after
        self.infeasible_in_a_row = 0
        self.infeasible_total = 0
        self.exhausted = ""
        """Why the searcher stopped asking, when it gave up on the limits; else empty."""
        self._over: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while True:
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config
            ot_trial = self._ot_trials[trial_id]
            cost = self.check.cost(config)
            for key, value in self.check.constraints(cost).items():
                ot_trial.set_constraint(key, value)
            over = self.check.violations(cost)
            if not over:
                self.infeasible_in_a_row = 0
                return config
            self._reject(trial_id, config, cost, over)
            if self.infeasible_in_a_row >= self.give_up_after:
                self.exhausted = self._advice()
                logger.warning("%s", self.exhausted)
                return Searcher.FINISHED

    def _reject(
        self, trial_id: str, config: dict[str, Any], cost: dict[str, float],
        over: dict[str, float],
    ) -> None:  # fmt: skip
        """Tell Optuna the proposal is infeasible, record it, and free the id for a new one."""
        ot_trial = self._ot_trials.pop(trial_id)
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self.infeasible_in_a_row += 1
        self.infeasible_total += 1
        for key in over:
            self._over[key] = self._over.get(key, 0) + 1
        reason = "; ".join(
            f"{k} {cost[k]:.4g} > limit {self.check.limits[k]:.4g}" for k in sorted(over)
        )
        try:  # tracking never stops a search
            self.record(config, reason, cost)
        except Exception as e:
            logger.warning("MLflow: could not record an infeasible proposal (%s): %s", reason, e)

    def _advice(self) -> str:
        key = max(self._over, key=self._over.get)
        return (
            f"{self.infeasible_in_a_row} proposals in a row exceeded the space's limits "
            f"(limits.{key}: {self.check.limits[key]:.4g} was exceeded by {self._over[key]} of "
            f"them); loosen limits.{key} or shrink the model fields the space draws"
        )
