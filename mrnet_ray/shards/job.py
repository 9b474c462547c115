"""The prepare job: a dataset -> log-mel Parquet shards, with Ray Data.

The adapter lists tracks and splits; Ray Data decodes and segments them in parallel across
the cluster (``map_batches`` on a pool of :class:`~mrnet_ray.shards.segment.SegmentTracks`
actors, one per CPU, each building the frontend once and writing every batch's Parquet
shards itself) into ``DIR/<split>/*.parquet``; ``manifest.json`` is written last. On a local
disk all of it goes to a staging sibling that is renamed to ``DIR`` at the end, so ``DIR``
only ever appears complete; on object stores (``s3://...``) the shards go to a new prefix of
``DIR`` and the manifest, written last, switches to it, so a killed re-prepare leaves the
previous data readable (:mod:`~mrnet_ray.shards.target`). A re-run whose inputs (listing
with sizes and mtimes, feature settings, format) hash the same does nothing unless ``force``.

On a multi-node cluster every node reads the sources and writes shards, so ``--root`` must be
a path all nodes see (a shared mount) and ``--out`` a shared path or an ``s3://`` URI.
"""

from __future__ import annotations

import math
import os
import uuid
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs
import ray

from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import SPLITS, Listing, SplitOptions, adapter
from mrnet_ray.errors import UserError
from mrnet_ray.shards import manifest
from mrnet_ray.shards.ledger import Ledger
from mrnet_ray.shards.segment import SegmentTracks
from mrnet_ray.shards.target import Target
from mrnet_ray.text import printable

CPUS_PER_ACTOR = 1.0
"""One CPU per map actor, up to one actor per CPU of the cluster: each runs one torch thread."""
TRACKS_PER_BATCH = 64
"""Tracks per map call, and so per shard file (about 42 MB of 30 s clips at the defaults):
what a call costs besides its tracks (Ray Data's dispatch, one Ledger round trip, opening
the file) is paid once per 64 of them, and batches small next to the whole job keep the last
ones from leaving CPUs idle at the end."""


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


def _segment_all(rows: list[dict], staging: str, fs: pafs.FileSystem, args: dict) -> None:
    """Every split's tracks -> ``staging/<split>/*.parquet``, in one Ray Data job.

    One job rather than one per split: each job starts its actors (every one importing torch)
    and ends waiting for its last batch, which the splits paid three times over.
    """
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) / CPUS_PER_ACTOR))
    # An actor per batch at most: each costs seconds of torch import, more than a batch of
    # clips, and one still starting when the last batch ends is cancelled mid-construction
    # (which Ray reports as an error on the driver's stderr).
    actors = min(slots, math.ceil(len(rows) / TRACKS_PER_BATCH))
    # Small datasets get more, smaller batches (two per CPU) so every actor has work.
    n_blocks = min(len(rows), max(math.ceil(len(rows) / TRACKS_PER_BATCH), 2 * slots))
    ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        SegmentTracks,
        batch_size=None,  # one block, one call
        batch_format="numpy",
        # Start them all at once, but run on as few as are free (a busy cluster).
        compute=ray.data.ActorPoolStrategy(
            min_size=1, max_size=actors, initial_size=actors, max_tasks_in_flight_per_actor=2
        ),
        num_cpus=CPUS_PER_ACTOR,
        fn_constructor_kwargs={**args, "staging": staging, "fs": fs, "run": uuid.uuid4().hex[:8]},
    )
    ds.materialize()  # the map returns no rows; its shards are the output


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
    rows_by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
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
    # Split by split, so that a batch's tracks go to one shard (two where splits meet).
    rows = [row for split in SPLITS for row in rows_by_split[split]]
    ledger = Ledger.remote()
    args = {
        "feature": feature.to_dict(),
        "kind": listing.kind,
        "known_faults": listing.known_faults,
        "ledger": ledger,
    }
    try:
        with target.staging() as staging:
            for split in SPLITS:
                target.fs.create_dir(f"{staging}/{split}")
            _segment_all(rows, staging, target.fs, args)
            segments, failed = ray.get(ledger.result.remote())
            if not any(segments.values()):
                raise _nothing_prepared(root, listing, failed)
            record = manifest.build(dataset, root, feature, listing, digest, segments, failed)
            target.write_manifest(staging, record)
    finally:
        ray.kill(ledger)
    print(manifest.summary(record, target.uri))
    return target.result
