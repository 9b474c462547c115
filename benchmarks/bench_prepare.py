"""Benchmark prepare: decode + log-mel speed, Ray Data scaling and memory.

Writes its own 30 s, 22,050 Hz mono WAV files (harmonic tones plus noise, four classes;
40 distinct clips hard-linked into corpora of 160 and 960 files, GTZAN's size) and measures,
with the default FeatureConfig (128 mel bands, hop 512, 3 s segments):

1. ``realtime_per_core``: seconds of audio turned into segments per second by a plain
   single-process loop over ``features.audio_to_segments`` (one torch thread; also per CPU
   second, which other load on the machine does not distort).
2. ``ray_speedup_features``: that loop's wall time over Ray Data's (``--cpus`` CPUs) doing the
   same decode + features on the same files (the map stage alone);
   ``ray_speedup_prepare``: over the whole ``prepare`` (listing, decode, features, Parquet
   writes, manifest) with warm workers, and ``..._cold`` for the first run, where every Ray
   worker still imports torch.
3. ``peak_rss_mb``: the peak resident memory of the driver plus every process it started
   (raylet, object store, workers) during prepare, at both corpus sizes; streaming execution
   should keep it flat as the dataset grows. RSS counts shared pages once per process, so
   the absolute figure is an over-estimate; the comparison is what matters.

Walls are the best of ``--repeat`` runs; the machine's load average is reported alongside,
since other work on the machine slows the parallel runs most. CPU seconds are not inflated
by such load: ``prepare_cpu_efficiency`` (the loop's CPU seconds over those of every process of
the warm prepare) times the CPU count bounds the speed-up on otherwise idle cores
(``speedup_bound_idle_cores``).

Targets: >= 200x real time per core, speed-up >= 1.6 on 2 cores, flat memory.
Run: ``python benchmarks/bench_prepare.py [--quick] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
import torch

from mrnet_ray import features
from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import SplitOptions

SECONDS = 30.0
RATE = 22050
CLASSES = {"c110": 110.0, "c220": 220.0, "c440": 440.0, "c880": 880.0}


def write_clips(directory: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct 30 s clips (16-bit WAV, like GTZAN), cycling through the classes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        hz = list(CLASSES.values())[i % len(CLASSES)]
        tone = sum(np.sin(2 * np.pi * k * hz * t + rng.uniform(0, 6)) / k for k in (1, 2, 3))
        wave = 0.2 * tone + 0.02 * rng.standard_normal(t.size)
        paths.append(directory / f"clip{i:04d}.wav")
        sf.write(paths[-1], wave.astype(np.float32), RATE, subtype="PCM_16")
    return paths


def link_corpus(root: Path, clips: list[Path], n_files: int) -> list[Path]:
    """``root/<class>/<class>_NNNN.wav``: ``n_files`` hard links cycling over ``clips`` (big
    corpora at no disk cost; every file is still read and decoded on its own)."""
    paths = []
    for i in range(n_files):
        label = list(CLASSES)[i % len(CLASSES)]
        path = root / label / f"{label}_{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(clips[i % len(clips)], path)
        paths.append(path)
    return paths


def single_process(paths: list[Path], cfg: FeatureConfig) -> tuple[float, float]:
    """(wall, CPU) seconds of the plain loop on one thread; the first file warms the caches."""
    torch.set_num_threads(1)
    features.audio_to_segments(paths[0], cfg)
    wall, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        features.audio_to_segments(path, cfg)
    return time.perf_counter() - wall, time.process_time() - cpu


def ray_features_only(paths: list[Path], cfg: FeatureConfig) -> float:
    """Wall seconds for Ray Data to decode and segment ``paths`` (the map stage alone, its
    output consumed and dropped): the parallel twin of :func:`single_process`."""
    import ray

    from mrnet_ray.shards.job import CPUS_PER_TASK
    from mrnet_ray.shards.ledger import Ledger
    from mrnet_ray.shards.segment import segment_tracks

    rows = [
        {"path": str(p), "track_id": p.stem, "track_index": i, "label": 0, "label_name": "x",
         "split": "train"}
        for i, p in enumerate(paths)
    ]  # fmt: skip
    kwargs = {
        "feature": cfg.to_dict(),
        "kind": "audio",
        "known_faults": {},
        "ledger": Ledger.remote(),
    }
    start = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=max(8, len(rows) // 4))
    ds = ds.map_batches(
        segment_tracks, batch_format="numpy", num_cpus=CPUS_PER_TASK, fn_kwargs=kwargs
    )
    for _ in ds.iter_batches(batch_size=None):
        pass
    return time.perf_counter() - start


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker that exited meanwhile
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its descendants (reaped ones included)."""
    me, total = psutil.Process(), 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def timed_prepare(root: Path, out: Path, cfg: FeatureConfig) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds of all processes) of one forced prepare."""
    from mrnet_ray.shards.job import prepare

    with PeakRSS() as rss:
        start, cpu = time.perf_counter(), tree_cpu_seconds()
        prepare("folder", root, out, SplitOptions(seed=0), cfg, force=True)
        wall, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    return wall, rss.peak, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 and 160 files (not 160 and 960), one run each"
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best is kept)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    unique, sizes = (8, (32, 160)) if args.quick else (40, (160, 960))
    if args.quick:
        args.repeat = 1
    cfg = FeatureConfig()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers at nice 15 so its own daemons stay responsive; on a machine shared
    # with other jobs that starves them. Nice 0 lets them compete like the plain loop does.
    os.environ.setdefault("RAY_worker_niceness", "0")
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        results: dict = {"feature": cfg.to_dict(), "clip_seconds": SECONDS, "cpus": args.cpus}
        clips = write_clips(work / "clips", unique)
        corpora = {n: work / f"corpus{n}" for n in sizes}
        big = {n: link_corpus(root, clips, n) for n, root in corpora.items()}[max(sizes)]

        audio_seconds = SECONDS * len(big)
        loops = [single_process(big, cfg) for _ in range(args.repeat)]
        loop_wall, loop_cpu = min(w for w, _ in loops), min(c for _, c in loops)
        results["files"] = len(big)
        results["realtime_per_core"] = round(audio_seconds / loop_wall, 1)
        results["realtime_per_cpu_second"] = round(audio_seconds / loop_cpu, 1)
        print(f"single process: {audio_seconds:.0f} s of audio in {loop_wall:.2f} s "
              f"= {results['realtime_per_core']}x real time on one core")  # fmt: skip

        import ray

        ray.init(num_cpus=args.cpus, include_dashboard=False)
        out = work / "out"
        cold_wall, *_ = timed_prepare(corpora[max(sizes)], out, cfg)
        warm = [timed_prepare(corpora[max(sizes)], out, cfg) for _ in range(args.repeat)]
        small = [timed_prepare(corpora[min(sizes)], out, cfg) for _ in range(args.repeat)]
        map_wall = min(ray_features_only(big, cfg) for _ in range(args.repeat))
        ray.shutdown()
        warm_wall, ray_cpu = min(w for w, *_ in warm), min(c for *_, c in warm)
        results["loop_wall_s"] = round(loop_wall, 2)
        results["ray_features_wall_s"] = round(map_wall, 2)
        results["ray_prepare_wall_s"] = {"cold": round(cold_wall, 2), "warm": round(warm_wall, 2)}
        results["ray_speedup_features"] = round(loop_wall / map_wall, 2)
        results["ray_speedup_prepare"] = round(loop_wall / warm_wall, 2)
        results["ray_speedup_prepare_cold"] = round(loop_wall / cold_wall, 2)
        # CPU seconds are not inflated by other load: the loop's over prepare's (all Ray
        # processes, Parquet writes included) is the share of useful work; times the CPUs it
        # bounds the speed-up on otherwise idle cores.
        results["prepare_cpu_s"] = round(ray_cpu, 2)
        results["prepare_cpu_efficiency"] = round(loop_cpu / ray_cpu, 2)
        results["speedup_bound_idle_cores"] = round(args.cpus * loop_cpu / ray_cpu, 2)
        results["peak_rss_mb"] = {
            str(min(sizes)): round(max(p for _, p, _ in small) / 2**20),
            str(max(sizes)): round(max(p for _, p, _ in warm) / 2**20),
        }
        results["load_average_1min"] = round(os.getloadavg()[0], 1)
        print(json.dumps(results, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
