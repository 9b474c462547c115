"""Any labelled audio folder: ``ROOT/<label>/*.{wav,flac,mp3,ogg}`` (extensions in any case).

Splits: ``file`` (a CSV with header ``path,split``, paths relative to ROOT; files it does not
list are left out and reported), ``random`` (seeded, stratified; the default) or ``kfold``.
``group_regex`` is searched in each file stem and its first group keys related clips (e.g.
``^(.*)_clip\\d+$`` keys clips by piece), which then never straddle splits; a stem it does
not match is its own group. File and folder names need not be UTF-8: ids and labels show
their stray bytes as ``\\xNN``.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from mrnet_ray.datasets import (
    AUDIO_EXTENSIONS,
    SPLITS,
    Listing,
    Skipped,
    SplitOptions,
    Track,
    describe,
    require_dir,
)
from mrnet_ray.datasets.splits import seeded_split
from mrnet_ray.errors import UserError
from mrnet_ray.text import printable

LAYOUT = "ROOT/<label>/*.wav|flac|mp3|ogg (one folder per class)"


def _read_split_file(path: Path, root: Path) -> dict[str, str]:
    """``path,split`` CSV -> {absolute path: split}."""
    if not path.is_file():
        raise UserError(f"--split-file {path}: no such file; give a CSV with header path,split")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or [n.strip() for n in reader.fieldnames] != ["path", "split"]:
            raise UserError(
                f"--split-file {path}: header is {reader.fieldnames}; expected exactly path,split"
            )
        assignment = {}
        for line, row in enumerate(reader, start=2):
            split = (row["split"] or "").strip()
            if split not in SPLITS:
                raise UserError(
                    f"--split-file {path}, line {line}: split {split!r} must be one of {SPLITS}"
                )
            assignment[os.path.normpath(root / row["path"].strip())] = split
    return assignment


def _group_key(pattern: re.Pattern[str] | None, stem: str) -> str | None:
    if pattern is None:
        return None
    match = pattern.search(stem)
    if match is None:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def list_tracks(root: Path, opts: SplitOptions) -> Listing:
    root = require_dir(root, LAYOUT).resolve()
    mode = opts.resolve(
        "folder", ("random", "kfold", "file"), "file" if opts.split_file else "random"
    )
    label_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not label_dirs:
        raise UserError(f"--root {root}: expected {LAYOUT}; found {describe(root)}")
    try:
        pattern = re.compile(opts.group_regex) if opts.group_regex else None
    except re.error as e:
        raise UserError(f"--group-regex {opts.group_regex!r}: invalid regex ({e})") from None

    found: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    for label_dir in label_dirs:
        files = sorted(
            p for p in label_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
        )
        if not files:
            skipped.append(
                Skipped(
                    str(label_dir), f"label folder has no audio ({', '.join(AUDIO_EXTENSIONS)})"
                )
            )
        found += [(f, label_dir.name) for f in files]
    if not found:
        raise UserError(f"--root {root}: expected {LAYOUT}; the label folders hold no audio files")

    groups = [_group_key(pattern, f.stem) for f, _ in found]
    if pattern is not None and all(g is None for g in groups):
        raise UserError(
            f"--group-regex {opts.group_regex!r} matches no file name under {root}; "
            "fix the pattern (it is searched in each file stem) or drop it"
        )
    labels = [label for _, label in found]
    if mode == "file":
        assignment = _read_split_file(Path(opts.split_file or ""), root)
        splits = [assignment.get(str(f)) for f, _ in found]
    else:
        splits = seeded_split(labels, opts, mode, groups)

    tracks = []
    for (f, label), split, group in zip(found, splits, groups, strict=True):
        if split is None:
            skipped.append(Skipped(str(f), f"not listed in split file {opts.split_file}"))
            continue
        # Ids and labels go into Arrow string columns and JSON; a name that is not UTF-8
        # (Latin-1 bytes of old archives) is kept readable there as \xNN. The path stays
        # as the OS gave it, so the file still opens.
        track_id = printable(f.relative_to(root).with_suffix("").as_posix())
        tracks.append(Track(track_id, str(f), printable(label), split, group))
    return Listing(tuple(tracks), tuple(skipped))
