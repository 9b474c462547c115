"""``python -m mrnet_ray.datasets.demo``: build the demo corpus (music21 + FluidSynth)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mrnet_ray.datasets.demo import (
    DEFAULT_INSTRUMENTS,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WORKERS,
    SIZES,
    SOUNDFONT_ENV,
    SOUNDFONTS,
    default_root,
)
from mrnet_ray.datasets.demo.build import build_corpus
from mrnet_ray.errors import cli


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
