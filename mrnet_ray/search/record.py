"""``<run-dir>/search.json``: the one record of a search, its only writer and its checks.

It holds the :class:`~mrnet_ray.search.settings.SearchSettings` a search started with, where
its results, study and MLflow runs are, its status (RUNNING, FINISHED, KILLED, FAILED), its
trial counts and its best trial. ``tune --resume``, ``best``, ``ui`` and ``make demo`` read it
through :func:`read_record`; every write goes through :func:`write_record` (or
:func:`update_record`), which writes it through a unique temporary name and keeps a copy in
the results root (:func:`fetch_record` reads it, for ``--resume`` on a new head).

``format`` 2 is the package layout in which Tune's pickled state names ``mrnet_ray.search.*``
modules; a search recorded without it was started by an earlier layout and cannot be resumed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import mrnet_ray
from mrnet_ray import storage
from mrnet_ray.errors import UserError
from mrnet_ray.search.settings import SearchSettings, checkpoint_location, results_file
from mrnet_ray.storage import write_atomic

logger = logging.getLogger(__name__)

RECORD = "search.json"
FORMAT = 2
"""Version of the record and of the module layout that Tune's pickled state names."""
REQUIRED = ("name", "data", "tracking_uri", "experiment", "experiment_path", "train_storage")


def record_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / RECORD


def read_record(run_dir: str | Path, required: tuple[str, ...] = REQUIRED) -> dict[str, Any]:
    """The record in ``run_dir``; UserError if it is missing, not JSON or lacks a ``required``
    key (by default, what ``best`` and ``--resume`` need)."""
    path = record_path(run_dir)
    if not path.is_file():
        raise UserError(
            f"{path}: no such file; --run-dir must be the run directory of a search "
            "(python -m mrnet_ray.tune ... --run-dir DIR)"
        )
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); it is written by mrnet_ray.tune") from None
    missing = [k for k in required if not isinstance(record, dict) or k not in record]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; it is written by mrnet_ray.tune")
    return record


def check_resumable(record: dict[str, Any], run_dir: str | Path) -> None:
    """UserError unless the search was started by this module layout (its Tune state names
    the modules it pickled)."""
    if record.get("format") != FORMAT:
        raise UserError(
            f"{record_path(run_dir)}: this search was started by an older mrnet_ray whose "
            "modules have since moved, so its saved Tune state cannot be loaded; start it "
            "again in a new --run-dir (best can still rank and export it)"
        )


def trial_location(record: dict[str, Any], trial_id: str) -> str:
    """Where a recorded search's trial keeps its checkpoints (searches recorded before trials
    trained themselves ran them all through Ray Train)."""
    return checkpoint_location(
        record.get("executor", "train"), record["experiment_path"], record["train_storage"],
        trial_id,
    )  # fmt: skip


def tracking_store(run_dir: str | Path) -> tuple[str, str | None]:
    """``(tracking URI, experiment id or None)`` the search in ``run_dir`` logged to: its
    record's, else the default local store of a run directory."""
    if record_path(run_dir).is_file():
        saved = read_record(run_dir, required=("tracking_uri",))
        return saved["tracking_uri"], saved.get("experiment_id")
    from mrnet_ray.tracking.store import resolve_tracking_uri  # MLflow loads only here

    return resolve_tracking_uri(None, Path(run_dir), env={}), None


def status(run_dir: str | Path) -> str:
    """The recorded status, or ``none`` when there is no readable record."""
    try:
        return str(read_record(run_dir).get("status", "none"))
    except UserError:
        return "none"


def update_record(run_dir: str | Path, **extra: Any) -> Path:
    """Merge ``extra`` into the record in ``run_dir`` (replaced atomically)."""
    return _save(run_dir, read_record(run_dir) | extra)


def _save(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write the record to ``run_dir`` through a unique temporary name, then its copy to the
    results root (:func:`~mrnet_ray.search.settings.results_file`). A copy that cannot be
    written is a warning: the search goes on, but resuming it then needs this run directory."""
    data = json.dumps(record, indent=2, default=str) + "\n"
    path = write_atomic(record_path(run_dir), data)
    if record.get("experiment_path"):
        copy = results_file(record["experiment_path"], RECORD)
        try:
            storage.write_bytes(copy, data.encode())
        except (OSError, UserError) as e:
            logger.warning("could not copy %s to %s (%s)", path, copy.partition("?")[0], e)
    return path


def restore_record(run_dir: str | Path, storage_root: str, name: str) -> bool:
    """Write ``run_dir``'s record from the results root's copy when the run directory lacks
    it (a new head's); whether it did."""
    if record_path(run_dir).is_file():
        return False
    record = fetch_record(storage_root, name)
    if record is None:
        return False
    write_atomic(record_path(run_dir), json.dumps(record, indent=2, default=str) + "\n")
    return True


def fetch_record(storage_root: str, name: str) -> dict[str, Any] | None:
    """The copy of search ``name``'s record kept in the results root ``storage_root``, or
    None if there is none."""
    copy = results_file(storage.join(storage_root, name), RECORD)
    data = storage.read_bytes(copy)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{copy.partition('?')[0]}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
    if missing:
        raise UserError(f"{copy.partition('?')[0]}: lacks {', '.join(missing)}")
    return record


def write_record(settings: SearchSettings, **extra: Any) -> Path:
    """``<run-dir>/search.json``: the settings and where everything went, merged over what an
    earlier session of the same search wrote; replaced atomically."""
    path = record_path(settings.run_dir)
    old = json.loads(path.read_text()) if path.is_file() else {}
    places = {
        "experiment_path": settings.experiment_path,
        "train_storage": settings.train_storage,
        "journal": str(settings.journal),
        "study_name": settings.name,
        "mrnet_ray_version": mrnet_ray.__version__,
        "format": FORMAT,
        "executor": settings.executor,
    }
    return _save(settings.run_dir, old | settings.to_dict() | places | extra)
