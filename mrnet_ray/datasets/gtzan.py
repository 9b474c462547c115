"""GTZAN (Tzanetakis and Cook 2002): 10 genres x 100 clips of 30 s, 22,050 Hz mono WAV.

Layouts: ``ROOT/genres/<genre>/<genre>.000NN.wav``, ``ROOT/genres_original/...`` (the Kaggle
copy), or ROOT being the genres folder itself. A copy holding only some of the ten genre
folders is accepted (handy for quick runs); folders of other names are an error.

Splits: ``filtered`` (default) is the fault-filtered split of Kereliuk, Sturm and Larsen (2015)
shipped in ``splits/gtzan/`` (443/197/290 clips); clips it leaves out (repetitions,
mislabelings, distortions) are reported as skipped. ``random`` and ``kfold`` are seeded and
stratified by genre (they give higher, less honest numbers). ``jazz.00054.wav`` is corrupt in
common copies; if it fails to decode, prepare reports it with that reason.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from mrnet_ray.datasets import SPLITS, Listing, Skipped, SplitOptions, Track, describe, require_dir
from mrnet_ray.datasets.splits import seeded_split
from mrnet_ray.errors import UserError

GENRES = (
    "blues", "classical", "country", "disco", "hiphop",
    "jazz", "metal", "pop", "reggae", "rock",
)  # fmt: skip
LAYOUT = (
    "ROOT/genres/<genre>/<genre>.000NN.wav (or ROOT/genres_original/...) with GTZAN's "
    f"genre folders ({', '.join(GENRES)})"
)
KNOWN_FAULTS = {"jazz/jazz.00054.wav": "known corrupt file in common GTZAN copies"}
_CLIP = re.compile(r"^([a-z]+)\.(\d{5})\.wav$", re.IGNORECASE)


def filtered_split() -> dict[str, str]:
    """``genre/genre.000NN.wav`` -> split, from the shipped fault-filtered lists.

    >>> lists = filtered_split()
    >>> len(lists), lists["blues/blues.00012.wav"]
    (930, 'test')
    """
    directory = files("mrnet_ray.datasets") / "splits" / "gtzan"
    return {
        line.strip(): split
        for split in SPLITS
        for line in (directory / f"{split}_filtered.txt").read_text().splitlines()
        if line.strip()
    }


def find_genres_dir(root: Path) -> Path:
    """The folder holding the genre folders; UserError describing ROOT if there is none."""
    require_dir(root, LAYOUT)
    for candidate in (root / "genres", root / "genres_original", root):
        if not candidate.is_dir():
            continue
        subdirs = {p.name for p in candidate.iterdir() if p.is_dir() and not p.name.startswith(".")}
        if subdirs and subdirs <= set(GENRES):
            return candidate
        if candidate != root and subdirs:
            strange = ", ".join(sorted(subdirs - set(GENRES))[:5])
            raise UserError(
                f"--root {root}: expected {LAYOUT}; {candidate.name}/ holds other folders too "
                f"({strange})"
            )
    raise UserError(f"--root {root}: expected {LAYOUT}; found {describe(root)}")


def list_tracks(root: Path, opts: SplitOptions) -> Listing:
    root = root.resolve()
    genres_dir = find_genres_dir(root)
    mode = opts.resolve("gtzan", ("filtered", "random", "kfold"), "filtered")
    found: list[tuple[str, Path]] = []  # ("genre/genre.000NN.wav", path)
    skipped: list[Skipped] = []
    for genre_dir in sorted(p for p in genres_dir.iterdir() if p.is_dir()):
        for path in sorted(genre_dir.iterdir()):
            if _CLIP.match(path.name):
                found.append((f"{genre_dir.name}/{path.name.lower()}", path))
            elif path.is_file() and not path.name.startswith("."):
                skipped.append(Skipped(str(path), "not a GTZAN clip name (<genre>.000NN.wav)"))
    if not found:
        raise UserError(f"--root {root}: expected {LAYOUT}; the genre folders hold no .wav clips")

    labels = [key.split("/")[0] for key, _ in found]
    if mode == "filtered":
        lists = filtered_split()
        splits: list[str | None] = [lists.get(key) for key, _ in found]
        present = {key.split("/")[0] for key, _ in found}
        on_disk = {key for key, _ in found}
        skipped += [
            Skipped(str(genres_dir / key), "listed in the fault-filtered split but missing")
            for key in sorted(lists)
            if key.split("/")[0] in present and key not in on_disk
        ]
    else:
        splits = seeded_split(labels, opts, mode)

    tracks = []
    for (key, path), label, split in zip(found, labels, splits, strict=True):
        if split is None:
            reason = "left out of the fault-filtered split (repeated, mislabelled or distorted)"
            skipped.append(Skipped(str(path), reason))
            continue
        tracks.append(Track(Path(key).stem, str(path), label, split))
    faults = {str(p): KNOWN_FAULTS[k] for k, p in found if k in KNOWN_FAULTS}
    return Listing(tuple(tracks), tuple(skipped), known_faults=faults)
