"""A prepared directory's ``manifest.json``: what went in, what came out, what was left out.

Fields: ``format``, ``dataset``, ``root``, ``feature`` (FeatureConfig), ``labels`` (class names in
label-id order), ``counts`` (per split: tracks, segments and tracks per class), ``skipped``
(``{"path", "reason"}`` for every source left out: by the adapter, failed decodes, clips too
short), ``content_hash``, ``created`` and ``mrnet_ray_version``. Paths are text whatever the
file names: bytes that are not UTF-8 show as ``\\xNN`` (:func:`mrnet_ray.text.printable`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import mrnet_ray
from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import SPLITS, Listing, Skipped
from mrnet_ray.text import printable

MANIFEST = "manifest.json"
"""Its file name in a prepared directory."""
FORMAT = 1
"""Version of the prepared-directory layout; part of the content hash."""


def content_hash(dataset: str, listing: Listing, feature: FeatureConfig) -> str:
    """Hash of everything the output depends on: the sources (path, size, mtime), where each
    goes, what was left out, the feature settings and :data:`FORMAT`."""
    files = []
    for t in sorted(listing.tracks, key=lambda t: t.path):
        st = os.stat(t.path) if os.path.exists(t.path) else None
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (-1, -1)
        files.append([t.path, size, mtime, t.track_id, t.label, t.split, t.group])
    payload = {
        "format": FORMAT,
        "dataset": dataset,
        "kind": listing.kind,
        "feature": feature.to_dict(),
        "tracks": files,
        "skipped": sorted([s.path, s.reason] for s in listing.skipped),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def build(
    dataset: str,
    root: Path,
    feature: FeatureConfig,
    listing: Listing,
    digest: str,
    segments: dict[int, int],
    failed: dict[int, str],
) -> dict:
    """The manifest, from the listing and the per-track outcomes (keyed by track index)."""
    labels = listing.labels
    counts: dict[str, dict] = {}
    for split in SPLITS:
        kept = [
            (i, t)
            for i, t in enumerate(listing.tracks)
            if t.split == split and segments.get(i, 0) > 0
        ]
        per_class = Counter(t.label for _, t in kept)
        counts[split] = {
            "tracks": len(kept),
            "segments": sum(segments[i] for i, _ in kept),
            "per_class": {name: per_class.get(name, 0) for name in labels},
        }
    skipped = list(listing.skipped) + [
        Skipped(listing.tracks[i].path, reason) for i, reason in sorted(failed.items())
    ]
    return {
        "format": FORMAT,
        "dataset": dataset,
        "root": printable(str(root)),
        "feature": feature.to_dict(),
        "labels": list(labels),
        "counts": counts,
        "skipped": [{"path": printable(s.path), "reason": s.reason} for s in skipped],
        "content_hash": digest,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mrnet_ray_version": mrnet_ray.__version__,
    }


def summary(manifest: dict, location: str) -> str:
    """A few lines for the terminal: tracks and segments per split, the top skip reasons."""
    counts = manifest["counts"]
    tracks = sum(c["tracks"] for c in counts.values())
    lines = [
        f"prepared {manifest['dataset']}: {tracks} tracks, {len(manifest['labels'])} classes "
        f"-> {location}"
    ]
    lines += [
        f"  {split:5s} {c['tracks']:6d} tracks {c['segments']:8d} segments"
        for split, c in counts.items()
    ]
    if manifest["skipped"]:
        reasons = Counter(s["reason"] for s in manifest["skipped"])
        top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        lines.append(f"  skipped {len(manifest['skipped'])} (manifest.json lists each): {top}")
    return "\n".join(lines)
