"""Where training batches come from: splits held in memory, shared through Ray's object store.

A search (or a training run) reads its train and valid splits from Parquet once, in the
driver, and puts them in Ray's object store (:func:`share`); every trial on every node then
gets them from there without a read pipeline of its own (on one node, zero-copy from shared
memory). Splits too large for :data:`MEMORY_FRACTION` of the object store are streamed from
Parquet with Ray Data instead (:mod:`~mrnet_ray.training.raytrain`).

Order is a function of the seed alone, so a trial repeats exactly: each epoch draws one seeded
permutation of the training rows, and rank ``r`` of ``w`` takes the ``r``-th of ``w`` equal
slices of it (the remainder is left out, so every DDP rank takes the same number of steps);
validation rows are dealt round-robin to ranks, all of them, in a fixed order.

>>> arrays = SplitArrays(np.zeros((10, 2, 3), np.float32), np.arange(10), np.arange(10), [])
>>> feed = MemoryFeed(arrays, arrays, batch_size=2, seed=0)
>>> [b["label"].tolist() for b in feed.train(epoch=1, rank=0, world_size=2)]
[[9, 1], [3, 8]]
>>> [b["label"].tolist() for b in feed.valid(rank=1, world_size=2)]
[[1, 3], [5, 7], [9]]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from mrnet_ray.shards import Prepared, SplitArrays

Batch = dict[str, torch.Tensor]
FitOn = Literal["train", "train+valid"]
"""What a run trains on: the train split, or (a final fit) train and valid together."""
COLUMNS = ("mel", "label", "track_index")
DTYPES = {"mel": torch.float32, "label": torch.int64, "track_index": torch.int64}
MEMORY_FRACTION = 0.25
"""Splits that together fit in this share of the cluster's object store are shared in memory;
larger ones are streamed from Parquet every epoch."""


class Feed(Protocol):
    """The batches one rank trains and validates on."""

    def train(self, epoch: int, rank: int, world_size: int) -> Iterator[Batch]:
        """Epoch ``epoch``'s training batches of this rank (equal counts on every rank)."""
        ...

    def valid(self, rank: int, world_size: int) -> Iterator[Batch]:
        """This rank's share of the validation split (all shares together: every segment)."""
        ...


def epoch_rows(n: int, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """Row indices of rank ``rank``'s equal slice of epoch ``epoch``'s seeded permutation."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    share = n // world_size
    return order[rank * share : (rank + 1) * share]


def _batch(arrays: SplitArrays, rows: np.ndarray) -> Batch:
    return {
        "mel": torch.from_numpy(arrays.mel[rows]),  # (batch, n_mels, frames): a copy
        "label": torch.from_numpy(arrays.label[rows]),
        "track_index": torch.from_numpy(arrays.track_index[rows]),
    }


@dataclass(frozen=True)
class MemoryFeed:
    """:class:`Feed` over splits held in memory."""

    train_split: SplitArrays
    valid_split: SplitArrays
    batch_size: int
    seed: int

    def train(self, epoch: int, rank: int, world_size: int) -> Iterator[Batch]:
        rows = epoch_rows(len(self.train_split.label), self.seed, epoch, rank, world_size)
        for start in range(0, len(rows) - self.batch_size + 1, self.batch_size):  # drop last
            yield _batch(self.train_split, rows[start : start + self.batch_size])

    def valid(self, rank: int, world_size: int) -> Iterator[Batch]:
        rows = np.arange(rank, len(self.valid_split.label), world_size)
        for start in range(0, len(rows), self.batch_size):
            yield _batch(self.valid_split, rows[start : start + self.batch_size])


@dataclass(frozen=True)
class SharedSplits:
    """The train and valid splits of one prepared directory in Ray's object store.

    It pickles as two object references, so a Tune trial or a Ray Train worker that receives
    it gets the arrays with :meth:`get` (once per process). The process that called
    :func:`share` owns them: they live as long as it does.
    """

    data: str
    """The prepared directory they came from."""
    train_ref: Any
    valid_ref: Any

    def get(self, fit_on: FitOn = "train") -> tuple[SplitArrays, SplitArrays]:
        """``(what to train on, valid)``; ``fit_on="train+valid"`` (a final fit) trains on
        both, concatenated (valid then measures nothing held out)."""
        key = (self.train_ref.hex(), self.valid_ref.hex(), fit_on)
        if key not in _FETCHED:
            import ray

            _FETCHED.clear()  # one search's data per process at a time
            train, valid = ray.get(self.train_ref), ray.get(self.valid_ref)
            _FETCHED[key] = (concat(train, valid) if fit_on == "train+valid" else train, valid)
        return _FETCHED[key]


_FETCHED: dict[tuple[str, str, str], tuple[SplitArrays, SplitArrays]] = {}
"""The arrays this process got, by reference: a reused Tune actor does not fetch them again."""


def split_bytes(prepared: Prepared) -> int:
    """Bytes of the float32 mel arrays of the train and valid splits."""
    per_row = 4 * prepared.feature.n_mels * prepared.feature.segment_frames
    return (prepared.segments("train") + prepared.segments("valid")) * per_row


def share(prepared: Prepared, fraction: float = MEMORY_FRACTION) -> SharedSplits | None:
    """Read the train and valid splits once and put them in the object store when they fit in
    ``fraction`` of it; None when they do not (or no Ray is running): stream them instead."""
    import ray

    store = ray.cluster_resources().get("object_store_memory", 0) if ray.is_initialized() else 0
    if split_bytes(prepared) > fraction * store:
        return None
    refs = [ray.put(_compact(prepared.read_arrays(split))) for split in ("train", "valid")]
    return SharedSplits(prepared.path, *refs)


def concat(a: SplitArrays, b: SplitArrays) -> SplitArrays:
    """Two splits as one (their track indices never collide: they index one listing)."""
    return SplitArrays(
        np.concatenate([a.mel, b.mel]),
        np.concatenate([a.label, b.label]),
        np.concatenate([a.track_index, b.track_index]),
        [],
    )


def _compact(arrays: SplitArrays) -> SplitArrays:
    """What training needs of a split: the arrays, not the track ids."""
    return SplitArrays(arrays.mel, arrays.label, arrays.track_index, [])


@dataclass(frozen=True)
class StreamFeed:
    """:class:`Feed` over Ray Data iterators of Parquet shards, for splits too large to share
    (one pipeline per worker, shuffled within a buffer of ``shuffle_rows`` rows)."""

    train_iter: Any
    """``ray.data.DataIterator`` of this rank's training rows."""
    valid_iter: Any
    """``ray.data.DataIterator`` of this rank's validation rows."""
    batch_size: int
    seed: int
    shuffle_rows: int

    def train(self, epoch: int, rank: int, world_size: int) -> Iterator[Batch]:
        return self.train_iter.iter_torch_batches(
            batch_size=self.batch_size,
            dtypes=DTYPES,
            drop_last=True,  # equal batch counts on every rank keep DDP's all-reduces paired
            local_shuffle_buffer_size=self.shuffle_rows,
            local_shuffle_seed=self.seed + 7_919 * epoch + rank,
        )

    def valid(self, rank: int, world_size: int) -> Iterator[Batch]:
        return self.valid_iter.iter_torch_batches(batch_size=self.batch_size, dtypes=DTYPES)
