"""Export a search's winner: its best checkpoint, one test evaluation, a bundle, the registry.

Checkpoint: Ray Train keeps each trial's two best checkpoints by ``valid_track_acc`` and its
latest (``train.make_trainer``). Of those kept, the export takes the best by the ranking
metric as each checkpoint recorded it (ties: the lower ``valid_loss``). Every subdirectory
of the trial's Train run that holds ``state.pt`` counts, locally or on object storage.

Test evaluation: the checkpoint is evaluated once on the prepared data's test split, which
neither training nor the search looked at: segment and track accuracy, macro-F1, a
per-class report and the track-level confusion matrix (``metrics.json``,
``confusion_matrix.png``, ``MODEL_CARD.md`` in the bundle).

Registry: the bundle's model is logged in an ``export`` run nested under the search run
(MLflow's own format plus the bundle files under ``bundle/``) and registered as a new
version, tagged with its test track accuracy and the prepared data's content hash.

Champion rule: the alias moves to the new version only if its test track accuracy is strictly
higher than that of the version holding the alias, measured on the same test split (equal
content hashes). A holder tested on other data, or lacking those tags, keeps the alias:
accuracies on different test sets do not compare, so that move is left to a person (the
MLflow UI sets aliases). A first version takes the alias.

>>> from mrnet_ray.tracking import ModelVersion
>>> old = ModelVersion("m", "1", "r1", {TAG_TEST_ACC: "0.8", TAG_DATA_HASH: "abc"})
>>> champion_decision("champion", "2", 0.9, "abc", old)[0]
True
>>> champion_decision("champion", "2", 0.8, "abc", old)[0]  # not better
False
>>> champion_decision("champion", "2", 1.0, "xyz", old)[0]  # tested on other data
False
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

import mrnet_ray
from mrnet_ray import storage, tracking
from mrnet_ray.best import Candidate, format_table, lower_is_better
from mrnet_ray.bundle import export_bundle
from mrnet_ray.checkpoint import STATE_FILE, load_checkpoint, model_from_checkpoint
from mrnet_ray.config import TrialConfig
from mrnet_ray.data import Prepared, open_prepared
from mrnet_ray.engine import evaluate
from mrnet_ray.errors import UserError
from mrnet_ray.metrics import EvalStats
from mrnet_ray.model import model_cost
from mrnet_ray.model_card import CardFacts, render_card
from mrnet_ray.plots import confusion_matrix_png
from mrnet_ray.tracking import TAG_DATA_HASH, TAG_TEST_ACC, ModelVersion

BATCH = 64


def kept_checkpoints(train_run: str, workdir: Path) -> list[tuple[str, Path]]:
    """``(where, local directory)`` of every checkpoint of a Train run; remote ones are
    copied into ``workdir``."""
    fs, base, uri = storage.resolve(train_run)
    entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    found = []
    for entry in sorted(entries, key=lambda e: e.path):
        if entry.type != pafs.FileType.Directory:
            continue
        if fs.get_file_info(f"{entry.path}/{STATE_FILE}").type != pafs.FileType.File:
            continue
        where = storage.join(uri, entry.base_name)  # a URI's ?query stays at the end
        if isinstance(fs, pafs.LocalFileSystem):
            found.append((where, Path(entry.path)))
        else:
            local = workdir / entry.base_name
            local.mkdir(parents=True)  # copy_files does not create the top directory
            pafs.copy_files(entry.path, str(local), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())  # fmt: skip
            found.append((where, local))
    return found


def best_checkpoint(train_run: str, metric: str, workdir: Path) -> tuple[str, Path, dict]:
    """The kept checkpoint best by ``metric`` (module docstring): where, local path, state."""
    sign = -1.0 if lower_is_better(metric) else 1.0
    scored = []
    for where, local in kept_checkpoints(train_run, workdir):
        state = load_checkpoint(local)
        metrics = state.get("metrics", {})
        value = metrics.get(metric)
        ok = isinstance(value, int | float) and math.isfinite(value)
        key = (ok, sign * value if ok else 0.0, -metrics.get("valid_loss", math.inf))
        scored.append((key, where, local, state))
    if not scored:
        raise UserError(
            f"{train_run}: no checkpoints (no subdirectory with {STATE_FILE}); the trial "
            "never finished an epoch, or its Ray results were moved or deleted"
        )
    _, where, local, state = max(scored, key=lambda s: s[0])
    return where, local, state


def evaluate_test(model: torch.nn.Module, prepared: Prepared) -> tuple[EvalStats, np.ndarray]:
    """Test-split stats and a 2-segment input example ``(2, n_mels, frames)``."""
    test = prepared.read_arrays("test")
    n = len(test.label)
    if n == 0:
        raise UserError(
            f"{prepared.path}: the test split holds no segments; prepare the data with a "
            "test split to export a model"
        )
    batches = (
        {
            "mel": torch.tensor(test.mel[i : i + BATCH]),
            "label": torch.tensor(test.label[i : i + BATCH]),
            "track_index": torch.tensor(test.track_index[i : i + BATCH]),
        }
        for i in range(0, n, BATCH)
    )
    stats = evaluate(model, batches, len(prepared.labels), torch.device("cpu"))
    # Two rows: MLflow's torch.export keeps a size-1 batch dimension fixed.
    example = np.ascontiguousarray(test.mel[[0, min(1, n - 1)]], dtype=np.float32)
    return stats, example


def held_out_metrics(stats: EvalStats) -> dict[str, float]:
    """``test_loss``, ``test_acc`` (segments), ``test_track_acc`` and ``test_macro_f1``."""
    return {k.replace("valid_", "test_", 1): v for k, v in stats.metrics().items()}


def class_report(cm: np.ndarray, labels: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Per class: precision, recall, F1 (0 where undefined) and support, from a confusion
    matrix whose rows are true classes.

    >>> class_report(np.array([[2, 0], [1, 1]]), ("a", "b"))["a"]
    {'precision': 0.6666666666666666, 'recall': 1.0, 'f1': 0.8, 'support': 2}
    """
    out = {}
    for i, name in enumerate(labels):
        tp, predicted, support = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def champion_decision(
    alias: str, version: str, acc: float, data_hash: str, current: ModelVersion | None
) -> tuple[bool, str]:
    """Whether ``alias`` moves to ``version`` (module docstring), and the sentence saying so."""
    if current is None:
        return True, f"alias {alias} -> version {version} (test_track_acc {acc:.4f}; first holder)"
    theirs_hash = current.tags.get(TAG_DATA_HASH)
    try:
        theirs = float(current.tags[TAG_TEST_ACC])
    except (KeyError, ValueError):
        theirs = math.nan
    if theirs_hash != data_hash or math.isnan(theirs):
        return False, (
            f"alias {alias} kept on version {current.version}: it was tested on other data "
            f"(data hash {theirs_hash or 'unknown'}, this export {data_hash}), so the accuracies "
            f"do not compare; move the alias in the MLflow UI if version {version} should serve"
        )
    if acc > theirs:
        return True, (
            f"alias {alias} -> version {version}: test_track_acc {acc:.4f} beats version "
            f"{current.version}'s {theirs:.4f} on the same test split"
        )
    return False, (
        f"alias {alias} kept on version {current.version}: its test_track_acc {theirs:.4f} "
        f">= version {version}'s {acc:.4f} on the same test split"
    )


