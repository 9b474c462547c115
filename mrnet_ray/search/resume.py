"""``tune --resume``: which search, from which record, and what the run directory lacks.

A search's record (``search.json``) sits in its run directory and, as a copy, in its results
root beside Tune's state (:func:`~mrnet_ray.search.settings.results_file`), as does the
Optuna journal. A run directory without them (a new head's, empty) takes the copies, so a
search with its results in ``s3://`` (or any storage the heads share) and its MLflow runs on a
tracking server resumes without the first head's disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mrnet_ray import tracking
from mrnet_ray.errors import UserError
from mrnet_ray.search.journal import JOURNAL_COPY, restore_journal
from mrnet_ray.search.record import (
    RECORD,
    check_resumable,
    fetch_record,
    read_record,
    record_path,
    restore_record,
)
from mrnet_ray.search.settings import STORAGE_ENV, SearchSettings, default_name, storage_root
from mrnet_ray.search.space import load_space
from mrnet_ray.search.spaces import resolve_space
from mrnet_ray.shards import Prepared, open_prepared


def locate_run_dir(
    run_dir: str | None, name: str | None, data: str | None, space: str | None
) -> Path:
    """The run directory ``--resume`` means: given, or ``runs/<name>``, or the default name of
    the data and space the search started with."""
    if run_dir:
        return Path(run_dir).expanduser().resolve()
    if name:
        return Path("runs", name).resolve()
    if data and space:
        prepared = open_prepared(data)
        dataset = prepared.manifest.get("dataset", "data")
        return Path(
            "runs", default_name(resolve_space(space), dataset, prepared.content_hash)
        ).resolve()
    raise UserError("--resume needs --run-dir DIR (or the --data and --space it started with)")


def resumed_search(
    run_dir: Path, storage: str | None = None, name: str | None = None
) -> tuple[SearchSettings, Prepared]:
    """The saved settings of the search in ``run_dir``, checked to be resumable.

    A run directory without a record (a new head's, empty) takes the copy the search keeps
    in its results root: ``storage`` (default ``$MRNET_RAY_STORAGE``), search ``name``
    (default the run directory's name); :func:`restore_run_dir` writes it back there."""
    if record_path(run_dir).is_file():
        record = read_record(run_dir)
    else:
        record = _record_in_results(run_dir, storage, name or run_dir.name)
    check_resumable(record, run_dir)
    given = {"--storage": storage and storage_root(storage), "--name": name}
    for flag, value in given.items():
        saved = record.get(flag.removeprefix("--"))
        if value and saved and value != saved:
            raise UserError(
                f"the search in {run_dir} was started with {flag} {saved.partition('?')[0]}, "
                f"not {value.partition('?')[0]}; drop {flag}, or give the one it started with"
            )
    settings = SearchSettings.from_dict(record)
    prepared = open_prepared(settings.data)
    load_space(settings.space)
    return settings, prepared


def _record_in_results(run_dir: Path, storage: str | None, name: str) -> dict[str, Any]:
    """The record of search ``name`` kept in the results root, for a run directory without
    one; UserError if there is none, or if the search cannot resume from this run directory."""
    root = storage or os.environ.get(STORAGE_ENV)
    record = fetch_record(storage_root(root), name) if root else None
    if record is None:
        where = f" and no search {name!r} is kept in {root.partition('?')[0]}" if root else ""
        raise UserError(
            f"nothing to resume: {record_path(run_dir)} does not exist{where}; start the "
            "search without --resume (or give the --storage and --name it was started with)"
        )
    if Path(record["run_dir"]) != run_dir:
        raise UserError(
            f"search {name!r} ran in --run-dir {record['run_dir']}: resume it with that "
            "--run-dir (an empty one will do; its Tune state names the path)"
        )
    gone = tracking.missing_local_store(record["tracking_uri"])
    if gone is not None:
        raise UserError(
            f"search {name!r} kept its MLflow store in its run directory ({gone}), which is "
            "not here; resume it where that store is (a search that may resume on another "
            "head needs --mlflow-uri of a tracking server from its start)"
        )
    return record


def restore_run_dir(settings: SearchSettings) -> list[str]:
    """Write back what the run directory of a resumed search lacks (a new head's is empty)
    from the copies the search keeps in the results root; says what it restored."""
    restored = []
    if restore_record(settings.run_dir, settings.storage, settings.name):
        restored.append(RECORD)
    if restore_journal(settings.journal, settings.in_results(JOURNAL_COPY)):
        restored.append(settings.journal.name)
    if not restored:
        return []
    where = settings.in_results("").partition("?")[0]
    return [f"restored {' and '.join(restored)} in {settings.run_dir} from {where}"]
