"""Search efficiency on the demo corpus: TPE + ASHA against random search + FIFO.

Each arm runs ``--reps`` searches of ``search_spaces/demo.yaml`` (seeds 0, 1, ...) with the
same trial budget, through the real command line (``python -m mrnet_ray.tune``: Ray Tune,
Optuna, MLflow, trials side by side as ``make demo`` runs them), the arms interleaved so the
machine's load falls on both alike. From each search's Tune results it keeps the best
track-level validation accuracy, the wall time, the epochs trained, and the best-so-far
curve against wall time (every epoch any trial reported, in time order).

The figure of merit: the wall time TPE + ASHA needs to reach random + FIFO's median best
(median over its repetitions; a repetition that never reaches it counts as never), over
random + FIFO's median wall time. Raw figures::

    {"arms": {"tpe+asha": [{"seed": S, "best": B, "wall_s": W, "epochs": E, "curve": [...]}],
              "random+fifo": [...]}, ...}

    python benchmarks/bench_search.py --data data/demo [--trials 8] [--reps 3] [--json OUT]
    python benchmarks/bench_search.py --data data/demo --quick   # 1 trial of 1 epoch per arm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mrnet_ray.search import outcomes as outcomes_mod
from mrnet_ray.search.planned import Search
from mrnet_ray.search.record import read_record
from mrnet_ray.search.settings import METRIC

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
ARMS = {"tpe+asha": ("tpe", "asha"), "random+fifo": ("random", "fifo")}


def run_search(data: str, space: Path, trials: int, arm: str, seed: int, run_dir: Path) -> dict:
    """One search through the CLI: its seed, best, wall seconds, epochs and curve."""
    searcher, scheduler = ARMS[arm]
    argv = [
        sys.executable, "-m", "mrnet_ray.tune", "--data", data, "--space", str(space),
        "--num-samples", str(trials), "--searcher", searcher, "--scheduler", scheduler,
        "--name", f"{arm.replace('+', '-')}-{seed}", "--run-dir", str(run_dir),
        "--seed", str(seed),
    ]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = run_dir.parent / f"{run_dir.name}.log"
    start = time.time()
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"{arm} seed {seed}: search failed (exit {done.returncode}); see {log}")
    outcomes = Search.open(read_record(run_dir)).outcomes()
    events = sorted(
        (stamp / 1000 - start, metrics[METRIC])
        for o in outcomes
        for stamp, metrics in o.history
        if METRIC in metrics
    )
    return {
        "seed": seed,
        "best": round(max((v for _, v in events), default=0.0), 4),
        "wall_s": round(wall, 1),
        "epochs": len(events),
        "trials": outcomes_mod.counts(outcomes),
        "curve": best_so_far(events),
    }


def best_so_far(events: list[tuple[float, float]]) -> list[list[float]]:
    """``[[seconds, best so far]]`` at each improvement of ``(seconds, accuracy)`` events."""
    curve, best = [], -1.0
    for t, v in events:
        if v > best:
            best = v
            curve.append([round(max(t, 0.0), 1), round(v, 4)])
    return curve


def time_to_reach(curve: list[list[float]], target: float) -> float:
    """Seconds until the curve first reaches ``target``; inf if it never does."""
    return next((t for t, v in curve if v >= target - 1e-9), math.inf)


def summarise(arms: dict[str, list[dict]]) -> dict[str, Any]:
    """Per arm: median and range of best, wall and epochs; then the time-to-target ratio."""
    out: dict[str, Any] = {}
    for arm, reps in arms.items():
        out[arm] = {
            key: {
                "median": statistics.median(r[key] for r in reps),
                "min": min(r[key] for r in reps),
                "max": max(r[key] for r in reps),
            }
            for key in ("best", "wall_s", "epochs")
        }
    fifo, asha = out["random+fifo"], arms["tpe+asha"]
    target = fifo["best"]["median"]
    reach = sorted(time_to_reach(r["curve"], target) for r in asha)
    median_reach = statistics.median(reach)
    out["target"] = {
        "best": target,
        "tpe+asha_time_to_reach_s": [None if math.isinf(t) else t for t in reach],
        "reached": sum(not math.isinf(t) for t in reach),
        "ratio": None
        if math.isinf(median_reach)
        else round(median_reach / fifo["wall_s"]["median"], 3),
    }
    return out


def quick_space(directory: Path) -> Path:
    """The demo space with 1 epoch per trial (``--quick``: a smoke run, no comparison)."""
    path = directory / "demo-quick.yaml"
    path.write_text(re.sub(r"(?m)^  epochs: \d+$", "  epochs: 1", SPACE.read_text()))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="prepared demo shards (data/demo)")
    parser.add_argument("--trials", type=int, default=8, help="trials per search (8)")
    parser.add_argument("--reps", type=int, default=3, help="searches per arm, seeds 0.. (3)")
    parser.add_argument("--quick", action="store_true", help="1 trial of 1 epoch per arm")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    trials, reps = (1, 1) if args.quick else (args.trials, args.reps)
    arms: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        space = quick_space(Path(tmp)) if args.quick else SPACE
        for seed in range(reps):
            for arm in ARMS:
                run_dir = Path(tmp) / f"{arm.replace('+', '-')}-{seed}"
                r = run_search(data, space, trials, arm, seed, run_dir)
                arms[arm].append(r)
                print(f"{arm} seed {seed}: best {r['best']:.3f}, {r['wall_s']:.0f} s, "
                      f"{r['epochs']} epochs, {r['trials']}", flush=True)  # fmt: skip
    summary = summarise(arms)
    results = {
        "trials": trials,
        "reps": reps,
        "space": space.name,
        "arms": arms,
        "summary": summary,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if summary:
        print("\n| search | best valid track acc, median (range) | wall s | epochs |")
        print("|---|---:|---:|---:|")
        for arm in ARMS:
            s = summary[arm]
            print(" | ".join([
                f"| {arm}",
                f"{s['best']['median']:.3f} ({s['best']['min']:.3f}-{s['best']['max']:.3f})",
                f"{s['wall_s']['median']:.0f} ({s['wall_s']['min']:.0f}-{s['wall_s']['max']:.0f})",
                f"{s['epochs']['median']:.0f} ({s['epochs']['min']}-{s['epochs']['max']}) |",
            ]))  # fmt: skip
        t = summary["target"]
        ratio = "never (median)" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        print(f"\nTPE + ASHA reached random + FIFO's median best {t['best']:.3f} in "
              f"{t['reached']}/{reps} searches; median time over random + FIFO's median wall: "
              f"{ratio} (target <= 0.5x)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
