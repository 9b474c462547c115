"""Run every benchmark, then write ``RESULTS.md`` with its plots (``make bench``).

Each benchmark runs as its own process (each starts and stops its own Ray and sets its own
torch threads) and writes its figures as JSON; ``report.py`` renders them. The trials, search,
quality and recipe benchmarks read the prepared demo corpus, which is prepared first if missing
(a no-op when ``make demo`` already did it). ``--only recipe`` runs the recipe benchmark,
which the full run leaves out for its length.

    python benchmarks/run.py            # all figures -> benchmarks/RESULTS.md (about 30 min)
    python benchmarks/run.py --quick    # smaller runs -> benchmarks/quick/RESULTS.md (< 9 min)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from report import write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BENCHES = ("model", "prepare", "train", "trials", "search", "quality", "serve", "bulk")
EXTRA = ("recipe",)
"""Run only when named in ``--only``: the recipe benchmark trains 33 models per corpus (about
40 minutes on 2 cores) and needs the corpus prepared twice (see ``bench_recipe.py``)."""
DATA_BENCHES = ("trials", "search", "quality", "recipe")
PACKAGES = ("torch", "torchaudio", "ray", "optuna", "mlflow", "pyarrow", "numpy")


def machine() -> str:
    """CPU model, cores, memory and accelerator, in words."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {memory:.0f} GiB memory, {gpu}; "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def commit() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def ensure_demo(data: Path) -> None:
    """Prepare the demo corpus into ``data`` unless it is there (prepare skips done work)."""
    if (data / "manifest.json").is_file():
        return
    root = Path(os.environ.get("DEMO_CORPUS", "~/.cache/mrnet_ray/demo-small")).expanduser()
    cmd = [sys.executable, "-m", "mrnet_ray.prepare", "--dataset", "demo", "--root", str(root)]
    subprocess.run([*cmd, "--out", str(data)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, under 9 minutes")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo",
                        help="prepared demo corpus (data/demo)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=BENCHES + EXTRA,
                        help="run only these benchmarks")  # fmt: skip
    parser.add_argument("--out", type=Path, help="RESULTS.md path (default by mode)")
    args = parser.parse_args()
    out = args.out or (HERE / "quick" / "RESULTS.md" if args.quick else HERE / "RESULTS.md")
    results = out.parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    load_before, start = round(os.getloadavg()[0], 1), time.perf_counter()
    if set(DATA_BENCHES) & set(args.only or BENCHES):
        ensure_demo(args.data)
    timings, dates = {}, {}
    for bench in args.only or BENCHES:
        cmd = [sys.executable, str(HERE / f"bench_{bench}.py"), "--json",
               str(results / f"{bench}.json")]  # fmt: skip
        if bench in DATA_BENCHES:
            cmd += ["--data", str(args.data)]
        if args.quick:
            cmd.append("--quick")
        print(f"\n===== {bench} =====", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
        timings[bench] = round(time.perf_counter() - t0, 1)
        dates[bench] = now()
        print(f"({bench}: {timings[bench]:.0f} s)", flush=True)
    meta = {
        "date": now(),
        "command": "make bench-quick" if args.quick else "make bench",
        "commit": commit(),
        "machine": machine(),
        "versions": {p: importlib.metadata.version(p) for p in PACKAGES},
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 1),
        "seconds": timings,
        "measured": dates,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    old = results / "meta.json"
    if args.only and old.is_file():  # a partial re-run keeps the other benchmarks' figures
        before = json.loads(old.read_text())
        meta["seconds"] = {**before["seconds"], **timings}
        earlier = dict.fromkeys(before["seconds"], before["date"]) | before.get("measured", {})
        meta["measured"] = {**earlier, **dates}
    old.write_text(json.dumps(meta, indent=1))
    write_report(results, out)
    print(f"\nwrote {out} in {meta['wall_s'] / 60:.1f} min: " + ", ".join(
        f"{b} {s:.0f} s" for b, s in meta["seconds"].items()))  # fmt: skip


if __name__ == "__main__":
    main()
