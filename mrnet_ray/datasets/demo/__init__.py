"""The built-in demo corpus: real music from the music21 score corpus, rendered offline.

Eight style classes (see :mod:`mrnet_ray.datasets.demo.sources`) are drawn from the scores
that ship with music21, cropped, written as MIDI and rendered by FluidSynth with a General
MIDI soundfont, then cut into clips::

    ROOT/<class>/<piece>__c<k>.wav   22,050 Hz mono 16-bit, loudness-normalised
    ROOT/split.csv                   path,split (train/valid/test, whole pieces per split)
    ROOT/corpus.json                 settings, pieces, counts, skipped sources, credits

Splits are drawn per class over *pieces* (60/20/20, seeded), so no piece straddles splits.
A build goes to a hidden sibling directory that is renamed into place when complete; a root
whose ``corpus.json`` has the same settings is reused as is.

Instruments: ``score`` (the default) keeps the score's own: six classes sound as piano,
Palestrina as voices and the quartets as strings, so timbre gives two classes away and the
rest differ in texture, register and idiom. ``random`` draws each part's General MIDI
program independently of the class, so only musical style is left to learn. On ``small``,
log-mel mean/std + logistic regression (train split -> test split, 8 classes, chance 0.125)
scores about 0.86 (score) and 0.41 (random): ``score`` lets a small network learn the demo in
minutes on a CPU; ``random`` is the harder, timbre-free task.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mrnet_ray.datasets import Listing, SplitOptions

InstrumentMode = Literal["score", "random"]
SizeName = Literal["tiny", "small", "full"]
CORPUS_VERSION = 1
"""Bumped whenever the build's output changes, so cached corpora are rebuilt."""
DEFAULT_INSTRUMENTS: InstrumentMode = "score"
SOUNDFONTS = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # 6 MB: tried first
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
)
SOUNDFONT_ENV = "MRNET_RAY_SOUNDFONT"
INSTALL = "sudo apt-get install fluidsynth timgm6mb-soundfont (or `make install` as root)"
PIECE_REGEX = r"^(.+)__c\d+$"
"""Keys a clip's file stem to its piece, for the folder adapter's random and k-fold splits."""
VALID_FRACTION = TEST_FRACTION = 0.2
MIN_PIECES = 3
"""A class needs one piece per split; classes with fewer rendered pieces are dropped."""
DEFAULT_WORKERS = 2
DEFAULT_TIMEOUT_S = 30.0
"""Per render; a cropped piece renders in about a second."""


@dataclass(frozen=True)
class CorpusSize:
    """How much to render: clips per class, at most ``clips_per_piece`` from one piece.

    Short pieces give fewer clips, so a class of short folk songs draws more pieces than a
    class of long quartet movements (up to three times the minimum); clip counts stay balanced.
    """

    clips_per_class: int
    clips_per_piece: int
    clip_seconds: float

    def __post_init__(self) -> None:
        if self.clips_per_piece < 1:
            raise ValueError(f"clips_per_piece={self.clips_per_piece} must be >= 1")
        if self.clips_per_class < MIN_PIECES * self.clips_per_piece:
            raise ValueError(
                f"clips_per_class={self.clips_per_class} must be >= {MIN_PIECES} x "
                f"clips_per_piece={self.clips_per_piece} (one piece per split at least)"
            )
        if self.clip_seconds <= 0:
            raise ValueError(f"clip_seconds={self.clip_seconds} must be > 0")


SIZES: dict[str, CorpusSize] = {
    "tiny": CorpusSize(clips_per_class=4, clips_per_piece=1, clip_seconds=5.0),
    "small": CorpusSize(clips_per_class=72, clips_per_piece=3, clip_seconds=10.0),
    "full": CorpusSize(clips_per_class=600, clips_per_piece=4, clip_seconds=30.0),
}


def default_root(size: str = "small") -> Path:
    """``~/.cache/mrnet_ray/demo-<size>`` (``$XDG_CACHE_HOME`` respected)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mrnet_ray" / f"demo-{size}"


def list_tracks(root: Path, opts: SplitOptions) -> Listing:
    """The demo corpus at ``root`` as a folder listing, built first if ``root`` has none.

    A new corpus gets its size from a root named ``demo-<size>`` (as :func:`default_root`
    names them), else ``small``. The default split is the corpus's own ``split.csv``;
    ``random`` and ``kfold`` splits keep each piece's clips together.
    """
    from mrnet_ray.datasets import folder

    root = Path(root)
    if not (root / "corpus.json").is_file():
        name = root.name.removeprefix("demo-")
        from mrnet_ray.datasets.demo.build import build_corpus

        build_corpus(root, size=name if name in SIZES else "small")  # type: ignore[arg-type]
    mode = opts.resolve("demo", ("file", "random", "kfold"), "file")
    split_file = opts.split_file or (str(root / "split.csv") if mode == "file" else None)
    group_regex = opts.group_regex or PIECE_REGEX
    return folder.list_tracks(
        root, replace(opts, mode=mode, split_file=split_file, group_regex=group_regex)
    )
