"""Benchmark prepare: the whole Ray Data job against a serial loop at 1,000, 4,000 and 8,000 files.

FMA-small has 7,840 clips of 30 s in 8 genres; this corpus has 30 s clips in 5 classes
(harmonic tones with vibrato, a swell and noise, as in the test fixtures) at 1,000, 4,000 and
8,000 files, with the default FeatureConfig (22,050 Hz, 128 mel bands, hop 512, 3 s
segments). The files are 16-bit mono WAV at 22,050 Hz, the format and rate of GTZAN, so
every file decodes with soundfile and no time goes to a resampler that real data at this rate
would not need either; 8,000 distinct such files would take 10.6 GB, so :data:`UNIQUE`
distinct clips are written once (cached under ``~/.cache/mrnet_ray/bench-prepare``, 130 MB)
and the corpora are hard links to them under many names. Each file is still opened, read and
decoded on its own, by the loop and by prepare alike; both read from the page cache.

For each size, one after the other so that both see the same load:

1. ``loop``: a plain single-process loop over ``features.audio_to_segments`` on one torch
   thread, the serial frontend (no Parquet writes), wall and CPU seconds; each track cut as
   prepare cuts its split (valid and test overlap their segments).
2. ``prepare``: a fresh local Ray (``--cpus`` CPUs) and a forced ``prepare`` of the folder
   (listing, decode, features, Parquet writes, manifest). ``ratio`` is the loop's wall time
   over Ray start + prepare (what a user of ``mrnet-ray prepare`` waits for, less Python's
   imports), ``ratio_running_ray`` over the prepare call alone.
3. ``cpu_efficiency``: the loop's CPU seconds over those of every process during the prepare
   call (driver, Ray's daemons, actors; Ray start excluded), the share of the CPU that went
   to the frontend; times the CPUs it bounds the ratio on otherwise idle cores.
   ``cpu_by_kind`` says where the CPU went: the map actors (frontend, Parquet writes and
   their own start, torch's import included), the driver (listing, Ray Data's executor,
   manifest), Ray's daemons, other workers.
4. ``peak_rss_mb``: the peak summed resident memory of the driver and every process it
   started, during Ray start and prepare; streaming execution should keep it flat as the
   dataset grows. RSS counts shared pages once per process, so the absolute figure is an
   over-estimate; the comparison across sizes is what matters.

Other work on the machine slows the parallel runs most; the load average is reported per
size. Targets: ratio >= 1.6 at 8,000 files on 2 CPUs, CPU efficiency >= 0.85, memory flat.
Run: ``python benchmarks/bench_prepare.py [--quick] [--sizes N ...] [--json OUT]``.
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
from mrnet_ray.datasets import SplitOptions, adapter

SECONDS, RATE = 30.0, 22050
CLASSES = {"c110": 110.0, "c165": 165.0, "c247": 247.0, "c370": 370.0, "c554": 554.0}
UNIQUE = 100
CACHE = Path("~/.cache/mrnet_ray/bench-prepare").expanduser()
SIZES, QUICK_SIZES = (1000, 4000, 8000), (100, 400, 800)
OPTS = SplitOptions(seed=0)
KINDS = {"ray::MapWorker": "actors", "ray::IDLE": "idle workers", "ray::": "other workers"}
"""Process titles (by prefix) -> the kind ``cpu_by_kind`` counts them as; the driver is the
bench itself, anything else is one of Ray's daemons (raylet, GCS, log monitor, ...)."""


