"""The Optuna journal's copy in the results root, never older than Tune's saved searcher.

The study lives in ``<run-dir>/optuna.journal`` (``optuna-dashboard`` reads it there). Tune
saves the searcher's state (which names the study's trials by their ids in the journal) into
its experiment directory in the results root; a head whose run directory is empty can resume
only if the journal is there too, and at least as new as that state. So each time Tune saves
the searcher, :class:`JournalCopy` first copies the journal beside Tune's state (Tune's loop,
which also asks and tells Optuna, waits meanwhile); ``--resume`` on a new head writes the copy
back (:func:`restore_journal`) before Tune unpickles the searcher, which reads the journal.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune.search.optuna import OptunaSearch

from mrnet_ray import storage
from mrnet_ray.errors import UserError

logger = logging.getLogger(__name__)

JOURNAL_COPY = "optuna.journal"
"""The copy's name in the results root (:func:`~mrnet_ray.search.settings.results_file`)."""


class JournalCopy:
    """Mixin for Ray's ``OptunaSearch``: copy the journal to ``journal_copy[1]`` each time
    Tune saves the searcher. Set ``journal_copy`` after construction; it pickles with the
    searcher, so a restored search keeps copying."""

    journal_copy: tuple[str, str] = ("", "")
    """(the journal file, its copy's location); empty: no copy (a search started before)."""

    def save(self, checkpoint_path: str) -> None:
        local, copy = self.journal_copy
        if copy and Path(local).is_file():
            try:
                storage.write_bytes(copy, Path(local).read_bytes())
            except (OSError, UserError) as e:  # the search goes on; a new head can't resume
                logger.warning("could not copy %s to %s (%s)", local, copy.partition("?")[0], e)
        super().save(checkpoint_path)  # type: ignore[misc]


class CopiedOptunaSearch(JournalCopy, OptunaSearch):
    """Ray's ``OptunaSearch`` that keeps the journal's copy (:class:`JournalCopy`)."""


def restore_journal(journal: Path, copy: str) -> bool:
    """Write ``journal`` from its copy when the run directory lacks it; whether it did."""
    if journal.exists():
        return False
    data = storage.read_bytes(copy)
    if data is None:
        return False
    storage.write_atomic(journal, data)
    return True
