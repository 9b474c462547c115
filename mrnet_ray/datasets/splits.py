"""Seeded, stratified, group-aware train/valid/test splits (plain Python and numpy).

Both functions take one label (and optionally one group key) per item and return one split
name per item. Groups are the unit of assignment: all items of a group land in one split, so
clips of one piece or one recording never straddle train and test. A group's class is its
most common label; classes are split separately so each split keeps the class balance.

>>> labels = ["a"] * 10 + ["b"] * 10
>>> splits = random_split(labels, valid_fraction=0.2, test_fraction=0.2, seed=0)
>>> [splits[:10].count(s) for s in ("train", "valid", "test")]
[6, 2, 2]
>>> folds = kfold_split(labels, n_folds=5, fold=0, seed=0)
>>> [folds.count(s) for s in ("train", "valid", "test")]
[12, 4, 4]
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mrnet_ray.datasets import SplitOptions


def _groups_by_class(
    labels: Sequence[str], groups: Sequence[str | None] | None, seed: int
) -> dict[str, list[list[int]]]:
    """Class -> its groups (lists of item indices) in a seeded random order."""
    members: dict[str, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        key = groups[i] if groups is not None and groups[i] is not None else f"\0item{i}"
        members[key].append(i)
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for key in sorted(members):
        items = members[key]
        majority = Counter(labels[i] for i in items).most_common(1)[0][0]
        by_class[majority].append(items)
    rng = np.random.default_rng(seed)
    return {
        c: [by_class[c][j] for j in rng.permutation(len(by_class[c]))] for c in sorted(by_class)
    }


def _counts(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Groups for (valid, test) out of ``n``: rounded, at least one each where a fraction is
    set and the class has three or more groups, and always at least one left for training."""
    n_valid, n_test = round(n * valid_fraction), round(n * test_fraction)
    if n >= 3:
        n_valid = max(n_valid, 1 if valid_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_valid + n_test > max(n - 1, 0):
        if n_test >= n_valid and n_test > 0:
            n_test -= 1
        else:
            n_valid -= 1
    return n_valid, n_test


def random_split(
    labels: Sequence[str],
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> list[str]:
    """One of ``train``/``valid``/``test`` per item, stratified by label, whole groups only.

    Fractions count groups per class (items, when there are no groups).
    """
    out = ["train"] * len(labels)
    for class_groups in _groups_by_class(labels, groups, seed).values():
        n_valid, n_test = _counts(len(class_groups), valid_fraction, test_fraction)
        for rank, items in enumerate(class_groups):
            split = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
            for i in items:
                out[i] = split
    return out


def kfold_split(
    labels: Sequence[str],
    n_folds: int,
    fold: int,
    seed: int,
    groups: Sequence[str | None] | None = None,
) -> list[str]:
    """Stratified k-fold: fold ``fold`` is ``test``, fold ``fold + 1`` (mod k) is ``valid``.

    Groups are dealt to folds round-robin class by class, continuing where the previous class
    stopped, so folds differ in size by at most one group per class.
    """
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold={fold} must be in 0..{n_folds - 1}")
    out = ["train"] * len(labels)
    position = 0
    for class_groups in _groups_by_class(labels, groups, seed).values():
        for items in class_groups:
            k = position % n_folds
            split = "test" if k == fold else "valid" if k == (fold + 1) % n_folds else "train"
            for i in items:
                out[i] = split
            position += 1
    return out


def seeded_split(
    labels: Sequence[str], opts: SplitOptions, mode: str, groups: Sequence[str] | None = None
) -> list[str]:
    """The adapters' seeded split for a resolved ``mode``: ``kfold``, else stratified random."""
    if mode == "kfold":
        return list(kfold_split(labels, opts.n_folds, opts.fold, opts.seed, groups))
    return list(random_split(labels, opts.valid_fraction, opts.test_fraction, opts.seed, groups))