def synth(hz: float, seed: int) -> np.ndarray:
    """30 s of a harmonic tone at ``hz`` with vibrato, a slow swell and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    f = hz * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))  # vibrato
    phase = 2 * np.pi * np.cumsum(f) / RATE
    tone = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t)
    return (0.25 * tone * swell + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def clips() -> list[Path]:
    """The :data:`UNIQUE` distinct clips, written on first use (``clip<i>`` is class i % 5)."""
    folder = CACHE / f"clips-{UNIQUE}"
    paths = [folder / f"clip{i:03d}.wav" for i in range(UNIQUE)]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(paths):
            hz = list(CLASSES.values())[i % len(CLASSES)]
            partial = path.with_suffix(".tmp.wav")
            sf.write(partial, synth(hz, seed=i), RATE, subtype="PCM_16")
            partial.replace(path)
    return paths


def corpus(n_files: int) -> Path:
    """``<class>/<class>_NNNNN.wav``: ``n_files`` hard links cycling over :func:`clips`."""
    root = CACHE / f"corpus-{n_files}"
    done = root / ".complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    sources = clips()
    for i in range(n_files):
        label = list(CLASSES)[i % len(CLASSES)]
        path = root / label / f"{label}_{i:05d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], path)
    done.touch()
    return root


def serial_loop(root: Path, cfg: FeatureConfig) -> tuple[float, float]:
    """(wall, CPU) seconds of the plain loop on one thread; one file warms the caches first.

    Each track is cut as prepare cuts it (:meth:`FeatureConfig.for_split` of the split the
    same listing gives it), so both compute the same segments.
    """
    torch.set_num_threads(1)
    tracks = [(t.path, cfg.for_split(t.split)) for t in adapter("folder")(root, OPTS).tracks]
    features.audio_to_segments(*tracks[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for path, cut in tracks:
        features.audio_to_segments(path, cut)
    return time.perf_counter() - wall, time.process_time() - cpu


def kind_of(process: psutil.Process) -> str:
    if process.pid == os.getpid():
        return "driver"
    title = " ".join(process.cmdline()) or process.name()
    return next((k for prefix, k in KINDS.items() if title.startswith(prefix)), "ray daemons")


class TreeMeter:
    """Polls this process and all its descendants: peak summed RSS, and CPU seconds used
    since :meth:`mark`, in all and by :func:`kind_of` (processes that exit meanwhile keep what
    was last seen of them; the polling thread's own CPU is left out)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._cpu: dict[int, float] = {}
        self._kind: dict[int, str] = {}
        self._base: dict[int, float] = {}
        self._own = 0.0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        me, rss = psutil.Process(), 0
        seen: dict[int, float] = {}
        kinds: dict[int, str] = {}
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a process that exited meanwhile
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system  # not children_*: exited ones are counted
                rss += p.memory_info().rss
                kinds[p.pid] = kind_of(p)  # its latest title: an idle worker may become an actor
        with self._lock:
            self._cpu.update(seen)
            self._kind.update(kinds)
            self.peak = max(self.peak, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.thread_time()
            self._poll()
            self._own += time.thread_time() - start
            time.sleep(self.interval)

    def mark(self) -> None:
        """Count CPU from now on."""
        self._poll()
        with self._lock:
            self._base, self._own = dict(self._cpu), 0.0

    def cpu(self) -> dict[str, float]:
        """CPU seconds of the tree since :meth:`mark`, by kind of process and ``"all"``."""
        self._poll()
        used: dict[str, float] = {}
        with self._lock:
            for pid, c in self._cpu.items():
                kind = self._kind.get(pid, "ray daemons")
                used[kind] = used.get(kind, 0.0) + c - self._base.get(pid, 0.0)
            used["driver"] = used.get("driver", 0.0) - self._own
        return {**used, "all": sum(used.values())}

    def __enter__(self) -> TreeMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ray_prepare(root: Path, out: Path, cfg: FeatureConfig, cpus: int) -> dict:
    """A fresh local Ray and one forced prepare of ``root``: walls, CPU, peak memory."""
    import ray

    from mrnet_ray.shards.job import prepare

    with TreeMeter() as meter:
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False)
        meter.mark()
        ready = time.perf_counter()
        prepare("folder", root, out, OPTS, cfg, force=True)
        end = time.perf_counter()
        cpu = meter.cpu()
        ray.shutdown()
    return {"ray_start_s": ready - start, "prepare_s": end - ready, "wall_s": end - start,
            "cpu_s": cpu, "peak_rss": meter.peak}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZES} files, not {SIZES}")
    parser.add_argument("--sizes", type=int, nargs="+", help="corpus sizes (files)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs given to Ray")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    cfg = FeatureConfig()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers at nice 15 so its own daemons stay responsive; on a machine shared
    # with other jobs that starves them. Nice 0 lets them compete like the plain loop does.
    os.environ.setdefault("RAY_worker_niceness", "0")
    results: dict = {"feature": cfg.to_dict(), "clip_seconds": SECONDS, "cpus": args.cpus,
                     "distinct_clips": UNIQUE, "sizes": {}}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        for n in sizes:
            root = corpus(n)
            loop_wall, loop_cpu = serial_loop(root, cfg)
            run = ray_prepare(root, work / f"out{n}", cfg, args.cpus)
            shutil.rmtree(work / f"out{n}", ignore_errors=True)
            audio = SECONDS * n
            by_kind = {k: v for k, v in run["cpu_s"].items() if k != "all"}
            results["sizes"][str(n)] = figures = {
                "loop_wall_s": round(loop_wall, 2),
                "loop_cpu_s": round(loop_cpu, 2),
                "loop_realtime": round(audio / loop_wall),
                "ray_start_s": round(run["ray_start_s"], 2),
                "prepare_s": round(run["prepare_s"], 2),
                "prepare_realtime": round(audio / run["wall_s"]),
                "ratio": round(loop_wall / run["wall_s"], 2),
                "ratio_running_ray": round(loop_wall / run["prepare_s"], 2),
                "prepare_cpu_s": round(run["cpu_s"]["all"], 2),
                "cpu_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items())},
                "cpu_efficiency": round(loop_cpu / run["cpu_s"]["all"], 2),
                "peak_rss_mb": round(run["peak_rss"] / 2**20),
                "load_average_1min": round(os.getloadavg()[0], 1),
            }
            print(f"{n} files: {json.dumps(figures)}", flush=True)
        print(json.dumps(results, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
