"""Search efficiency on the demo corpus: TPE + ASHA against random search + FIFO.

Runs two searches of ``search_spaces/demo.yaml`` on the prepared demo shards with the same
number of trials, seed and resources, each through the real command line
(``python -m mrnet_ray.tune``: Ray Tune, Optuna, Ray Train, MLflow), then reads every
trial's per-epoch validation accuracy back from the searches' MLflow stores. Trials run one
at a time on two cores, so start order is finishing order; the curve is the best track-level
validation accuracy seen so far against the epochs trained so far, and "compute saved" is
one minus the ratio of epochs (and of wall time) ASHA's search spent to FIFO's.

Both arms start from the space's paper-like default point (Optuna's first trial). Optuna's
TPE draws at random until it has ``n_startup_trials`` (10) results, so with fewer trials
than that the two arms differ by the scheduler alone; the figures say what ASHA saves at
equal trial counts, not how well TPE models the space.

    python benchmarks/bench_search.py --data data/demo [--trials 6] [--json OUT]
    python benchmarks/bench_search.py --data data/demo --quick   # 1 trial of 1 epoch per arm
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mrnet_ray.tracking import list_trial_runs, metric_histories

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
ARMS = {"tpe+asha": ("tpe", "asha"), "random+fifo": ("random", "fifo")}


def run_search(data: str, space: Path, trials: int, arm: str, run_dir: Path) -> float:
    """One search through the CLI; returns its wall seconds."""
    searcher, scheduler = ARMS[arm]
    argv = [
        sys.executable, "-m", "mrnet_ray.tune", "--data", data, "--space", str(space),
        "--num-samples", str(trials), "--searcher", searcher, "--scheduler", scheduler,
        "--name", arm.replace("+", "-"), "--run-dir", str(run_dir), "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    log = run_dir.parent / f"{run_dir.name}.log"
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{arm} search failed (exit {done.returncode}); see the end of {log}")
    return time.perf_counter() - start


def trial_curves(run_dir: Path) -> list[dict]:
    """Per trial (start order): its status and validation accuracy after each epoch."""
    record = json.loads((run_dir / "search.json").read_text())
    runs = list_trial_runs(record["tracking_uri"], record["experiment"], record["parent_run_id"])
    histories = metric_histories(
        record["tracking_uri"], [r.run_id for r in runs], "valid_track_acc"
    )
    return [
        {
            "trial_id": r.trial_id,
            "status": r.status,
            "valid_track_acc": [round(v, 4) for _, v in sorted(histories[r.run_id].items())],
        }
        for r in runs
    ]


def best_so_far(trials: list[dict]) -> list[tuple[int, float]]:
    """``(epochs spent, best accuracy)`` after each trial, in trial order."""
    points, epochs, best = [], 0, 0.0
    for t in trials:
        epochs += len(t["valid_track_acc"])
        best = max([best, *t["valid_track_acc"]])
        points.append((epochs, round(best, 4)))
    return points


def quick_space(directory: Path) -> Path:
    """The demo space with 1 epoch per trial (``--quick``: a smoke run, no comparison)."""
    path = directory / "demo-quick.yaml"
    text = re.sub(r"(?m)^  epochs: \d+$", "  epochs: 1", SPACE.read_text())
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="prepared demo shards (data/demo)")
    parser.add_argument("--trials", type=int, default=6, help="trials per search (6)")
    parser.add_argument("--quick", action="store_true", help="1 trial of 1 epoch per arm")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    trials = 1 if args.quick else args.trials
    results: dict = {"trials": trials, "arms": {}}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        space = quick_space(Path(tmp)) if args.quick else SPACE
        for arm in ARMS:
            run_dir = Path(tmp) / arm.replace("+", "-")
            print(f"{arm}: {trials} trials of {space.name} ...", flush=True)
            wall = run_search(data, space, trials, arm, run_dir)
            curves = trial_curves(run_dir)
            curve = best_so_far(curves)
            results["arms"][arm] = {
                "wall_s": round(wall, 1),
                "epochs": curve[-1][0] if curve else 0,
                "best_valid_track_acc": curve[-1][1] if curve else 0.0,
                "outcomes": json.loads((run_dir / "search.json").read_text())["trials"],
                "curve": curve,
                "trials": curves,
            }
    asha, fifo = results["arms"]["tpe+asha"], results["arms"]["random+fifo"]
    results["epochs_saved"] = round(1 - asha["epochs"] / fifo["epochs"], 3)
    results["wall_saved"] = round(1 - asha["wall_s"] / fifo["wall_s"], 3)
    print("\n| search | trials | epochs spent | wall s | best valid track acc |")
    print("|---|---:|---:|---:|---:|")
    for arm, r in results["arms"].items():
        print(
            f"| {arm} | {trials} | {r['epochs']} | {r['wall_s']:.0f} "
            f"| {r['best_valid_track_acc']:.3f} |"
        )
    print(
        f"\nASHA saved {results['epochs_saved']:.0%} of the epochs and "
        f"{results['wall_saved']:.0%} of the wall time"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
