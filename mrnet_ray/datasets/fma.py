"""FMA, the Free Music Archive dataset (Defferrard et al. 2017): MP3 clips with metadata.

``ROOT/fma_metadata/tracks.csv`` (two header levels plus the ``track_id`` index line) gives
each track's ``('set', 'subset')`` (small < medium < large: each includes the smaller ones),
``('set', 'split')`` (training/validation/test: the official split, used by default) and
``('track', 'genre_top')``, the label. Audio is ``ROOT/fma_<subset>/<tid//1000:03d>/<tid:06d>.mp3``;
a track missing from its subset's folder is looked for in the other ``fma_*`` folders
(``fma_large`` holds every clip). Tracks without a top genre or without an audio file are
reported as skipped; MP3s that fail to decode (FMA has a few) are caught by prepare.
"""

from __future__ import annotations

from pathlib import Path

from mrnet_ray.datasets import Listing, Skipped, SplitOptions, Track, require_dir
from mrnet_ray.datasets.splits import seeded_split
from mrnet_ray.errors import UserError

SUBSETS = ("small", "medium", "large")
OFFICIAL = {"training": "train", "validation": "valid", "test": "test"}
LAYOUT = "ROOT/fma_metadata/tracks.csv and ROOT/fma_<subset>/<NNN>/<NNNNNN>.mp3"


def read_tracks(csv: Path):  # -> pandas.DataFrame (pandas loads only here)
    """The columns we use of tracks.csv, indexed by track id: subset, split, genre_top."""
    import pandas as pd

    if not csv.is_file():
        raise UserError(
            f"{csv}: not found; download fma_metadata.zip (https://github.com/mdeff/fma) "
            f"and unpack it into {csv.parent.parent}"
        )
    try:
        frame = pd.read_csv(csv, index_col=0, header=[0, 1], low_memory=False)
        return frame[[("set", "subset"), ("set", "split"), ("track", "genre_top")]]
    except (KeyError, ValueError, pd.errors.ParserError) as e:
        raise UserError(
            f"{csv}: not FMA's tracks.csv (need columns set/subset, set/split, track/genre_top: "
            f"{e}); unpack a fresh fma_metadata.zip"
        ) from None


def audio_path(root: Path, subset: str, track_id: int) -> Path | None:
    """The track's MP3: in ``fma_<subset>``, else in any other ``fma_*`` audio folder."""
    relative = Path(f"{track_id // 1000:03d}") / f"{track_id:06d}.mp3"
    folders = [f"fma_{subset}"] + [f"fma_{s}" for s in (*SUBSETS, "full") if s != subset]
    for folder in folders:
        if (root / folder / relative).is_file():
            return root / folder / relative
    return None


def list_tracks(root: Path, opts: SplitOptions) -> Listing:
    root = require_dir(root, LAYOUT).resolve()
    subset = opts.subset or "small"
    if subset not in SUBSETS:
        raise UserError(f"--subset {subset}: must be one of {', '.join(SUBSETS)}")
    mode = opts.resolve("fma", ("official", "random", "kfold"), "official")
    audio_dirs = [f"fma_{s}" for s in (*SUBSETS, "full") if (root / f"fma_{s}").is_dir()]
    if not audio_dirs:
        raise UserError(
            f"--root {root}: expected {LAYOUT}; no fma_<subset>/ audio folder there "
            f"(unpack fma_{subset}.zip into {root})"
        )
    frame = read_tracks(root / "fma_metadata" / "tracks.csv")
    rank = {s: i for i, s in enumerate(SUBSETS)}
    in_subset = frame[("set", "subset")].map(rank).le(rank[subset])
    frame = frame[in_subset.fillna(False).astype(bool)]

    found: list[tuple[int, Path, str, str]] = []
    skipped: list[Skipped] = []
    for tid, split, genre in zip(
        frame.index, frame[("set", "split")], frame[("track", "genre_top")], strict=True
    ):
        path = audio_path(root, subset, int(tid))
        where = str(path or root / f"fma_{subset}" / f"{tid // 1000:03d}" / f"{tid:06d}.mp3")
        if not isinstance(genre, str) or not genre:
            skipped.append(Skipped(where, "no top-level genre (track/genre_top is empty)"))
        elif path is None:
            skipped.append(
                Skipped(where, f"audio file missing (looked in {', '.join(audio_dirs)})")
            )
        elif split not in OFFICIAL:
            skipped.append(Skipped(where, f"unknown set/split {split!r} in tracks.csv"))
        else:
            found.append((int(tid), path, genre, OFFICIAL[split]))
    if not found:
        raise UserError(f"--root {root}: no FMA {subset} track has both a top genre and audio")

    labels = [genre for _, _, genre, _ in found]
    if mode == "official":
        splits = [split for *_, split in found]
    else:
        splits = seeded_split(labels, opts, mode)
    tracks = tuple(
        Track(f"{tid:06d}", str(path), genre, split)
        for (tid, path, genre, _), split in zip(found, splits, strict=True)
    )
    return Listing(tracks, tuple(skipped))
