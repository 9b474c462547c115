"""A trial's checkpoints as Ray's ``Result`` API lists them, and the one an export takes.

A trial keeps its two best checkpoints by ``valid_track_acc`` and its latest: in its Tune
trial directory when it trained itself, in its Ray Train run otherwise. ``Result.from_path``
(``ray.tune``'s or ``ray.train``'s) lists them with the metrics each one reported, locally or
on object storage. The export takes the best of them by
the ranking metric (:mod:`mrnet_ray.ranking`), as each checkpoint recorded it; a checkpoint
that cannot be read (a truncated file) is skipped with a note, and the next one is taken.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mrnet_ray import ranking, storage
from mrnet_ray.errors import UserError
from mrnet_ray.training.checkpoint import STATE_FILE, load_checkpoint


def kept_checkpoints(location: str) -> list[tuple[Any, dict[str, Any]]]:
    """``(Checkpoint, metrics)`` of every checkpoint a trial keeps at ``location`` (a Tune
    trial directory or a Ray Train run)."""
    import ray.train
    import ray.tune

    tune_trial = Path(location.partition("?")[0]).name.startswith("mrnet_trial_")
    reader = ray.tune.Result if tune_trial else ray.train.Result
    try:
        result = reader.from_path(location)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
        raise UserError(
            f"{location}: no trial results there ({' '.join(str(e).split())[:200]}); the "
            "trial never finished an epoch, or its Ray results were moved or deleted"
        ) from None
    kept = list(result.best_checkpoints or [])
    latest = result.checkpoint
    if latest is not None and latest.path not in {c.path for c, _ in kept}:
        kept.append((latest, result.metrics or {}))
    return kept


def best_checkpoint(
    location: str, metric: str, workdir: Path, *, latest: bool = False
) -> tuple[str, Path, dict[str, Any]]:
    """The best readable kept checkpoint (module docstring), or with ``latest`` the last one
    (a final fit's: its validation metrics measure nothing held out): where, local path, its
    state."""
    kept = kept_checkpoints(location)
    if latest:
        kept = sorted(kept, key=lambda pair: -pair[1].get("epoch", 0))
    else:
        kept = ranking.ranked(kept, metric, lambda pair: pair[1])
    for checkpoint, _ in kept:
        name = Path(checkpoint.path).name
        where = storage.join(location, name)  # a URI's ?query stays at the end
        local = Path(checkpoint.path)
        if not local.is_dir():  # on object storage: fetch it
            local = Path(checkpoint.to_directory(str(workdir / name)))
        try:
            return where, local, load_checkpoint(local)
        except UserError as e:
            print(f"note: skipping checkpoint {where}: {e}", file=sys.stderr)
    raise UserError(
        f"{location}: no readable checkpoint (none of {len(kept)} with {STATE_FILE}); the trial "
        "never finished an epoch, or its Ray results were damaged, moved or deleted"
    )
