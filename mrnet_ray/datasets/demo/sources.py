"""The demo corpus's style classes: which music21 corpus scores make up each class.

Eight classes of real music, chosen for styles a listener tells apart and for scores music21
parses in well under a second (measured on 2 cores, cold: chorale 0.1 s, Palestrina 0.1-0.4 s,
madrigal 0.3-0.5 s, Trecento 0.1-0.8 s, quartet movement 0.5-4 s, one folk tune 0.01-0.07 s).
Left out: Beethoven's whole-quartet files (8-11 s each to parse), O'Neill's tunes (Irish like
Ryan's), Josquin (8 files, parsed as ABC opera of voices) and the one-off composers.

A *piece* is one score file, or one tune of an ABC file that holds many (the Essen
collections); clips cut from one piece always share a split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_TUNE_START = re.compile(r"(?m)^(?=X:)")


@dataclass(frozen=True)
class Style:
    """One class of the corpus and the score files it draws from."""

    name: str
    """Class name (the folder name of its clips)."""
    description: str
    patterns: tuple[str, ...]
    """Globs relative to the music21 corpus folder."""
    tunes_per_file: bool = False
    """ABC files holding many tunes: each ``X:`` tune is a piece (else the file's first tune)."""


@dataclass(frozen=True)
class Source:
    """One piece to render: a corpus file, and for ABC files which tune in it."""

    label: str
    piece: str
    """Slug naming the piece, unique in the corpus (``bach-bwv299``, ``essenfolksong-han1-t12``)."""
    path: str
    """Path relative to the music21 corpus folder."""
    tune: int | None = None
    """ABC files: index of the ``X:`` tune in the file (0-based)."""


_GERMAN = ("altdeu", "ballad", "boehme", "dva", "erk", "fink", "kinder", "zuccal")
_QUARTETS = (
    "haydn/*/*.mxl",
    *(f"mozart/{k}/*.mxl" for k in ("k80", "k155", "k156", "k458")),
    "beethoven/*/movement*.mxl",
)

STYLES: tuple[Style, ...] = (
    Style("chorale", "J. S. Bach, four-part chorales", ("bach/bwv*.mxl",)),
    Style("palestrina", "G. P. da Palestrina, mass movements", ("palestrina/*.krn",)),
    Style("madrigal", "C. Monteverdi, madrigals (books 3-5)", ("monteverdi/madrigal.*.mxl",)),
    Style("trecento", "Italian 14th-century polyphony", ("trecento/*.xml", "trecento/*.mxl")),
    Style(
        "quartet",
        "Haydn, Mozart and Beethoven, string-quartet movements",
        _QUARTETS,
    ),
    Style("irish", "Ryan's Mammoth Collection (1883), fiddle tunes", ("ryansMammoth/*.abc",)),
    Style(
        "german_folk",
        "Essen Folksong Collection, German songs",
        tuple(f"essenFolksong/{c}*.abc" for c in _GERMAN),
        tunes_per_file=True,
    ),
    Style(
        "chinese_folk",
        "Essen Folksong Collection, Chinese (Han) songs",
        ("essenFolksong/han*.abc",),
        tunes_per_file=True,
    ),
)

CREDITS = {
    "scores": "music21 corpus (music21 is BSD-3-Clause, https://www.music21.org), collections "
    "bach, palestrina, monteverdi, trecento, haydn, mozart, beethoven, ryansMammoth and "
    "essenFolksong; some encodings (e.g. the Essen Folksong Collection, Schaffrath) allow "
    "non-commercial use only",
    "soundfont": "TimGM6mb General MIDI soundfont (Tim Brechbill, GPL-2) unless another was given",
    "synthesizer": "FluidSynth (LGPL-2.1), https://www.fluidsynth.org",
}


def corpus_root() -> Path:
    """The installed music21 corpus folder."""
    from music21.common.pathTools import getCorpusFilePath

    return Path(getCorpusFilePath())


def slug(text: str) -> str:
    """``'trecento/PMFC_01-Rex quem.xml'`` -> ``'trecento-pmfc-01-rex-quem'``.

    >>> slug("beethoven/opus59no1/movement2.mxl")
    'beethoven-opus59no1-movement2'
    """
    stem = text.rsplit(".", 1)[0] if "." in text.rsplit("/", 1)[-1] else text
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")


def split_tunes(text: str) -> tuple[str, list[str]]:
    """An ABC file's text -> (header before the first tune, one text per ``X:`` tune).

    >>> split_tunes("%abc\\nX:1\\nK:C\\nC\\nX:2\\nK:G\\nG\\n")
    ('%abc\\n', ['X:1\\nK:C\\nC\\n', 'X:2\\nK:G\\nG\\n'])
    """
    header, *tunes = _TUNE_START.split(text)
    return header, tunes


def candidates(style: Style, root: Path) -> list[Source]:
    """Every piece of ``style`` in the corpus at ``root``, in a fixed (sorted) order."""
    files = sorted({p for pattern in style.patterns for p in root.glob(pattern) if p.is_file()})
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if not style.tunes_per_file:
            out.append(Source(style.name, slug(rel), rel, 0 if f.suffix == ".abc" else None))
            continue
        _, tunes = split_tunes(f.read_text(encoding="utf-8", errors="replace"))
        out += [Source(style.name, f"{slug(rel)}-t{i}", rel, i) for i in range(len(tunes))]
    return out
