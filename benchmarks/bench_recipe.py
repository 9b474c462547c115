"""What each change of the training recipe buys on the demo corpus, against the linear baseline.

Every run trains the demo search space's default point (``search_spaces/demo.yaml``) through
the trials' own epoch body (``training.fit`` over in-memory splits, one torch thread; two runs
side by side), changing one thing of the recipe at a time, over the same seeds, and scores
the last epoch's model per track on the test split: with the prepared segments (3 s, no
overlap) and, when ``--overlap DIR`` names the same corpus prepared with a shorter segment hop
(``prepare --segment-hop-seconds 1.5``), on those overlapping segments too, logits averaged
per track. The baseline is the prepared directory's own (``shards.baseline``: log-mel mean
and std per band, logistic regression with C chosen on valid).

    python benchmarks/bench_recipe.py --data data/demo-hop3 --overlap data/demo-hop15 \\
        [--variants epochs-4 epochs-12 ...] [--seeds 3] [--json OUT]
    python benchmarks/bench_recipe.py --data data/demo --quick   # epochs 4 and 8, one seed

``--data`` prepared with ``--eval-hop-seconds 3`` scores without overlap, as every prepared
directory did before ``eval_hop_seconds``; ``--overlap`` prepared with ``--segment-hop-seconds
1.5`` overlaps in every split. ``results/recipe*.json`` were measured so, on both demo corpora
(``--instruments score`` and ``random``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from bench_quality import demo_trial

from mrnet_ray.shards import open_prepared
from mrnet_ray.shards.baseline import ensure_baseline
from mrnet_ray.training.feed import MemoryFeed, concat
from mrnet_ray.training.fit import LocalSession, fit, plan
from mrnet_ray.training.loop import evaluate

VARIANTS: dict[str, dict[str, Any]] = {
    # name: TrainConfig changes over the demo default point; "fit_on" the splits trained on,
    # "train_on": "overlap" trains on the --overlap directory's segments
    "epochs-4": {"epochs": 4},  # what a demo trial trained for before
    "epochs-8": {"epochs": 8},
    "epochs-12": {"epochs": 12},
    "epochs-12+specaugment": {"epochs": 12, "freq_mask": 8, "time_mask": 16},
    "epochs-12+mixup": {"epochs": 12, "mixup_alpha": 0.2},
    "epochs-12+crop": {"epochs": 12, "crop_frames": 96},
    "epochs-12+no-smoothing": {"epochs": 12, "label_smoothing": 0.0},
    "epochs-12+ema": {"epochs": 12, "ema_decay": 0.99},
    "epochs-12+train-valid": {"epochs": 12, "fit_on": "train+valid"},
    # trained on the overlapping segments of --overlap: 12 epochs, and 7 (about as many steps)
    "epochs-12+overlap-train": {"epochs": 12, "train_on": "overlap"},
    "epochs-7+overlap-train": {"epochs": 7, "train_on": "overlap"},
}


def train_one(data: str, overlap: str | None, variant: str, seed: int) -> dict[str, Any]:
    """Train ``variant`` from ``seed``; its valid curve and its test track accuracy."""
    torch.set_num_threads(1)
    changes = dict(VARIANTS[variant])
    fit_on = changes.pop("fit_on", "train")
    if changes.pop("train_on", None) == "overlap":
        if overlap is None:
            raise SystemExit(f"{variant} needs --overlap DIR")
        data, overlap = overlap, overlap
    base = demo_trial(data, "mrnet", changes.get("epochs", 12))
    trial = base.replace(train=base.train.replace(seed=seed, **changes))
    prepared = open_prepared(data)
    train, valid = prepared.read_arrays("train"), prepared.read_arrays("valid")
    fitted = concat(train, valid) if fit_on == "train+valid" else train
    session = LocalSession()
    start = time.perf_counter()
    feed = MemoryFeed(fitted, valid, trial.train.batch_size, seed)
    fit(trial, plan(prepared, trial, 1, fit_on), feed, session)
    seconds = time.perf_counter() - start
    model = _model(trial, session.state)
    out = {
        "variant": variant,
        "seed": seed,
        "valid_track_acc": [round(r["valid_track_acc"], 4) for r in session.reports],
        "test_track_acc": _test(model, data),
        "train_s": round(seconds, 1),
    }
    if overlap:
        out["test_track_acc_overlap"] = _test(model, overlap, prepared.labels)
    return out


def _model(trial, state) -> torch.nn.Module:
    from mrnet_ray.nn import build_model

    model = build_model(trial.model)
    model.load_state_dict(state["model"])
    return model.eval()


def _test(model: torch.nn.Module, data: str, labels: tuple[str, ...] | None = None) -> float:
    prepared = open_prepared(data)
    if labels is not None and tuple(prepared.labels) != tuple(labels):
        raise SystemExit(f"{data}: labels {prepared.labels} differ from {labels}")
    test = prepared.read_arrays("test")
    feed = MemoryFeed(test, test, 64, 0)
    stats = evaluate(model, feed.valid(0, 1), len(prepared.labels), torch.device("cpu"))
    return round(stats.metrics()["valid_track_acc"], 4)


def summarise(runs: list[dict], variants: list[str], baseline: float) -> dict[str, Any]:
    """Per variant: mean/sd of test track accuracy (plain and overlapping) and its margin."""
    out = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        row: dict[str, Any] = {"runs": len(mine)}
        for key in ("test_track_acc", "test_track_acc_overlap"):
            accs = [r[key] for r in mine if key in r]
            if accs:
                row[f"{key}_mean"] = round(statistics.fmean(accs), 4)
                row[f"{key}_sd"] = round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0
                row[f"{key}_margin_points"] = round(100 * (row[f"{key}_mean"] - baseline), 1)
        row["train_s_mean"] = round(statistics.fmean(r["train_s"] for r in mine), 1)
        out[variant] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="prepared demo shards")
    parser.add_argument("--overlap", help="the same corpus prepared with a shorter segment hop")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (3)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (2)")
    parser.add_argument("--quick", action="store_true", help="epochs 4 and 8, one seed")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.variants, args.seeds = ["epochs-4", "epochs-8"], 1
    data = str(Path(args.data).resolve())
    overlap = str(Path(args.overlap).resolve()) if args.overlap else None
    prepared = open_prepared(data)
    baseline = ensure_baseline(prepared)
    print(f"{data}: {len(prepared.labels)} classes; linear baseline test track acc "
          f"{baseline['test_track_acc']:.3f}")  # fmt: skip

    start = time.perf_counter()
    jobs = [(data, overlap, v, seed) for seed in range(args.seeds) for v in args.variants]
    runs: list[dict] = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        for done in as_completed([pool.submit(train_one, *job) for job in jobs]):
            r = done.result()
            runs.append(r)
            extra = f", overlapping {r['test_track_acc_overlap']:.3f}" if overlap else ""
            print(f"  [{len(runs)}/{len(jobs)}] {r['variant']:>24} seed {r['seed']}: test "
                  f"{r['test_track_acc']:.3f}{extra} ({r['train_s']:.0f} s)",
                  flush=True)  # fmt: skip
    runs.sort(key=lambda r: (args.variants.index(r["variant"]), r["seed"]))
    results = {
        "data": data,
        "overlap": overlap,
        "seeds": args.seeds,
        "baseline": baseline,
        "runs": runs,
        "variants": summarise(runs, args.variants, baseline["test_track_acc"]),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print("\n| recipe | test track acc | margin | overlapping eval | margin | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, v in results["variants"].items():
        over = (
            f"{v['test_track_acc_overlap_mean']:.3f} ± {v['test_track_acc_overlap_sd']:.3f} "
            f"| {v['test_track_acc_overlap_margin_points']:+.1f}"
            if "test_track_acc_overlap_mean" in v
            else "| "
        )
        print(f"| {name} | {v['test_track_acc_mean']:.3f} ± {v['test_track_acc_sd']:.3f} "
              f"| {v['test_track_acc_margin_points']:+.1f} | {over} "
              f"| {v['train_s_mean']:.0f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
