"""Model quality on the demo corpus: MRNet against ECAPA, the short-chunk CNN and a linear anchor.

Every network trains with the same recipe, the demo search space's default point
(``search_spaces/demo.yaml``: its paper-like MRNet, width and training settings), for the same
number of epochs and over the same seeds, on the prepared demo shards (``make demo``'s
``data/demo``). Only ``arch`` changes: ``ecapa`` is the same network with one depth-1 route
per block, ``shortchunk`` the 2-D short-chunk ResNet at that width. Training is a bare
PyTorch loop over in-memory tensors (``engine.train_epoch``; Ray is measured in
``bench_train``); two runs go side by side, one torch thread each, which uses two cores
better than one run with two threads.

Reported per model: track-level test accuracy (mean and spread over seeds), track-level
validation accuracy after each epoch (learning curves), parameters, forward FLOPs of one
segment, and CPU inference time per 30 s track (the segments of one 30 s track in one
batch, one thread, median of 5). The anchor is non-neural: the prepared directory's built-in
linear baseline (``shards.baseline``: per-track mean and standard deviation of each log-mel
band, standardised, logistic regression with ``C`` chosen on valid, scored on test).

    python benchmarks/bench_quality.py --data data/demo [--epochs 12] [--seeds 3] [--json OUT]
    python benchmarks/bench_quality.py --data data/demo --archs mrnet ecapa --channels 64
    python benchmarks/bench_quality.py --data data/demo --quick     # 2 epochs, 1 seed
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from mrnet_ray import features
from mrnet_ray.config import FeatureConfig, TrialConfig
from mrnet_ray.nn import build_model, model_cost
from mrnet_ray.search.space import load_space
from mrnet_ray.shards import SplitArrays, open_prepared
from mrnet_ray.shards.baseline import ensure_baseline
from mrnet_ray.training.loop import evaluate, make_optimizer, make_scheduler, train_epoch
from mrnet_ray.training.raytrain import fit_to_data

ARCHS = ("mrnet", "ecapa", "shortchunk")
SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"


def demo_trial(
    prepared_dir: str, arch: str, epochs: int, channels: int | None = None
) -> TrialConfig:
    """The demo space's default point with ``arch``, ``epochs`` (and ``channels``), sized to
    the data."""
    prepared = open_prepared(prepared_dir)
    space = load_space(SPACE)
    trial = space.to_trial(
        space.default_point(), n_mels=prepared.feature.n_mels, n_classes=len(prepared.labels)
    )
    model = trial.model.replace(arch=arch, channels=channels or trial.model.channels)
    trial = trial.replace(model=model, train=trial.train.replace(epochs=epochs))
    return fit_to_data(trial, prepared)


def batches(arrays: SplitArrays, size: int, order: np.ndarray | None = None) -> list[dict]:
    """``arrays`` as a list of batch dicts (``mel`` ``(b, n_mels, frames)``), in ``order``."""
    order = np.arange(len(arrays.label)) if order is None else order
    out = []
    for i in range(0, len(order), size):
        rows = order[i : i + size]
        out.append({
            "mel": torch.from_numpy(arrays.mel[rows]),
            "label": torch.from_numpy(arrays.label[rows]),
            "track_index": torch.from_numpy(arrays.track_index[rows]),
        })  # fmt: skip
    return out


def train_one(prepared_dir: str, arch: str, seed: int, epochs: int, channels: int | None) -> dict:
    """Train one model from ``seed``; track accuracy on valid after each epoch and on test."""
    torch.set_num_threads(1)
    trial = demo_trial(prepared_dir, arch, epochs, channels)
    prepared = open_prepared(prepared_dir)
    train, valid, test = (prepared.read_arrays(s) for s in ("train", "valid", "test"))
    cfg, n_classes = trial.train, trial.model.n_classes
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(trial.model)
    optimizer = make_optimizer(model, cfg)
    steps = -(-len(train.label) // cfg.batch_size)
    scheduler = make_scheduler(optimizer, cfg, steps)
    cpu, curve, seconds = torch.device("cpu"), [], 0.0
    for _ in range(epochs):
        order = rng.permutation(len(train.label))
        out = train_epoch(
            model, batches(train, cfg.batch_size, order), optimizer, scheduler, cfg, cpu,
            n_classes=n_classes,
        )  # fmt: skip
        seconds += out["seconds"]
        curve.append(evaluate(model, batches(valid, 64), n_classes, cpu).metrics())
    test_metrics = evaluate(model, batches(test, 64), n_classes, cpu).metrics()
    return {
        "arch": arch,
        "seed": seed,
        "valid_track_acc": [round(m["valid_track_acc"], 4) for m in curve],
        "test_track_acc": round(test_metrics["valid_track_acc"], 4),
        "test_macro_f1": round(test_metrics["valid_macro_f1"], 4),
        "train_s_per_epoch": round(seconds / epochs, 2),
    }


def inference_ms(trial: TrialConfig, feature: FeatureConfig, repeats: int = 5) -> float:
    """Median ms of one forward pass over the segments of a 30 s track, one thread."""
    torch.set_num_threads(1)
    frames = int(30 * feature.sample_rate) // feature.hop_length + 1
    n_segments = features.segment(np.zeros((feature.n_mels, frames), np.float32), feature).shape[0]
    model = build_model(trial.model).eval()
    x = torch.randn(n_segments, feature.n_mels, feature.segment_frames)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3


def anchor(prepared_dir: str) -> dict:
    """The prepared directory's linear baseline (:mod:`mrnet_ray.shards.baseline`)."""
    prepared = open_prepared(prepared_dir)
    baseline = ensure_baseline(prepared)
    return {
        "test_track_acc": round(baseline["test_track_acc"], 4),
        "C": baseline["C"],
        "features": 2 * prepared.feature.n_mels,
        "train_tracks": baseline["train_tracks"],
    }


