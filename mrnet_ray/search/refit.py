"""The final fit: the chosen configuration trained once more, on train + valid together.

A search and its confirmation leave a fifth of a small dataset (the valid split) out of the
model they export. Once the configuration and its training length are chosen, that split has
done its job: :func:`final_fit` trains the configuration again, on train and valid, for the
epochs its confirmed runs needed (the median of their best epochs, recorded, not guessed),
with the chosen seed, as a planned trial of the search's trainable
(:mod:`~mrnet_ray.search.planned`, role ``final-fit``). Its last checkpoint is what ``best
--export`` then evaluates once on test; its validation metrics measure nothing held out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrnet_ray.errors import UserError
from mrnet_ray.search.planned import Search, run_planned
from mrnet_ray.search.record import update_record
from mrnet_ray.search.trial import EPOCHS_KEY, FIT_ON_KEY, SEED_KEY

ROLE = "final-fit"
FIT_ON = "train+valid"


@dataclass(frozen=True)
class FinalFit:
    """The final fit's run."""

    trial_id: str
    location: str
    """Where its checkpoints are; the last one is exported."""
    epochs: int
    best_epochs: list[int]
    """The confirmed (or searched) runs' best epochs it took its length from."""
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial_id, "data": FIT_ON, "epochs": self.epochs,
            "from_best_epochs": self.best_epochs, "seed": self.seed,
        }  # fmt: skip


def epochs_needed(best_epochs: list[int]) -> int:
    """The final fit's length: the median of the chosen runs' best epochs (at least 1).

    >>> epochs_needed([4, 6, 5]), epochs_needed([3, 4])
    (5, 4)
    """
    return max(1, round(statistics.median(best_epochs) + 1e-9))


def final_fit(
    record: dict[str, Any],
    run_dir: Path,
    source: str,
    config: dict[str, Any],
    seed: int,
    best_epochs: list[int],
) -> FinalFit | None:
    """Train ``config`` (of search trial ``source``) on train + valid; None when interrupted."""
    search = Search.open(record)
    epochs = epochs_needed(best_epochs)
    print(
        f"\nfinal fit: trial {source}'s configuration on train + valid for {epochs} epochs (the "
        f"median of the best epochs {best_epochs}), seed {seed}"
    )
    point = {**config, SEED_KEY: seed, EPOCHS_KEY: epochs, FIT_ON_KEY: FIT_ON}
    name = f"{search.settings.name}-final-{source}-{epochs}e-s{seed}"
    ran = run_planned(search, run_dir, name, [point], ROLE)
    (done,) = search.outcomes(ran.experiment_path) or [None]
    if done is None or done.status == "unfinished":
        return None
    if done.status == "failed":
        raise UserError(f"{ran.experiment_path}: the final fit failed: {done.error}")
    fitted = FinalFit(done.trial_id, ran.checkpoints(done.trial_id), epochs, best_epochs, seed)
    update_record(run_dir, final_fit=fitted.to_json())
    return fitted
