"""Training throughput through Ray Train V2 against a bare PyTorch loop, plus the data path.

Builds its own prepared directory of synthetic segments with the default features (128 mel
bands x 129 frames), then measures with the demo-size model (C=64) and the same batches:

- samples/s of ``engine.train_epoch`` over in-memory tensors (bare PyTorch, no Ray);
- samples/s reported by ``make_trainer(...).fit()`` with 1 and with 2 workers (median of the
  epochs after the first); target: 1 worker >= 0.9 x bare;
- rows/s of a worker iterating its shard with ``iter_torch_batches`` and no training (with
  and without the local shuffle buffer); target: >= 5 x the training rate;
- seconds from launch (before ``make_trainer``) to the first optimizer step on a worker, and
  the per-trial overhead: the share of ``fit``'s wall time outside the epochs (worker start,
  data set-up, checkpoints, shutdown) at this demo scale;
- peak RSS of one training worker with the default config (the full-size MRNet, C=512,
  batch 32): ``ru_maxrss`` of the worker process after a few steps and an evaluation.

    python benchmarks/bench_train.py            # 640 training segments, 3 epochs
    python benchmarks/bench_train.py --quick    # 320 segments, 2 epochs, no 2-worker run
    python benchmarks/bench_train.py --json OUT # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from mrnet_ray.config import FeatureConfig, MRNetConfig, ResourcesConfig, TrainConfig, TrialConfig
from mrnet_ray.nn import build_model
from mrnet_ray.shards import open_prepared
from mrnet_ray.training.checkpoint import load_checkpoint
from mrnet_ray.training.loop import evaluate, make_optimizer, make_scheduler, train_epoch
from mrnet_ray.training.raytrain import fit_to_data, make_trainer, train_batches

LABELS = ("a", "b", "c", "d")
SEGMENTS_PER_TRACK = 4


def write_prepared(root: Path, train: int, valid: int, feature: FeatureConfig) -> Path:
    """A contract-conformant prepared directory of random segments (class c lifts band c)."""
    rng = np.random.default_rng(0)
    counts, index = {}, 0
    for split, n in (("train", train), ("valid", valid)):
        rows = []
        for i in range(n):
            label = (i // SEGMENTS_PER_TRACK) % len(LABELS)
            mel = rng.normal(size=(feature.n_mels, feature.segment_frames)).astype(np.float32)
            mel[label] += 1.0
            rows.append({
                "track_id": f"{LABELS[label]}.{index + i // SEGMENTS_PER_TRACK:05d}",
                "track_index": index + i // SEGMENTS_PER_TRACK,
                "segment": i % SEGMENTS_PER_TRACK, "label": label,
                "label_name": LABELS[label], "split": split, "mel": mel,
            })  # fmt: skip
        index += n // SEGMENTS_PER_TRACK + 1
        ray.data.from_items(rows, override_num_blocks=4).write_parquet(str(root / split))
        tracks = n // SEGMENTS_PER_TRACK
        counts[split] = {"tracks": tracks, "segments": n, "per_class": {}}
    manifest = {
        "format": 1, "dataset": "synthetic", "root": "", "feature": feature.to_dict(),
        "labels": list(LABELS), "counts": counts, "skipped": [], "content_hash": "bench",
        "created": "1970-01-01T00:00:00+00:00", "mrnet_ray_version": "bench",
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def bare_rate(prepared_dir: Path, trial: TrialConfig, threads: int) -> float:
    """Median samples/s of ``train_epoch`` over in-memory batches, epochs after the first."""
    torch.set_num_threads(threads)
    cfg = trial.train
    arrays = open_prepared(prepared_dir).read_arrays("train")
    mel, label = torch.from_numpy(arrays.mel.copy()), torch.from_numpy(arrays.label)
    track = torch.from_numpy(arrays.track_index)
    n = len(label) // cfg.batch_size * cfg.batch_size
    batches = [
        {"mel": mel[i : i + cfg.batch_size], "label": label[i : i + cfg.batch_size],
         "track_index": track[i : i + cfg.batch_size]}
        for i in range(0, n, cfg.batch_size)
    ]  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = build_model(trial.model)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(batches))
    rates = []
    for _ in range(cfg.epochs):
        out = train_epoch(
            model, batches, optimizer, scheduler, cfg, torch.device("cpu"),
            n_classes=trial.model.n_classes,
        )  # fmt: skip
        rates.append(out["samples"] / out["seconds"])
    return statistics.median(rates[1:])


def ray_rate(prepared_dir, trial, resources, storage, name) -> tuple[float, float, float]:
    """(median samples/s of epochs after the first, wall seconds of fit, the share of that
    wall time spent outside the epochs)."""
    start = time.perf_counter()
    result = make_trainer(str(prepared_dir), trial, resources, storage, name).fit()
    wall = time.perf_counter() - start
    history = load_checkpoint(result.checkpoint.path)["history"]
    overhead = 1 - sum(m["epoch_time_s"] for m in history) / wall
    return statistics.median(m["samples_per_s"] for m in history[1:]), wall, overhead


@dataclass
class Worker:
    """What a probe loop sets up like ``train_loop_per_worker`` does."""

    trial: TrialConfig
    rank: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    shard: ray.data.DataIterator
    device: torch.device

    @classmethod
    def set_up(cls, config: dict) -> Worker:
        trial = TrialConfig.from_dict(config["trial"])
        torch.set_num_threads(ResourcesConfig.from_dict(config["resources"]).threads)
        model = ray.train.torch.prepare_model(build_model(trial.model))
        optimizer = make_optimizer(model, trial.train)
        return cls(
            trial, ray.train.get_context().get_world_rank(), model, optimizer,
            make_scheduler(optimizer, trial.train, config["steps_per_epoch"]),
            ray.train.get_dataset_shard("train"), ray.train.torch.get_device(),
        )  # fmt: skip

    def train(self, batches: list[dict]) -> None:
        train_epoch(self.model, batches, self.optimizer, self.scheduler, self.trial.train,
                    self.device, n_classes=self.trial.model.n_classes)  # fmt: skip


def report(metrics: dict) -> None:
    """Ray Train V2 keeps only the metrics that come with a checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "metrics.json").write_text(json.dumps(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def probe_loop(config: dict) -> None:
    """Worker: time to the first step, then two epochs of iteration without training."""
    w = Worker.set_up(config)
    rank, shard = w.rank, w.shard
    batches = iter(train_batches(shard, config, 1, rank))
    w.train([next(batches)])
    first_step = time.time() - config["launched"]
    for _ in batches:  # finish the epoch: a streaming split wants whole epochs
        pass
    rates = {}
    for epoch, key, shuffle in ((2, "shuffled", config["shuffle_rows"]), (3, "plain", None)):
        start, rows = time.perf_counter(), 0
        for batch in train_batches(shard, {**config, "shuffle_rows": shuffle}, epoch, rank):
            rows += len(batch["label"])
        rates[key] = rows / (time.perf_counter() - start)
    report({"first_step_s": first_step, **rates})


def memory_loop(config: dict) -> None:
    """Worker: RSS after set-up, then peak RSS over a few training steps and an evaluation."""
    w = Worker.set_up(config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stream = iter(train_batches(w.shard, config, 1, w.rank))
    batches = [next(stream) for _ in range(config["memory_steps"])]
    for _ in stream:  # finish the epoch: a streaming split wants whole epochs
        pass
    w.train(batches)
    evaluate(w.model, batches, w.trial.model.n_classes, w.device)
    report({
        "rss_after_setup_mb": before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })  # fmt: skip


def probe(prepared_dir, trial, resources, storage, loop=probe_loop, **extra) -> dict:
    """Run ``loop`` on one worker with the trainer ``make_trainer`` would build for ``trial``."""
    launched = time.time()
    base = make_trainer(str(prepared_dir), trial, resources, storage, loop.__name__)
    trainer = ray.train.torch.TorchTrainer(
        loop,
        train_loop_config={**base.train_loop_config, "launched": launched, **extra},
        scaling_config=base.scaling_config,
        run_config=ray.train.RunConfig(name=loop.__name__, storage_path=storage),
        datasets=base.datasets,
        dataset_config=base.data_config,
    )
    return trainer.fit().metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="320 segments, 2 epochs, 1 worker")
    parser.add_argument("--batch", type=int, default=16, help="segments per step (16)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a cluster given by RAY_ADDRESS, else a local Ray limited to 2 CPUs (this machine's size)
    ray.init(**({} if "RAY_ADDRESS" in os.environ else {"num_cpus": 2}))
    ray.data.DataContext.get_current().enable_progress_bars = False
    feature = FeatureConfig()
    train, epochs = (320, 2) if args.quick else (640, 3)
    with tempfile.TemporaryDirectory() as tmp:
        prepared_dir = write_prepared(Path(tmp) / "prepared", train, 64, feature)
        trial = fit_to_data(
            TrialConfig(
                model=MRNetConfig(channels=64),
                train=TrainConfig(epochs=epochs, batch_size=args.batch, warmup_fraction=0.1),
            ),
            open_prepared(prepared_dir),
        )
        storage = str(Path(tmp) / "runs")
        one = ResourcesConfig(num_workers=1, cpus_per_worker=1.0)
        two = ResourcesConfig(num_workers=2, cpus_per_worker=0.4)
        bare = bare_rate(prepared_dir, trial, one.threads)
        ray_one, wall_one, overhead = ray_rate(prepared_dir, trial, one, storage, "one")
        ray_two, wall_two = (
            (float("nan"), float("nan"))
            if args.quick
            else ray_rate(prepared_dir, trial, two, storage, "two")[:2]
        )
        probed = probe(prepared_dir, trial, one, storage)
        default = fit_to_data(TrialConfig(), open_prepared(prepared_dir))
        memory = probe(prepared_dir, default, one, storage, memory_loop, memory_steps=3)

    step_rate = ray_one / args.batch
    print(
        f"\n{train} segments of {feature.n_mels} x {feature.segment_frames}, batch "
        f"{args.batch}, MRNet C=64, {epochs} epochs, {one.threads} torch thread(s) per worker\n"
    )
    print("| measurement | value | target |")
    print("|---|---:|---|")
    print(f"| bare PyTorch loop, samples/s | {bare:.1f} | |")
    print(f"| Ray Train, 1 worker (1 CPU), samples/s | {ray_one:.1f} | |")
    print(f"| ratio 1 worker / bare | {ray_one / bare:.2f} | >= 0.9 |")
    print(f"| Ray Train, 2 workers (0.4 CPU each), samples/s | {ray_two:.1f} | |")
    print(f"| fit wall time, 1 / 2 workers, s | {wall_one:.1f} / {wall_two:.1f} | |")
    print(f"| training steps/s, 1 worker | {step_rate:.2f} | |")
    for key in ("shuffled", "plain"):
        rows = probed[key]
        print(
            f"| iter_torch_batches only ({key}), batches/s | {rows / args.batch:.1f} "
            f"(x{rows / args.batch / step_rate:.0f} the step rate) | >= 5x |"
        )
    print(f"| launch to first step, 1 worker, s | {probed['first_step_s']:.1f} | |")
    print(f"| per-trial overhead, share of fit wall time | {overhead:.0%} | |")
    print(
        f"| worker RSS, default config (C=512, batch 32): after set-up / peak, MB "
        f"| {memory['rss_after_setup_mb']:.0f} / {memory['peak_rss_mb']:.0f} | |"
    )
    if args.json:
        results = {
            "segments": train, "epochs": epochs, "batch": args.batch,
            "threads_per_worker": one.threads, "bare_samples_per_s": round(bare, 1),
            "ray_1_worker_samples_per_s": round(ray_one, 1),
            "ray_2_workers_samples_per_s": round(ray_two, 1),
            "ratio_ray_over_bare": round(ray_one / bare, 3),
            "fit_wall_s": {"1": round(wall_one, 1), "2": round(wall_two, 1)},
            "data_batches_per_s": {
                k: round(probed[k] / args.batch, 1) for k in ("shuffled", "plain")
            },
            "data_over_step_rate": {
                k: round(probed[k] / args.batch / step_rate, 1) for k in ("shuffled", "plain")
            },
            "launch_to_first_step_s": round(probed["first_step_s"], 1),
            "trial_overhead_share": round(overhead, 3),
            "worker_rss_mb": {
                "after_setup": round(memory["rss_after_setup_mb"]),
                "peak": round(memory["peak_rss_mb"]),
            },
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
