"""Render the benchmarks' JSON figures as ``RESULTS.md`` plus plots (no measuring here).

``run.py`` measures and calls :func:`write_report`; this module can also re-render a results
directory on its own::

    python benchmarks/report.py benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

PREPARE_RT_TARGET, PREPARE_SPEEDUP_TARGET = 200, 1.6
TRAIN_RATIO_TARGET, DATA_RATE_TARGET = 0.9, 5


def check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def search_plot(search: dict, path: Path) -> None:
    """Best validation accuracy so far against epochs spent, one line per search."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for arm, r in search["arms"].items():
        epochs, best = zip(*r["curve"], strict=True)
        ax.step([0, *epochs], [0, *best], where="post", marker="o", label=arm)
    ax.set_xlabel("epochs spent (all trials so far)")
    ax.set_ylabel("best validation track accuracy")
    ax.set_title(f"Search efficiency, demo corpus, {search['trials']} trials each")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def quality_plot(quality: dict, path: Path) -> None:
    """Left: test accuracy (mean, seeds as dots) per model and the anchor; right: mean
    validation learning curves."""
    fig = Figure(figsize=(10, 4.0), layout="constrained")
    bars, curves = fig.subplots(1, 2)
    names = list(quality["models"])
    means = [quality["models"][n]["test_track_acc_mean"] for n in names]
    bars.bar(names, means, color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
    for i, name in enumerate(names):
        accs = [r["test_track_acc"] for r in quality["runs"] if r["arch"] == name]
        bars.scatter([i] * len(accs), accs, color="black", zorder=3, s=14)
    anchor = quality["anchor"]["test_track_acc"]
    bars.axhline(anchor, color="gray", linestyle="--", label="log-mel stats + logistic regression")
    bars.axhline(1 / quality["classes"], color="red", linestyle=":", label="chance")
    bars.set_ylim(0, 1)
    bars.set_ylabel("test track accuracy")
    bars.set_title(f"{quality['epochs']} epochs, {quality['seeds']} seeds (dots)")
    bars.legend(loc="lower right", fontsize=8)
    for name in names:
        curve = quality["models"][name]["valid_curve_mean"]
        curves.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation track accuracy (mean over seeds)")
    curves.set_ylim(0, 1)
    curves.grid(alpha=0.3)
    curves.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def header(meta: dict) -> list[str]:
    v = meta["versions"]
    return [
        "# Benchmark results",
        "",
        f"Measured {meta['date']} by `{meta['command']}` at commit `{meta['commit']}` "
        f"({sum(meta['seconds'].values()) / 60:.1f} min in all: "
        + ", ".join(f"{b} {t:.0f} s" for b, t in meta["seconds"].items())
        + ").",
        "",
        f"- Machine: {meta['machine']}",
        f"- Load average (1 min) before / after: {meta['load_before']} / {meta['load_after']}",
        "- Versions: " + ", ".join(f"{k} {v[k]}" for k in v),
        "",
        "All figures come from one run of `make bench` (`benchmarks/run.py`); ratios compare "
        "figures measured side by side in that run. The raw figures are in "
        "[`results/`](results/).",
        "",
    ]


def prepare_section(p: dict) -> list[str]:
    sizes = sorted(p["peak_rss_mb"], key=int)
    rss = " vs ".join(f"{p['peak_rss_mb'][n]:,} MB at {n} files" for n in sizes)
    return [
        "## 1. Prepare (`bench_prepare.py`)",
        "",
        f"{p['files']} WAV files of {p['clip_seconds']:g} s, default features, Ray Data on "
        f"{p['cpus']} CPUs.",
        "",
        "| measurement | value | target |",
        "|---|---:|---|",
        f"| audio seconds per second, one core (loop) | {p['realtime_per_core']:,.0f}x "
        f"| >= {PREPARE_RT_TARGET}x: {check(p['realtime_per_core'] >= PREPARE_RT_TARGET)} |",
        f"| audio seconds per CPU-second (loop) | {p['realtime_per_cpu_second']:,.0f}x | |",
        f"| Ray Data over the loop, decode + features only | {p['ray_speedup_features']:.2f}x "
        f"| >= {PREPARE_SPEEDUP_TARGET}: "
        f"{check(p['ray_speedup_features'] >= PREPARE_SPEEDUP_TARGET)} |",
        f"| Ray Data over the loop, whole prepare (warm / cold) | "
        f"{p['ray_speedup_prepare']:.2f}x / {p['ray_speedup_prepare_cold']:.2f}x | |",
        f"| speed-up bound on idle cores (CPU efficiency x CPUs) | "
        f"{p['speedup_bound_idle_cores']:.2f}x | |",
        f"| peak RSS of prepare, all processes | {rss} | flat: "
        f"{check(p['peak_rss_mb'][sizes[-1]] <= 1.1 * p['peak_rss_mb'][sizes[0]])} |",
        "",
    ]


def train_section(t: dict) -> list[str]:
    data = t["data_over_step_rate"]
    return [
        "## 2. Training (`bench_train.py`)",
        "",
        f"{t['segments']} segments, batch {t['batch']}, MRNet C=64, {t['epochs']} epochs, "
        f"{t['threads_per_worker']} torch thread(s) per worker.",
        "",
        "| measurement | value | target |",
        "|---|---:|---|",
        f"| bare PyTorch loop, samples/s | {t['bare_samples_per_s']:.1f} | |",
        f"| Ray Train, 1 worker, samples/s | {t['ray_1_worker_samples_per_s']:.1f} | |",
        f"| ratio Ray Train / bare | {t['ratio_ray_over_bare']:.2f} | >= {TRAIN_RATIO_TARGET}: "
        f"{check(t['ratio_ray_over_bare'] >= TRAIN_RATIO_TARGET)} |",
        f"| Ray Train, 2 workers (0.4 CPU each), samples/s | "
        f"{t['ray_2_workers_samples_per_s']:.1f} | |",
        f"| data-only iteration over the training step rate (shuffled / plain) | "
        f"{data['shuffled']:.0f}x / {data['plain']:.0f}x | >= {DATA_RATE_TARGET}x: "
        f"{check(min(data.values()) >= DATA_RATE_TARGET)} |",
        f"| launch to first optimizer step, s | {t['launch_to_first_step_s']:.1f} | |",
        f"| per-trial overhead, share of a trial's wall time | {t['trial_overhead_share']:.0%} | |",
        "",
    ]


def search_section(s: dict) -> list[str]:
    lines = [
        "## 3. Search efficiency (`bench_search.py`)",
        "",
        f"`search_spaces/demo.yaml` on the demo corpus, {s['trials']} trials per search, seed 0, "
        "one trial at a time (2 workers x 0.4 CPU). Both searches start from the space's "
        "paper-like default point; Optuna's TPE draws at random until it has 10 results, so "
        "at this trial count the difference is ASHA's.",
        "",
        "| search | epochs spent | wall s | best valid track acc | trials (completed / "
        "early-stopped / failed) |",
        "|---|---:|---:|---:|---|",
    ]
    for arm, r in s["arms"].items():
        o = r["outcomes"]
        lines.append(
            f"| {arm} | {r['epochs']} | {r['wall_s']:.0f} | {r['best_valid_track_acc']:.3f} "
            f"| {o['completed']} / {o['early-stopped']} / {o['failed']} |"
        )
    lines += [
        "",
        f"ASHA saved **{s['epochs_saved']:.0%} of the epochs** and {s['wall_saved']:.0%} of the "
        "wall time.",
        "",
        "![best validation accuracy against epochs spent](img/search_efficiency.png)",
        "",
    ]
    return lines


def quality_section(q: dict) -> list[str]:
    c = q["counts"]
    lines = [
        "## 4. Model quality (`bench_quality.py`)",
        "",
        f"Demo corpus ({q['classes']} classes; {c['train']} / {c['valid']} / {c['test']} "
        f"train / valid / test tracks), the demo space's default recipe for every network, "
        f"{q['epochs']} epochs, seeds 0..{q['seeds'] - 1}; test accuracy per track after the "
        "last epoch. Inference: the segments of one 30 s track in one batch, one CPU thread.",
        "",
        "| model | test track acc, mean ± sd | min / max | params | MFLOPs / segment "
        "| CPU ms / 30 s track | train s / epoch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, m in q["models"].items():
        lines.append(
            f"| {arch} | {m['test_track_acc_mean']:.3f} ± {m['test_track_acc_std']:.3f} "
            f"| {m['test_track_acc_min']:.3f} / {m['test_track_acc_max']:.3f} "
            f"| {m['params'] / 1e3:,.0f} k | {m['mflops_per_segment']:,.0f} "
            f"| {m['inference_ms_per_30s_track']:.0f} | {m['train_s_per_epoch']:.1f} |"
        )
    a = q["anchor"]
    lines += [
        f"| log-mel mean/std ({a['features']} features) + logistic regression "
        f"| {a['test_track_acc']:.3f} | | | | | |",
        "",
        "![test accuracy per model and learning curves](img/quality.png)",
        "",
    ]
    return lines


def model_section(m: dict) -> list[str]:
    lines = [
        "## Model cost (`bench_model.py`)",
        "",
        f"Forward + backward of a batch of {m['batch']} segments (128 x {m['frames']}), "
        f"{m['threads']} threads.",
        "",
        "| model | size | C | params | GFLOPs / segment | ms / batch | samples / s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in m["rows"]:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['channels']} | {r['params'] / 1e6:.2f} M "
            f"| {r['gflops_per_segment']:.2f} | {r['step_ms']:.0f} | {r['samples_per_s']:.1f} |"
        )
    return [*lines, ""]


def memory_section(p: dict, t: dict) -> list[str]:
    sizes = sorted(p["peak_rss_mb"], key=int)
    return [
        "## 5. Memory",
        "",
        "| process | peak RSS |",
        "|---|---:|",
        *(
            f"| prepare, driver + Ray processes, {n} files | {p['peak_rss_mb'][n]:,} MB |"
            for n in sizes
        ),
        f"| one training worker, default config (MRNet C=512, batch 32), after set-up | "
        f"{t['worker_rss_mb']['after_setup']:,} MB |",
        f"| one training worker, default config, peak over training steps and evaluation | "
        f"{t['worker_rss_mb']['peak']:,} MB |",
        "",
        "RSS counts shared pages (torch's libraries) in every process, so the prepare figure "
        "over-counts; its growth with the dataset is what matters.",
        "",
    ]


def serve_section(s: dict) -> list[str]:
    lines = [
        "## 6. Serving (`bench_serve.py`)",
        "",
        f"`python -m mrnet_ray.serve` with one replica on {s['cpus']} CPUs, an MRNet of "
        f"C={s['channels']} and default features; each request posts one "
        f"{s['clip_seconds']:g} s WAV. The clients are threads on the same machine, each "
        "with a keep-alive connection. Batching: up to 8 requests per forward pass, "
        "10 ms wait; no batching: 1.",
        "",
        "| setting | concurrency | requests / s | p50 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, levels in s["serve"].items():
        for c, r in levels.items():
            if c.isdigit():
                lines.append(
                    f"| {name} | {c} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} "
                    f"| {r['p99_ms']:.0f} | {r['failures']} |"
                )
    cli = s["cli_s_per_call"]
    lines += [
        f"| per-file `predict` CLI (a process per file) | 1 | {1 / cli:.2f} | {1e3 * cli:.0f} "
        "| | |",
        f"| `predict_file` in one warm process (no HTTP) | 1 | "
        f"{1e3 / s['in_process_ms_per_file']:.1f} | {s['in_process_ms_per_file']:.0f} | | |",
        "",
        "Requests per forward pass, as the replica counted them (size: passes): "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k}: {v}" for k, v in levels["batch_sizes"].items())
            for name, levels in s["serve"].items()
        )
        + ".",
        "",
    ]
    return lines


def bulk_section(b: dict) -> list[str]:
    threads = ", ".join(
        f"{t} thread(s) {v:.1f}" for t, v in b["loop_files_per_s_by_threads"].items()
    )
    return [
        "## 7. Bulk inference (`bench_bulk.py`)",
        "",
        f"`predict --input` over {b['files']} WAV files of {b['clip_seconds']:g} s (MRNet "
        f"C={b['channels']}, default features) on {b['cpus']} CPUs, against a loop of "
        f"`predict_file` over the same files in one process ({threads} files/s; the faster is "
        "the baseline).",
        "",
        "| measurement | files / s |",
        "|---|---:|",
        f"| loop, one process | {b['loop_files_per_s']:.1f} |",
        f"| bulk (Ray Data: decode tasks, model actors) | {b['bulk_files_per_s']:.1f} |",
        f"| bulk, Ray's start ({b['ray_start_s']:.0f} s) included | "
        f"{b['bulk_with_ray_start_files_per_s']:.1f} |",
        f"| bulk over the loop | {b['speedup']:.2f}x |",
        "",
    ]


def write_report(results_dir: Path, out: Path) -> None:
    """``out`` (markdown) and its plots under ``out.parent/img`` from ``results_dir/*.json``."""

    def load(name: str) -> dict | None:
        path = results_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    meta, prepare, train = load("meta"), load("prepare"), load("train")
    search, quality, model = load("search"), load("quality"), load("model")
    serving, bulk = load("serve"), load("bulk")
    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines = header(meta)
    if prepare:
        lines += prepare_section(prepare)
    if train:
        lines += train_section(train)
    if search:
        search_plot(search, img / "search_efficiency.png")
        lines += search_section(search)
    if quality:
        quality_plot(quality, img / "quality.png")
        lines += quality_section(quality)
    if prepare and train:
        lines += memory_section(prepare, train)
    if serving:
        lines += serve_section(serving)
    if bulk:
        lines += bulk_section(bulk)
    if model:
        lines += model_section(model)
    notes = results_dir / "NOTES.md"
    if notes.is_file():
        lines += ["## Reading the figures", "", notes.read_text().strip(), ""]
    out.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="directory of the benchmarks' JSON files")
    parser.add_argument("--out", type=Path, help="markdown file (default: RESULTS.md beside it)")
    args = parser.parse_args()
    write_report(args.results, args.out or args.results.parent / "RESULTS.md")


if __name__ == "__main__":
    main()
