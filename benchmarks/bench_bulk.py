"""Bulk inference: files/s of ``predict --input`` (Ray Data) against a loop over the same files.

The same model and clips as ``bench_serve.py`` (an untrained MRNet of the demo's size, C=64,
default features; 10 s WAV clips). The loop calls ``predict_file`` on each file in one
process (timed on 48 of them), once with one torch thread and once with one per CPU (torch's
default); the faster is the baseline (on a busy machine, threads that wait for each other
can make the second much slower). Bulk inference runs ``classify_collection`` on a local Ray
of the same CPUs and writes the Parquet file. Its figure is given without and with Ray's
start (``ray.init``), which a one-off ``predict --input`` also pays.

    python benchmarks/bench_bulk.py            # 480 files
    python benchmarks/bench_bulk.py --quick    # 96 files
    python benchmarks/bench_bulk.py --json OUT # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from bench_serve import CLIP_SECONDS, make_bundle, make_clips

LOOP_FILES = 48
"""Files the loop times per thread setting (its rate per file does not depend on the count)."""


def loop_seconds(bundle: Path, clips: list[Path], threads: int) -> float:
    from mrnet_ray.inference.predict import open_model, predict_file

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = open_model(str(bundle))
    for clip in clips:
        predict_file(model, clip)
    return time.perf_counter() - start


def bulk_seconds(bundle: Path, folder: Path, out: Path, cpus: int) -> tuple[float, float]:
    """``(ray.init seconds, classify_collection seconds)``."""
    import ray

    from mrnet_ray.inference.bulk import BulkOptions, classify_collection

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False)
    started = time.perf_counter()
    try:
        classify_collection(BulkOptions(model=str(bundle), input=str(folder), output=str(out)))
        return started - start, time.perf_counter() - started
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="96 files instead of 480")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    cpus, n = os.cpu_count() or 1, 96 if args.quick else 480
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = make_bundle(root)
        folder = root / "audio"
        folder.mkdir()
        clips = make_clips(folder, n)
        sample = clips[:LOOP_FILES]
        loops = {t: loop_seconds(bundle, sample, t) / len(sample) for t in sorted({1, cpus})}
        for t, seconds in loops.items():
            print(f"loop, {t} thread(s): {1 / seconds:.1f} files/s", flush=True)
        loop = min(loops.values()) * n
        ray_start, bulk = bulk_seconds(bundle, folder, root / "labels.parquet", cpus)
    print(f"bulk: {n} files in {bulk:.1f} s ({n / bulk:.1f} files/s; Ray start {ray_start:.1f} s)")
    result = {
        "cpus": cpus, "files": n, "clip_seconds": CLIP_SECONDS, "channels": 64,
        "quick": args.quick, "loop_files_per_s": round(n / loop, 2),
        "loop_files_per_s_by_threads": {str(t): round(1 / s, 2) for t, s in loops.items()},
        "bulk_files_per_s": round(n / bulk, 2),
        "bulk_with_ray_start_files_per_s": round(n / (bulk + ray_start), 2),
        "ray_start_s": round(ray_start, 1), "speedup": round(loop / bulk, 2),
    }  # fmt: skip
    print(f"bulk over the loop: {result['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
