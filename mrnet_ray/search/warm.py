"""Warm start: a new search starts from what earlier searches found (``--warm-start RUN_DIR``).

Before the first proposal, every source search's completed trials are read from its Optuna
journal. When the source searched the same space (the same file text) on the same data (the
same content hash), its trials and their values go into the new study as they are
(``Study.add_trials``): TPE starts informed and nothing is trained again. Otherwise its values
do not carry over (another dataset's accuracy says nothing here, another space's parameters may
not exist here): its best configurations that fit the new space (:meth:`SearchSpace.fits`) are
enqueued as the new search's first trials instead. A source that is missing, or none of whose
completed trials fits the new space, is a one-line error before anything starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from mrnet_ray.errors import UserError
from mrnet_ray.search.record import read_record
from mrnet_ray.search.settings import SearchSettings
from mrnet_ray.search.space import SearchSpace

ENQUEUED = 3
"""Best configurations of each source enqueued when its values cannot carry over."""


def space_hash(path: str | Path) -> str:
    """The space file's text, hashed: two searches of one file searched one space."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class WarmStart:
    """What the sources give the new search."""

    added: int
    """Completed trials added to the study with their values."""
    first: list[dict[str, Any]]
    """Configurations to try first (from sources whose values do not carry over)."""
    sources: list[str]
    """One line per source: where it came from and what it gave."""


def _source(run_dir: str) -> tuple[dict[str, Any], optuna.Study]:
    from mrnet_ray.search.tuner import journal_storage

    record = read_record(Path(run_dir).expanduser().resolve())
    journal = Path(record.get("journal", ""))
    if not journal.is_file():
        raise UserError(
            f"--warm-start {run_dir}: its Optuna journal {journal} is missing; warm-start from "
            "a search run directory that holds its optuna.journal"
        )
    storage = journal_storage(journal)
    try:
        study = optuna.load_study(study_name=record["study_name"], storage=storage)
    except KeyError:
        raise UserError(
            f"--warm-start {run_dir}: {journal} holds no study {record['study_name']!r}"
        ) from None
    return record, study


def prepare(
    settings: SearchSettings, space: SearchSpace, data_hash: str, study: optuna.Study
) -> WarmStart:
    """Add to ``study`` (the new search's, created empty) what ``settings.warm_start`` gives."""
    added, first, sources = 0, [], []
    ours = space_hash(settings.space)
    for run_dir in settings.warm_start:
        record, source = _source(run_dir)
        done = source.get_trials(deepcopy=True, states=(optuna.trial.TrialState.COMPLETE,))
        same = record.get("data_hash") == data_hash and record.get("space_hash") == ours
        same = same and [d.name for d in source.directions] == [d.name for d in study.directions]
        if same:
            study.add_trials(done)
            added += len(done)
            sources.append(f"{run_dir}: {len(done)} completed trials added with their values")
            continue
        fitting = [t for t in _best_first(done, source) if not space.fits(t.params)]
        if not fitting:
            reason = space.fits(done[0].params) if done else "it has no completed trial"
            raise UserError(
                f"--warm-start {run_dir}: none of its {len(done)} completed trials fits "
                f"--space {settings.space} ({reason}); warm-start from a search of this space"
            )
        first += [dict(t.params) for t in fitting[:ENQUEUED]]
        why = "other data" if record.get("data_hash") != data_hash else "another space"
        sources.append(
            f"{run_dir}: {why}, so its {min(ENQUEUED, len(fitting))} best fitting "
            "configurations go first"
        )
    return WarmStart(added, first, sources)


def _best_first(trials: list[optuna.trial.FrozenTrial], study: optuna.Study) -> list[Any]:
    """Completed trials best first by the study's first objective."""
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(trials, key=lambda t: sign * t.values[0])
