"""Serving: requests/s and latency of the Ray Serve application, batching on and off, against
the per-file ``predict`` CLI.

The model is an MRNet of the demo's size (C=64; untrained: speed does not depend on the
weights) with the default features (22,050 Hz, 128 mel bands, 3 s segments); each request
posts one 10 s WAV clip (4 segments). One replica holds every CPU; the load comes from client
threads in this process, on the same machine, each with its own keep-alive connection.

    python benchmarks/bench_serve.py            # 100 / 200 / 400 requests at 1 / 8 / 32
    python benchmarks/bench_serve.py --quick    # 24 / 48 / 96 requests
    python benchmarks/bench_serve.py --json OUT # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mrnet_ray.config import FeatureConfig, MRNetConfig, TrialConfig
from mrnet_ray.export.bundle import export_bundle
from mrnet_ray.nn import build_model

CONCURRENCY = (1, 8, 32)
CLIP_SECONDS = 10.0
LABELS = tuple(f"class{i}" for i in range(8))


def make_bundle(root: Path) -> Path:
    feature = FeatureConfig()
    cfg = MRNetConfig(channels=64, n_mels=feature.n_mels, n_classes=len(LABELS))
    torch.manual_seed(0)
    return export_bundle(root / "bundle", build_model(cfg), TrialConfig(model=cfg), feature,
                         LABELS)  # fmt: skip


def make_clips(root: Path, n: int, seconds: float = CLIP_SECONDS) -> list[Path]:
    """``n`` WAV clips of noisy tones (22,050 Hz mono)."""
    rng = np.random.default_rng(0)
    rate, out = 22050, []
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.normal(size=t.size)
        path = root / f"clip{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), rate)
        out.append(path)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def load_test(port: int, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    """``requests`` POSTs from ``concurrency`` threads: requests/s and latency percentiles."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            start = time.perf_counter()
            conn.request("POST", "/predict", body=bodies[i % len(bodies)],
                         headers={"Content-Type": "audio/wav"})  # fmt: skip
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                failures[0] += response.status != 200
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "requests": requests,
        "failures": failures[0],
        "requests_per_s": round(requests / wall, 2),
        "p50_ms": round(1e3 * percentile(latencies, 50), 1),
        "p99_ms": round(1e3 * percentile(latencies, 99), 1),
    }


def serve_figures(bundle: Path, clips: list[Path], counts: dict[int, int], cpus: int) -> dict:
    """Each batching setting deployed in turn on one Serve instance; the load at each level."""
    import ray
    from ray import serve

    from mrnet_ray.inference import serving

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serving.start_http("127.0.0.1", port)
    bodies = [c.read_bytes() for c in clips]
    out = {}
    try:
        for name, max_batch in [("batching", 8), ("no batching", 1)]:
            opts = serving.ServeOptions(
                model=str(bundle), port=port, max_batch=max_batch, cpus_per_replica=cpus
            )
            serving.deploy(opts, str(bundle))
            load_test(port, bodies, 4, 8)  # warm-up: the replica's first forward passes
            levels = {}
            for c in CONCURRENCY:
                levels[str(c)] = load_test(port, bodies, c, counts[c])
                r = levels[str(c)]
                print(f"{name:>11}, concurrency {c:2d}: {r['requests_per_s']:6.1f} req/s, "
                      f"p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms "
                      f"({r['failures']} failed)", flush=True)  # fmt: skip
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/")
            levels["batch_sizes"] = json.loads(conn.getresponse().read())["replica"]["batches"]
            out[name] = levels
            serve.delete(serving.APP)  # its replica holds every CPU
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def cli_seconds(bundle: Path, clip: Path, runs: int) -> float:
    """Median wall time of ``python -m mrnet_ray.predict BUNDLE CLIP`` (a fresh process)."""
    times = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mrnet_ray.predict", str(bundle), str(clip)],
                       check=True, capture_output=True, env=env)  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_process_seconds(bundle: Path, clips: list[Path], threads: int) -> float:
    """Seconds per file of ``predict_file`` in one warm process (no HTTP, no Ray)."""
    from mrnet_ray.inference.predict import open_model, predict_file

    torch.set_num_threads(threads)
    model = open_model(str(bundle))
    predict_file(model, clips[0])  # warm-up
    start = time.perf_counter()
    for clip in clips:
        predict_file(model, clip)
    return (time.perf_counter() - start) / len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    counts = {1: 24, 8: 48, 32: 96} if args.quick else {1: 100, 8: 200, 32: 400}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle, clips = make_bundle(root), make_clips(root, 16)
        cli = cli_seconds(bundle, clips[0], 2 if args.quick else 5)
        print(f"per-file predict CLI: {cli:.2f} s per call ({1 / cli:.2f} files/s)", flush=True)
        loop = min(in_process_seconds(bundle, clips, t) for t in sorted({1, cpus}))
        print(f"predict_file in one warm process: {1e3 * loop:.0f} ms per file", flush=True)
        figures = serve_figures(bundle, clips, counts, cpus)
    result = {
        "cpus": cpus, "clip_seconds": CLIP_SECONDS, "channels": 64, "quick": args.quick,
        "cli_s_per_call": round(cli, 3), "in_process_ms_per_file": round(1e3 * loop, 1),
        "serve": figures,
    }  # fmt: skip
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
