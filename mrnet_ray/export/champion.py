"""The registry: log an exported bundle, register it, and move the alias only on improvement.

The bundle's model is logged in an ``export`` run nested under the search run (MLflow's own
format plus the bundle files under ``bundle/``) and registered as a new version, tagged with
its test track accuracy and the prepared data's content hash.

Champion rule: the alias moves to the new version only if its test track accuracy is strictly
higher than that of the version holding the alias, measured on the same test split (equal
content hashes). A holder tested on other data, or lacking those tags, keeps the alias:
accuracies on different test sets do not compare, so that move is left to a person (the
MLflow UI sets aliases). A first version takes the alias.

Registration tags the version with the sha256 of the bundle's weights
(:data:`~mrnet_ray.tracking.registry.TAG_WEIGHTS_SHA256`), which ``predict models:/...``
checks, and re-reads the alias after moving it (:func:`claim_alias`), so that two exports
running at once cannot both report that they took it.

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

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrnet_ray import tracking
from mrnet_ray.export.bundle import weights_sha256
from mrnet_ray.tracking import TAG_DATA_HASH, TAG_TEST_ACC, ModelVersion
from mrnet_ray.tracking.registry import TAG_WEIGHTS_SHA256

ALIAS_SETTLE_S = 0.5
"""Seconds between re-reads of a moved alias: far longer than an export takes from reading the
holder to writing the alias (two registry calls), so a concurrent writer's move shows."""
ALIAS_CHECKS = 2
"""Re-reads that must all find this export's version before it reports taking the alias."""
ALIAS_ROUNDS = 5
"""Times an export moves the alias back to its version before leaving the contest to a person."""


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
        TAG_WEIGHTS_SHA256: weights_sha256(bundle),
    }
    run_id, model_uri = tracking.log_export(
        uri, where.experiment_id, search.get("parent_run_id"), f"export-{lineage['trial_id']}",
        model, example, bundle, tags, test,
    )  # fmt: skip
    version = tracking.register_version(uri, name, model_uri, run_id, tags)
    sentence = claim_alias(uri, name, alias, version.version, acc, data_hash)
    return [
        f"MLflow: export run {run_id} under search run {search.get('parent_run_id')} ({uri})",
        f"registered {name} version {version.version} ({model_uri})",
        sentence,
    ]


def claim_alias(
    uri: str, name: str, alias: str, version: str, acc: float, data_hash: str,
    settle_s: float = ALIAS_SETTLE_S,
) -> str:  # fmt: skip
    """Move ``alias`` to ``version`` if :func:`champion_decision` says so; the sentence saying
    what became of it.

    MLflow has no compare-and-set for aliases: two exports that read the holder at the same
    moment may both decide to move it, and the later write wins. So after a move the alias is
    re-read :data:`ALIAS_CHECKS` times, ``settle_s`` apart. If another version holds it by
    then, the rule runs again against that version: this export moves it back only if it
    beats that version, else it reports that the other one took the alias. An export reports
    the alias as its own only when every re-read after its last write found its version.
    """
    holder = tracking.alias_version(uri, name, alias)
    move, sentence = champion_decision(alias, version, acc, data_hash, holder)
    for _ in range(ALIAS_ROUNDS):
        if not move:
            return sentence
        tracking.set_alias(uri, name, alias, version)
        for _ in range(ALIAS_CHECKS):
            time.sleep(settle_s)
            holder = tracking.alias_version(uri, name, alias)
            if holder is None or holder.version != version:
                break
        else:
            return sentence
        move, sentence = champion_decision(alias, version, acc, data_hash, holder)
        if not move and holder is not None:
            sentence += f" (version {holder.version} took the alias while this export moved it)"
    if not move:
        return sentence
    return (
        f"alias {alias} contested: another export kept moving it after {ALIAS_ROUNDS} tries; "
        "check which version holds it in the MLflow UI"
    )
