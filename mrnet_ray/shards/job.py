"""The prepare job: a dataset -> log-mel Parquet shards, with Ray Data.

The adapter lists tracks and splits; Ray Data decodes and segments them in parallel across
the cluster (``map_batches``, one task per CPU, each writing its own Parquet file) into
``DIR/<split>/*.parquet``; ``manifest.json`` is written last. On a local disk all of
it goes to a staging sibling that is renamed to ``DIR`` at the end, so ``DIR`` only ever
appears complete; on object stores (``s3://...``) the shards go to a new prefix of ``DIR``
and the manifest, written last, switches to it, so a killed re-prepare leaves the previous
data readable (:mod:`~mrnet_ray.shards.target`). A re-run whose inputs (listing with sizes
and mtimes, feature settings, format) hash the same does nothing unless ``force``.

On a multi-node cluster every node reads the sources and writes shards, so ``--root`` must be
a path all nodes see (a shared mount) and ``--out`` a shared path or an ``s3://`` URI.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.fs as pafs
import ray

from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import SPLITS, Listing, SplitOptions, adapter
from mrnet_ray.errors import UserError
from mrnet_ray.shards import manifest
from mrnet_ray.shards.ledger import Ledger
from mrnet_ray.shards.segment import segment_tracks
from mrnet_ray.shards.target import Target
from mrnet_ray.text import printable

CPUS_PER_TASK = 1.0
"""One CPU per decode task, as Ray Data's write tasks ask: equal requests let Ray fuse decode
and write into one task, and one worker per CPU stays alive between runs. Measured on 2 cores:
0.5 doubled to quadrupled the wall time (unfused writes through the object store, and the
extra workers, killed when idle, re-importing torch on every run)."""
SCALAR_COLUMNS = ("track_id", "track_index", "segment", "label", "label_name", "split")
TRACKS_PER_BLOCK = 32
"""Tracks per map task, and so per Parquet file (about 20 MB of 30 s clips at the defaults):
each task writes its own segments, so they never travel through the object store. Fewer,
larger tasks spend less on Ray's per-task overhead (16 used about 10 % more CPU)."""


def _resolve_feature(dataset: str, listing: Listing, feature: FeatureConfig) -> FeatureConfig:
    """Ready-mel datasets keep their own spectrogram settings; only segmenting is ours."""
    if listing.kind == "audio":
        return feature
    assert listing.feature is not None, f"{dataset} lists mel arrays but no FeatureConfig"
    return listing.feature.replace(
        segment_seconds=feature.segment_seconds,
        segment_hop_seconds=feature.segment_hop_seconds,
        eval_hop_seconds=feature.eval_hop_seconds,
        short_clip=feature.short_clip,
        max_track_seconds=feature.max_track_seconds,
    )


def _write_split(rows: list[dict], staging: str, fs: pafs.FileSystem, fn_kwargs: dict) -> None:
    """One split's tracks -> ``staging/<split>/*.parquet`` through Ray Data."""
    slots = ray.cluster_resources().get("CPU", 1) / CPUS_PER_TASK
    # Small splits get more, smaller blocks (two per task slot) so every core has work.
    n_blocks = min(len(rows), max(math.ceil(len(rows) / TRACKS_PER_BLOCK), int(2 * slots)))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        segment_tracks,
        batch_size=None,
        batch_format="numpy",
        num_cpus=CPUS_PER_TASK,
        fn_kwargs=fn_kwargs,
    )
    # Dictionary encoding and min/max statistics of the float mel column cost three to four
    # times the rest of the write and save nothing; keep them for the small columns only.
    ds.write_parquet(
        f"{staging}/{rows[0]['split']}",
        filesystem=fs,
        ray_remote_args={"num_cpus": CPUS_PER_TASK},
        use_dictionary=list(SCALAR_COLUMNS),
        write_statistics=list(SCALAR_COLUMNS),
    )


def _nothing_prepared(root: Path, listing: Listing, failed: dict[int, str]) -> UserError:
    """No track gave a single segment (every file undecodable, empty or too short): an empty
    prepared directory would only fail later, at training, for a reason it no longer names."""
    reasons = Counter(" ".join(r.split()) for r in failed.values())
    top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(2)) or "no segments"
    example = printable(listing.tracks[min(failed) if failed else 0].path)
    return UserError(
        f"--root {printable(str(root))}: none of its {len(listing.tracks)} tracks gave a "
        f"segment ({top}; e.g. "
        f"{example}); no prepared data was written; replace the damaged files or check --root"
    )


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    opts: SplitOptions | None = None,
    feature: FeatureConfig | None = None,
    force: bool = False,
    limit: int | None = None,
) -> Path | str:
    """Prepare ``dataset`` from ``root`` into ``out`` (a path or ``s3://`` URI); returns ``out``.

    Uses the running Ray if there is one, else ``ray.init(address=$RAY_ADDRESS)``: the
    cluster that names, or a new local one. Nothing starts Ray before the listing succeeds.
    """
    root = Path(root).expanduser().resolve()
    listing = adapter(dataset)(root, opts or SplitOptions())
    if limit is not None:
        listing = listing.limit(limit)
    if not listing.tracks:
        raise UserError(f"--root {root}: {dataset} lists no tracks to prepare")
    feature = _resolve_feature(dataset, listing, feature or FeatureConfig())
    digest = manifest.content_hash(dataset, listing, feature)
    target = Target(out)
    existing = target.existing_manifest()
    if existing and existing.get("content_hash") == digest and not force:
        print(
            f"{target.uri} is up to date (content hash {digest}); nothing to do (--force rebuilds)"
        )
        return target.result
    target.check_replaceable(existing, dataset, printable(str(root)), digest, force)

    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=os.environ.get("RAY_ADDRESS"))
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if nodes > 1:
        where = printable(str(root))
        print(f"note: {nodes} nodes read {where} and write {target.uri}: both must be shared")
    labels = listing.labels
    rows_by_split: dict[str, list[dict]] = defaultdict(list)
    for index, t in enumerate(listing.tracks):
        rows_by_split[t.split].append(
            {
                "path": os.fsencode(t.path),  # bytes: any file name fits an Arrow column
                "track_id": t.track_id,
                "track_index": index,
                "label": labels.index(t.label),
                "label_name": t.label,
                "split": t.split,
            }
        )
    ledger = Ledger.remote()
    fn_kwargs = {
        "feature": feature.to_dict(),
        "kind": listing.kind,
        "known_faults": listing.known_faults,
        "ledger": ledger,
    }
    try:
        with target.staging() as staging:
            for split in SPLITS:
                target.fs.create_dir(f"{staging}/{split}")
            # One Ray Data job per split, one after another: run side by side they were
            # half as slow again (three executors oversubscribing the same CPUs).
            for rows in rows_by_split.values():
                _write_split(rows, staging, target.fs, fn_kwargs)
            segments, failed = ray.get(ledger.result.remote())
            if not any(segments.values()):
                raise _nothing_prepared(root, listing, failed)
            record = manifest.build(dataset, root, feature, listing, digest, segments, failed)
            target.write_manifest(staging, record)
    finally:
        ray.kill(ledger)
    print(manifest.summary(record, target.uri))
    return target.result