def register(
    uri: str, search: dict[str, Any], run_dir: Path, bundle: Path, model: torch.nn.Module,
    example: np.ndarray, name: str, alias: str, test: dict[str, float], lineage: dict[str, Any],
) -> list[str]:  # fmt: skip
    """Log, register and maybe move the alias; returns the lines to print."""
    where = tracking.setup_tracking(uri, run_dir, search["experiment"])
    acc, data_hash = test["test_track_acc"], lineage["data_hash"]
    tags = {
        tracking.TAG_SOURCE_TRIAL: lineage["trial_id"],
        TAG_DATA_HASH: data_hash,
        tracking.TAG_CODE_VERSION: lineage["code_version"],
        TAG_TEST_ACC: repr(acc),  # repr round-trips the float exactly
    }
    run_id, model_uri = tracking.log_export(
        uri, where.experiment_id, search.get("parent_run_id"), f"export-{lineage['trial_id']}",
        model, example, bundle, tags, test,
    )  # fmt: skip
    current = tracking.alias_version(uri, name, alias)
    version = tracking.register_version(uri, name, model_uri, run_id, tags)
    move, sentence = champion_decision(alias, version.version, acc, data_hash, current)
    if move:
        tracking.set_alias(uri, name, alias, version.version)
    return [
        f"MLflow: export run {run_id} under search run {search.get('parent_run_id')} ({uri})",
        f"registered {name} version {version.version} ({model_uri})",
        sentence,
    ]


