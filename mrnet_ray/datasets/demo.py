"""The built-in demo corpus: real music from the music21 score corpus, rendered offline.

Eight style classes (see :mod:`mrnet_ray.datasets.demo_sources`) are drawn from the scores
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

import argparse
import csv
import functools
import json
import os
import random
import shutil
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mrnet_ray.datasets import SPLITS, Listing, Skipped, SplitOptions
from mrnet_ray.datasets.demo_pool import render_classes
from mrnet_ray.datasets.demo_render import InstrumentMode, PieceResult, RenderJob
from mrnet_ray.datasets.demo_sources import CREDITS, STYLES, candidates, corpus_root
from mrnet_ray.datasets.splits import random_split
from mrnet_ray.errors import UserError, cli

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


@dataclass(frozen=True)
class CorpusReport:
    """What a build made (or found already built)."""

    root: Path
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    """Split -> ``{"pieces": n, "clips": n}``."""
    skipped: tuple[Skipped, ...]
    """Sources left out (path in the music21 corpus, ``#<tune>`` for ABC files) and why."""
    seconds: float
    """Time the build took (for a cached corpus: the original build)."""
    cached: bool

    def summary(self) -> str:
        lines = [
            f"demo corpus at {self.root}: {len(self.classes)} classes ({', '.join(self.classes)})"
        ]
        lines += [f"  {'split':<6} {'pieces':>6} {'clips':>6}"]
        for split in SPLITS:
            c = self.counts.get(split, {})
            lines.append(f"  {split:<6} {c.get('pieces', 0):>6} {c.get('clips', 0):>6}")
        reasons = Counter(s.reason.split(":")[0] for s in self.skipped)
        detail = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        lines.append(f"  skipped {len(self.skipped)} sources" + (f" ({detail})" if detail else ""))
        built = "built earlier in" if self.cached else "built in"
        lines.append(f"  {built} {self.seconds:.1f} s")
        return "\n".join(lines)


def default_root(size: str = "small") -> Path:
    """``~/.cache/mrnet_ray/demo-<size>`` (``$XDG_CACHE_HOME`` respected)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mrnet_ray" / f"demo-{size}"


def _tools(fluidsynth: str, soundfont: str | None) -> tuple[str, str]:
    """The FluidSynth executable and soundfont to use; UserError naming what is missing."""
    exe = shutil.which(fluidsynth)
    if exe is None:
        raise UserError(f"FluidSynth not found ({fluidsynth!r}); install it: {INSTALL}")
    wanted = soundfont or os.environ.get(SOUNDFONT_ENV)
    if wanted:
        if not Path(wanted).is_file():
            raise UserError(f"soundfont {wanted}: no such file; give a General MIDI .sf2 file")
        return exe, wanted
    found = next((f for f in SOUNDFONTS if Path(f).is_file()), None)
    if found is None:
        raise UserError(
            f"no General MIDI soundfont in {', '.join(SOUNDFONTS)}; install one: {INSTALL}, "
            f"or set {SOUNDFONT_ENV}=/path/to/font.sf2"
        )
    return exe, found


def _music21_version() -> str:
    try:
        import music21
    except ImportError:
        raise UserError(
            "music21 is missing (it renders the demo corpus); run: pip install music21 "
            "(or pip install -e '.[demo]')"
        ) from None
    return music21.__version__


def _report_from(root: Path, meta: dict[str, Any], cached: bool) -> CorpusReport:
    return CorpusReport(
        root=root,
        classes=tuple(meta["classes"]),
        counts={
            s: {k: v for k, v in c.items() if k != "per_class"} for s, c in meta["counts"].items()
        },
        skipped=tuple(Skipped(**s) for s in meta["skipped"]),
        seconds=meta["build_seconds"],
        cached=cached,
    )


def _skip(result: PieceResult) -> Skipped:
    src = result.source
    return Skipped(src.path if src.tune is None else f"{src.path}#{src.tune}", result.error or "")


def build_corpus(
    out_dir: Path,
    *,
    size: SizeName | CorpusSize = "small",
    instrument_mode: InstrumentMode = DEFAULT_INSTRUMENTS,
    seed: int = 0,
    workers: int = DEFAULT_WORKERS,
    render_timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = True,
    fluidsynth: str = "fluidsynth",
    soundfont: str | None = None,
) -> CorpusReport:
    """Build the demo corpus into ``out_dir`` (or reuse it when built with the same settings).

    ``soundfont`` defaults to ``$MRNET_RAY_SOUNDFONT``, else the first installed of
    :data:`SOUNDFONTS`. Failed sources are skipped and listed; UserError when a tool is
    missing, ``out_dir`` holds something else, or nothing renders at all.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if isinstance(size, str):
        if size not in SIZES:
            raise UserError(f"--size {size}: must be one of {', '.join(SIZES)}")
        size_name, counts = size, SIZES[size]
    else:
        size_name, counts = "custom", size
    if instrument_mode not in ("score", "random"):
        raise UserError(f"--instruments {instrument_mode}: must be score or random")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    settings = {
        "corpus_version": CORPUS_VERSION,
        "size": size_name,
        **asdict(counts),
        "seed": seed,
        "instrument_mode": instrument_mode,
        "soundfont": soundfont or os.environ.get(SOUNDFONT_ENV),
        "classes": [s.name for s in STYLES],
    }
    meta_path = out_dir / "corpus.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") == settings:
            if progress:
                print(f"demo corpus already built at {out_dir}")
            return _report_from(out_dir, meta, cached=True)
    elif out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir}: exists and is not a demo corpus; give a new directory")
    exe, font = _tools(fluidsynth, soundfont)
    music21_version = _music21_version()

    start = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        if not _alive(int(stale.name.rsplit("-", 1)[1])):
            shutil.rmtree(stale, ignore_errors=True)
    build = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    try:
        root = corpus_root()
        job = functools.partial(
            RenderJob,
            corpus_root=str(root),
            out_dir=str(build),
            clip_seconds=counts.clip_seconds,
            max_clips=counts.clips_per_piece,
            instrument_mode=instrument_mode,
            seed=seed,
            fluidsynth=exe,
            soundfont=font,
            timeout_s=render_timeout_s,
        )
        queues = {}
        for style in STYLES:
            sources = candidates(style, root)
            random.Random(f"{seed}:{style.name}").shuffle(sources)
            queues[style.name] = deque(job(src) for src in sources)
        rendered, failed = render_classes(
            queues,
            clips_per_class=counts.clips_per_class,
            clips_per_piece=counts.clips_per_piece,
            workers=workers,
            progress=progress,
        )
        skipped = [_skip(r) for r in failed]
        pieces: list[PieceResult] = []
        for style in STYLES:
            got = rendered.get(style.name, [])
            if len(got) < MIN_PIECES:
                skipped.append(Skipped(style.name, f"class dropped: {len(got)} pieces rendered"))
                shutil.rmtree(build / style.name, ignore_errors=True)
                continue
            pieces += sorted(got, key=lambda r: r.source.piece)
        if len({p.source.label for p in pieces}) < 2:
            first = skipped[0] if skipped else Skipped("-", "no sources")
            raise UserError(
                f"demo corpus: fewer than 2 classes rendered; {len(skipped)} sources skipped, "
                f"e.g. {first.path}: {first.reason}"
            )
        splits = random_split([p.source.label for p in pieces], VALID_FRACTION, TEST_FRACTION, seed)
        meta = _write_listing(build, pieces, splits, settings, skipped)
        meta["build_seconds"] = round(time.monotonic() - start, 1)
        meta["soundfont_used"] = font
        meta["music21_version"] = music21_version
        (build / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(build / ".work", ignore_errors=True)
        _replace_dir(build, out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return _report_from(out_dir, meta, cached=False)


def _write_listing(
    build: Path,
    pieces: list[PieceResult],
    splits: list[str],
    settings: dict[str, Any],
    skipped: list[Skipped],
) -> dict[str, Any]:
    """Write ``split.csv``; return corpus.json's content (less the build facts)."""
    counts = {s: {"pieces": 0, "clips": 0, "per_class": Counter()} for s in SPLITS}
    rows = []
    for piece, split in zip(pieces, splits, strict=True):
        counts[split]["pieces"] += 1
        counts[split]["clips"] += len(piece.clips)
        counts[split]["per_class"][piece.source.label] += len(piece.clips)
        rows += [(clip, split) for clip in piece.clips]
    with (build / "split.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split"])
        writer.writerows(sorted(rows))
    from mrnet_ray import __version__

    return {
        "format": 1,
        "settings": settings,
        "classes": sorted({p.source.label for p in pieces}),
        "descriptions": {s.name: s.description for s in STYLES},
        "counts": {
            s: {**c, "per_class": dict(sorted(c["per_class"].items()))} for s, c in counts.items()
        },
        "pieces": [
            {
                **asdict(p.source),
                "split": split,
                "clips": list(p.clips),
                "programs": list(p.programs),
                "render_seconds": round(p.seconds, 2),
            }
            for p, split in zip(pieces, splits, strict=True)
        ],
        "skipped": [asdict(s) for s in skipped],
        "credits": CREDITS,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mrnet_ray_version": __version__,
    }


def _replace_dir(build: Path, out_dir: Path) -> None:
    """Move the finished ``build`` to ``out_dir``, replacing an older corpus there."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(old)
    build.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        build_corpus(root, size=name if name in SIZES else "small")  # type: ignore[arg-type]
    mode = opts.resolve("demo", ("file", "random", "kfold"), "file")
    split_file = opts.split_file or (str(root / "split.csv") if mode == "file" else None)
    group_regex = opts.group_regex or PIECE_REGEX
    return folder.list_tracks(
        root, replace(opts, mode=mode, split_file=split_file, group_regex=group_regex)
    )


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mrnet_ray.datasets.demo",
        description="Build the demo corpus: music21 scores rendered with FluidSynth.",
    )
    parser.add_argument(
        "--out", type=Path, help="corpus directory (default: ~/.cache/mrnet_ray/demo-SIZE)"
    )
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--instruments", choices=("score", "random"), default=DEFAULT_INSTRUMENTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="render processes")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="s per render")
    parser.add_argument("--fluidsynth", default="fluidsynth", help="FluidSynth executable")
    parser.add_argument(
        "--soundfont", help=f"General MIDI .sf2 (default: ${SOUNDFONT_ENV} or {SOUNDFONTS[0]})"
    )
    args = parser.parse_args(argv)
    report = build_corpus(
        args.out or default_root(args.size),
        size=args.size,
        instrument_mode=args.instruments,
        seed=args.seed,
        workers=args.workers,
        render_timeout_s=args.timeout,
        fluidsynth=args.fluidsynth,
        soundfont=args.soundfont,
    )
    print(report.summary())


if __name__ == "__main__":
    main()
