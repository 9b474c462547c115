"""Building the demo corpus: render each class's pieces, split them by piece, write it whole.

A build goes to a staging sibling directory (:func:`mrnet_ray.storage.replace_dir`) that
replaces the corpus directory when complete; a root whose ``corpus.json`` has the same
settings is reused as is. ``python -m mrnet_ray.datasets.demo`` runs it.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import random
import shutil
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mrnet_ray.datasets import SPLITS, Skipped
from mrnet_ray.datasets.demo import (
    CORPUS_VERSION,
    DEFAULT_INSTRUMENTS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WORKERS,
    INSTALL,
    MIN_PIECES,
    SIZES,
    SOUNDFONT_ENV,
    SOUNDFONTS,
    TEST_FRACTION,
    VALID_FRACTION,
    CorpusSize,
    SizeName,
)
from mrnet_ray.datasets.demo.pool import render_classes
from mrnet_ray.datasets.demo.render import InstrumentMode, PieceResult, RenderJob
from mrnet_ray.datasets.demo.sources import CREDITS, STYLES, candidates, corpus_root
from mrnet_ray.datasets.splits import random_split
from mrnet_ray.errors import UserError
from mrnet_ray.storage import replace_dir, write_atomic


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
    with replace_dir(out_dir, quiet=not progress) as build:
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
        write_atomic(build / "corpus.json", json.dumps(meta, indent=1) + "\n")
        shutil.rmtree(build / ".work", ignore_errors=True)
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