def held_out_report(stats: EvalStats, labels: tuple[str, ...]) -> str:
    """The test scores and the per-class table, as printed."""
    test = held_out_metrics(stats)
    rows = [
        [name, *(f"{r[m]:.3f}" for m in ("precision", "recall", "f1")), str(r["support"])]
        for name, r in class_report(stats.track_confusion, labels).items()
    ]
    return (
        f"test split ({len(stats.track_index)} tracks, {stats.segments} segments): segment acc "
        f"{test['test_acc']:.4f}, track acc {test['test_track_acc']:.4f}, "
        f"macro-F1 {test['test_macro_f1']:.4f}\n"
        + format_table(["class", "precision", "recall", "F1", "tracks"], rows)
    )


def report_files(
    name: str,
    prepared: Prepared,
    trial: TrialConfig,
    state: dict[str, Any],
    stats: EvalStats,
    lineage: dict[str, Any],
) -> dict[str, str | bytes]:
    """``metrics.json``, ``confusion_matrix.png`` and ``MODEL_CARD.md`` of the bundle."""
    labels = prepared.labels
    test, cm = held_out_metrics(stats), stats.track_confusion
    per_class = class_report(cm, labels)
    valid = {k: v for k, v in state.get("metrics", {}).items() if k.startswith("valid_")}
    cost = model_cost(trial.model, prepared.feature.segment_frames)
    facts = CardFacts(
        title=name, manifest=prepared.manifest, prepared=prepared.path, trial=trial.to_dict(),
        valid=valid, test=test, per_class=per_class, lineage=lineage, params=cost.params,
        flops=cost.flops,
    )  # fmt: skip
    metrics = {
        "split": "test", "data_hash": prepared.content_hash,
        "test": {**test, "tracks": len(stats.track_index), "segments": stats.segments},
        "valid": valid, "per_class": per_class, "labels": list(labels),
        "track_confusion": cm.tolist(), "params": cost.params, "flops": cost.flops,
    }  # fmt: skip
    return {
        "metrics.json": json.dumps(metrics, indent=2) + "\n",
        "confusion_matrix.png": confusion_matrix_png(
            cm, labels, f"{name}: test tracks (n={int(cm.sum())})"
        ),
        "MODEL_CARD.md": render_card(facts),
    }


def export_winner(
    search: dict[str, Any],
    run_dir: Path,
    winner: Candidate,
    metric: str,
    out: Path,
    name: str,
    alias: str,
    uri: str | None,
) -> Path:
    """Export ``winner`` to ``out`` and, with a store ``uri``, register it; prints each step."""

    train_run = storage.join(search["train_storage"], winner.trial_id)
    with tempfile.TemporaryDirectory() as tmp:
        where, local, state = best_checkpoint(train_run, metric, Path(tmp))
        model, trial, feature, labels = model_from_checkpoint(local)
    prepared = open_prepared(search["data"])
    prepared.check_features(feature)
    if labels != prepared.labels:
        raise UserError(
            f"{search['data']}: its labels {list(prepared.labels)} differ from the checkpoint's "
            f"{list(labels)}; export against the data the search trained on"
        )
    print(
        f"\nexporting trial {winner.trial_id}: checkpoint {where} (epoch {state.get('epoch')}, "
        f"{metric} {state.get('metrics', {}).get(metric, float('nan')):.4f})"
    )
    stats, example = evaluate_test(model, prepared)
    test = held_out_metrics(stats)
    print(held_out_report(stats, labels))
    trial_run, recorded = winner.run_id, search.get("best") or {}
    if trial_run is None and recorded.get("trial_id") == winner.trial_id:
        trial_run = recorded.get("mlflow_run_id")  # ranked without MLflow; the search noted it
    lineage = {
        "search": search["name"],
        "run_dir": str(run_dir),
        "trial_id": winner.trial_id,
        "epoch": state.get("epoch"),
        "checkpoint": where,
        "mlflow_trial_run_id": trial_run,
        "tracking_uri": search["tracking_uri"],
        "data_hash": prepared.content_hash,
        "code_version": tracking.code_version(),
        "mrnet_ray_version": mrnet_ray.__version__,
        "exported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    extra = report_files(name, prepared, trial, state, stats, lineage)
    bundle = export_bundle(
        out, model, trial, feature, labels,
        metadata={"lineage": lineage, "test_metrics": test}, extra=extra,
    )  # fmt: skip
    print(f"bundle: {bundle} ({', '.join(sorted(p.name for p in bundle.iterdir()))})")
    if uri is None:
        print("MLflow unavailable: the bundle is written but not registered; export again "
              "once the store is back")  # fmt: skip
    else:
        lines = register(uri, search, run_dir, bundle, model, example, name, alias, test, lineage)
        print("\n".join(lines))
    return bundle