def summarise(
    runs: list[dict], prepared_dir: str, epochs: int, archs: tuple[str, ...], channels: int | None
) -> dict:
    """Per architecture: mean/std/min/max test accuracy, mean curve, cost figures."""
    feature = open_prepared(prepared_dir).feature
    out = {}
    for arch in archs:
        mine = [r for r in runs if r["arch"] == arch]
        accs = [r["test_track_acc"] for r in mine]
        trial = demo_trial(prepared_dir, arch, epochs, channels)
        cost = model_cost(trial.model, feature.segment_frames)
        out[arch] = {
            "test_track_acc_mean": round(statistics.fmean(accs), 4),
            "test_track_acc_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
            "test_track_acc_min": min(accs),
            "test_track_acc_max": max(accs),
            "valid_curve_mean": [
                round(statistics.fmean(c), 4)
                for c in zip(*(r["valid_track_acc"] for r in mine), strict=True)
            ],
            "params": cost.params,
            "mflops_per_segment": round(cost.flops / 1e6, 1),
            "inference_ms_per_30s_track": round(inference_ms(trial, feature), 1),
            "train_s_per_epoch": round(statistics.fmean(r["train_s_per_epoch"] for r in mine), 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="prepared demo shards (data/demo)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per model (12)")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--channels", type=int, help="width C of every model (the space's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model (3)")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (2)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    epochs, seeds = (2, 1) if args.quick else (args.epochs, args.seeds)
    data = str(Path(args.data).resolve())
    prepared = open_prepared(data)
    counts = {s: prepared.manifest["counts"][s]["tracks"] for s in ("train", "valid", "test")}
    archs = tuple(args.archs)
    trial = demo_trial(data, "mrnet", epochs, args.channels)
    print(f"demo corpus {data}: {len(prepared.labels)} classes, tracks {counts}")
    print(f"recipe: {epochs} epochs, seeds 0..{seeds - 1}, {trial.model}\n")

    start = time.perf_counter()
    jobs = [(data, arch, seed, epochs, args.channels) for seed in range(seeds) for arch in archs]
    context = multiprocessing.get_context("spawn")
    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        for done in as_completed([pool.submit(train_one, *job) for job in jobs]):
            runs.append(done.result())
            r = runs[-1]
            print(
                f"  [{len(runs)}/{len(jobs)}] {r['arch']:>10} seed {r['seed']}: test track acc "
                f"{r['test_track_acc']:.3f} ({r['train_s_per_epoch']:.1f} s/epoch)",
                flush=True,
            )
    runs.sort(key=lambda r: (archs.index(r["arch"]), r["seed"]))
    results = {
        "epochs": epochs,
        "seeds": seeds,
        "counts": counts,
        "classes": len(prepared.labels),
        "model": trial.model.to_dict(),
        "train": trial.train.to_dict(),
        "runs": runs,
        "models": summarise(runs, data, epochs, archs, args.channels),
        "anchor": anchor(data),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print("\n| model | test track acc (mean ± sd) | min / max | params | MFLOPs / segment "
          "| CPU ms / 30 s track |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for arch, m in results["models"].items():
        print(
            f"| {arch} | {m['test_track_acc_mean']:.3f} ± {m['test_track_acc_std']:.3f} "
            f"| {m['test_track_acc_min']:.3f} / {m['test_track_acc_max']:.3f} "
            f"| {m['params'] / 1e3:.0f} k | {m['mflops_per_segment']:.0f} "
            f"| {m['inference_ms_per_30s_track']:.0f} |"
        )
    print(f"| log-mel mean/std + logistic regression | {results['anchor']['test_track_acc']:.3f} "
          "| | | | |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
