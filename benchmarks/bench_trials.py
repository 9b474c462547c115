"""Trial start-up and search wall time: trials that train themselves against Ray Train trials.

Runs the 4-trial demo search (``search_spaces/demo.yaml`` on the prepared demo shards, seed
0, TPE) once per arm, in this process through :func:`mrnet_ray.search.driver.run`, with a
Tune callback that clocks every trial on the driver:

- ``tune``: one worker, trained in the Tune trial's own process (the default);
- ``train-1``: one worker through Ray Train (``--trial-executor train``);
- ``train-ddp``: two 0.4-CPU DDP workers through Ray Train (``--workers 2``);
- ``tune-fifo``: as ``tune``, without ASHA, to see what ASHA's saved epochs save in time.

Per trial, start-up is the time from Tune launching it to its first epoch report, minus that
epoch's own training and evaluation time (``epoch_time_s``); its share is start-up over the
trial's wall time. Targets (issue "Trials that start in a second"): median start-up <= 3 s,
<= 10 % of a 4-epoch demo trial, the search >= 1.5x faster than the Ray Train trials of
before (2.6-2.8 min), ASHA's wall time saved in proportion to its epochs saved.

    python benchmarks/bench_trials.py --data data/demo [--json OUT]
    python benchmarks/bench_trials.py --data data/demo --quick   # 2 trials of 1 epoch per arm
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from ray import tune

from mrnet_ray.config import ResourcesConfig
from mrnet_ray.search import driver
from mrnet_ray.search.resources import init_ray

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "demo.yaml"
ARMS = {
    "tune": {"resources": ResourcesConfig(), "trial_executor": "tune"},
    "train-1": {"resources": ResourcesConfig(), "trial_executor": "train"},
    "train-ddp": {"resources": ResourcesConfig(num_workers=2, cpus_per_worker=0.4)},
    "tune-fifo": {"resources": ResourcesConfig(), "scheduler": "fifo"},
}


class TrialClock(tune.Callback):
    """When each trial was launched, reported its first epoch, and ended (driver clock)."""

    def __init__(self) -> None:
        self.trials: dict[str, dict] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trials[trial.trial_id] = {"start": time.time(), "epochs": 0}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        t = self.trials[trial.trial_id]
        t["epochs"] = max(t["epochs"], int(result.get("epoch", 0)))
        t.setdefault("first", time.time())
        t.setdefault("first_epoch_s", float(result["epoch_time_s"]))
        t["end"] = time.time()

    def figures(self) -> dict:
        rows = [t for t in self.trials.values() if "first" in t]
        startup = [t["first"] - t["start"] - t["first_epoch_s"] for t in rows]
        share = [
            (t["first"] - t["start"] - t["first_epoch_s"]) / max(t["end"] - t["start"], 1e-9)
            for t in rows
        ]
        full = [s for s, t in zip(share, rows, strict=True) if t["epochs"] == max_epochs(rows)]
        return {
            "startup_s": [round(s, 2) for s in startup],
            "median_startup_s": round(statistics.median(startup), 2),
            "median_startup_share_full_trials": round(statistics.median(full), 3) if full else None,
            "epochs": sum(t["epochs"] for t in rows),
        }


def max_epochs(rows: list[dict]) -> int:
    return max(t["epochs"] for t in rows)


def quick_space(directory: Path) -> Path:
    path = directory / "demo-quick.yaml"
    path.write_text(re.sub(r"(?m)^  epochs: \d+$", "  epochs: 1", SPACE.read_text()))
    return path


def run_arm(name: str, data: str, space: Path, trials: int, tmp: Path) -> dict:
    clock = TrialClock()
    settings, prepared = driver.plan_search(
        data, str(space), name=f"bench-{name}", run_dir=str(tmp / name), num_samples=trials,
        **ARMS[name],
    )  # fmt: skip
    start = time.perf_counter()
    code = driver.run(settings, prepared, resume=False, callbacks=[clock])
    wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"{name}: the search exited {code}")
    record = json.loads((tmp / name / "search.json").read_text())
    return {
        "executor": record["executor"],
        "workers": settings.resources.num_workers,
        "scheduler": settings.scheduler,
        "wall_s": round(wall, 1),
        "trials": record["trials"],
        "best_valid_track_acc": (record.get("best") or {}).get("valid_track_acc"),
        **clock.figures(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="prepared demo shards")
    parser.add_argument("--trials", type=int, default=4, help="trials per search (4)")
    parser.add_argument("--quick", action="store_true", help="2 trials of 1 epoch per arm")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    init_ray()  # one warm cluster for every arm, as on a cluster that runs searches
    results: dict = {"trials": 2 if args.quick else args.trials, "arms": {}}
    with tempfile.TemporaryDirectory(prefix="bench_trials_") as tmp:
        space = quick_space(Path(tmp)) if args.quick else SPACE
        for name in ARMS:
            print(f"{name}: {results['trials']} trials of {space.name} ...", flush=True)
            results["arms"][name] = run_arm(name, data, space, results["trials"], Path(tmp))
    arms = results["arms"]
    results["speedup_vs_train_ddp"] = round(arms["train-ddp"]["wall_s"] / arms["tune"]["wall_s"], 2)
    results["asha_epochs_saved"] = round(
        1 - arms["tune"]["epochs"] / arms["tune-fifo"]["epochs"], 3
    )
    results["asha_wall_saved"] = round(1 - arms["tune"]["wall_s"] / arms["tune-fifo"]["wall_s"], 3)
    print("\n| arm | executor | workers | scheduler | median start-up s | start-up share | "
          "epochs | wall s |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for name, r in arms.items():
        share = r["median_startup_share_full_trials"]
        print(
            f"| {name} | {r['executor']} | {r['workers']} | {r['scheduler']} | "
            f"{r['median_startup_s']:.2f} | {'-' if share is None else f'{share:.0%}'} | "
            f"{r['epochs']} | {r['wall_s']:.0f} |"
        )
    print(
        f"\nsearch {results['speedup_vs_train_ddp']:.2f}x faster than with DDP Ray Train "
        f"trials; ASHA saved {results['asha_epochs_saved']:.0%} of the epochs and "
        f"{results['asha_wall_saved']:.0%} of the wall time"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
