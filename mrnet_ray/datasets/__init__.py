"""Dataset adapters: each lists a dataset's tracks, labels and splits without decoding audio.

An adapter is a function ``list_tracks(root: Path, opts: SplitOptions) -> Listing``; the
registry :data:`ADAPTERS` maps dataset names to them (modules load on first use, so listing a
folder never imports pandas). Decoding, and with it the detection of corrupt files, happens
later in ``prepare``; the adapter only reports what it can see from names and metadata.

>>> sorted(ADAPTERS)
['demo', 'fma', 'folder', 'gtzan', 'melon']
>>> adapter("mp3s")
Traceback (most recent call last):
...
mrnet_ray.errors.UserError: unknown dataset 'mp3s'; known datasets: demo, fma, folder, gtzan, melon
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from mrnet_ray.config import FeatureConfig
from mrnet_ray.errors import UserError

SplitMode = Literal["default", "filtered", "official", "random", "kfold", "file"]
SPLITS = ("train", "valid", "test")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


@dataclass(frozen=True)
class Track:
    """One source file and where it goes."""

    track_id: str
    """The dataset's own id, e.g. ``blues.00012`` (unique within the dataset)."""
    path: str
    """Absolute path of the audio (or, for ready-mel datasets, the ``.npy``) file."""
    label: str
    """Class name."""
    split: str
    """``train``, ``valid`` or ``test``."""
    group: str | None = None
    """Tracks of one group (e.g. one piece) never straddle splits; None: the track alone."""


@dataclass(frozen=True)
class Skipped:
    """A source left out, and why (recorded in the manifest)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Listing:
    """What an adapter found: tracks to prepare and sources it left out."""

    tracks: tuple[Track, ...]
    skipped: tuple[Skipped, ...] = ()
    kind: Literal["audio", "mel"] = "audio"
    """``audio``: files to decode; ``mel``: ``.npy`` log-mel arrays ``(n_mels, frames)``."""
    feature: FeatureConfig | None = None
    """For ``mel`` datasets, the settings the arrays were made with; None for audio."""
    known_faults: dict[str, str] = field(default_factory=dict)
    """Path -> reason to report if that file fails to decode (e.g. GTZAN's jazz.00054)."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names in label-id order (sorted)."""
        return tuple(sorted({t.label for t in self.tracks}))

    def limit(self, n: int) -> Listing:
        """The first ``n`` tracks dealt over splits and, within each, over labels (rotated
        per split), so even a handful of tracks covers every split and every label."""
        per_split = []
        for j, split in enumerate(sorted({t.split for t in self.tracks})):
            mine = sorted((t for t in self.tracks if t.split == split), key=lambda t: t.track_id)
            labels = sorted({t.label for t in mine})
            labels = labels[j % len(labels) :] + labels[: j % len(labels)]
            per_split.append(_deal([[t for t in mine if t.label == label] for label in labels]))
        kept = tuple(sorted(_deal(per_split)[:n], key=lambda t: t.track_id))
        return dataclasses.replace(self, tracks=kept)


def _deal(queues: list[list[Track]]) -> list[Track]:
    """Round-robin: the first of each queue, then the second of each, and so on."""
    depth = max(map(len, queues), default=0)
    return [q[d] for d in range(depth) for q in queues if d < len(q)]


@dataclass(frozen=True)
class SplitOptions:
    """How an adapter assigns tracks to train/valid/test (and which subset it lists).

    ``mode="default"`` takes the dataset's usual split: GTZAN ``filtered``, FMA ``official``,
    Melon ``random``, folders ``file`` when ``split_file`` is given, else ``random``.
    """

    mode: SplitMode = "default"
    seed: int = 0
    """Seeds the random and k-fold splits."""
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    n_folds: int = 10
    fold: int = 0
    """``kfold``: this fold is the test set and the next one the validation set."""
    split_file: str | None = None
    """``file``: CSV with header ``path,split``; paths relative to the dataset root."""
    group_regex: str | None = None
    """Regex on the file stem whose first group keys related clips (kept in one split)."""
    subset: str | None = None
    """FMA's ``small``/``medium``/``large`` (None: small); no other dataset has subsets."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(SplitMode):
            raise UserError(f"--split-mode {self.mode}: must be one of {get_args(SplitMode)}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise UserError(
                f"--valid-fraction {self.valid_fraction} + --test-fraction "
                f"{self.test_fraction} leave no training data; keep their sum below 1"
            )
        if self.n_folds < 3:
            raise UserError(f"--folds {self.n_folds}: need >= 3 (test, valid and train folds)")
        if not 0 <= self.fold < self.n_folds:
            raise UserError(f"--fold {self.fold}: must be in 0..{self.n_folds - 1}")
        if self.mode == "file" and not self.split_file:
            raise UserError("--split-mode file needs --split-file CSV (header: path,split)")

    def resolve(self, dataset: str, allowed: Iterable[SplitMode], default: SplitMode) -> SplitMode:
        """The mode to use for ``dataset``; UserError if it does not apply there."""
        allowed = tuple(allowed)
        mode = default if self.mode == "default" else self.mode
        if mode not in allowed:
            raise UserError(
                f"--split-mode {mode} does not apply to {dataset}; use one of {', '.join(allowed)}"
            )
        if self.split_file and mode != "file":
            raise UserError(f"--split-file only applies with --split-mode file ({dataset})")
        if self.subset is not None and dataset != "fma":
            raise UserError(f"--subset only applies to fma, not {dataset}")
        return mode


Adapter = Callable[[Path, SplitOptions], Listing]


def _lazy(name: str) -> Adapter:
    def list_tracks(root: Path, opts: SplitOptions) -> Listing:
        module = importlib.import_module(f"mrnet_ray.datasets.{name}")
        return module.list_tracks(Path(root), opts)

    list_tracks.__qualname__ = list_tracks.__name__ = f"{name}.list_tracks"
    return list_tracks


ADAPTERS: dict[str, Adapter] = {
    name: _lazy(name) for name in ("gtzan", "fma", "melon", "folder", "demo")
}


def adapter(name: str) -> Adapter:
    """The adapter registered as ``name``; UserError listing the known ones otherwise."""
    if name not in ADAPTERS:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


def require_dir(root: Path, expected: str) -> Path:
    """``root`` as an existing directory, or UserError saying what layout was expected."""
    if not root.is_dir():
        found = "a file" if root.exists() else "nothing"
        raise UserError(f"--root {root}: expected {expected}; found {found} there")
    return root


def describe(directory: Path, limit: int = 6) -> str:
    """A few entries of ``directory`` for error messages: ``'a/', 'b.txt' and 3 more``."""
    entries = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in directory.iterdir()
        if not p.name.startswith(".")
    )
    if not entries:
        return "an empty directory"
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")
