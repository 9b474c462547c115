"""The benchmark report's sections: one function per benchmark, its JSON figures in, markdown
lines out (``report.py`` puts them together)."""

from __future__ import annotations

PREPARE_RT_TARGET, PREPARE_SPEEDUP_TARGET, PREPARE_EFFICIENCY_TARGET = 200, 1.6, 0.85
TRAIN_RATIO_TARGET, DATA_RATE_TARGET = 0.9, 5
SEARCH_BEFORE_S = (157, 167)
"""The 4-trial demo search's wall time before trials trained in the Tune trial (`make demo`,
fresh clones, 2 cores)."""


def check(ok: bool) -> str:
    return "met" if ok else "**missed**"


def prepare_section(p: dict) -> list[str]:
    sizes = sorted(p["sizes"], key=int)
    first, last = p["sizes"][sizes[0]], p["sizes"][sizes[-1]]
    lines = [
        "## Prepare (`bench_prepare.py`)",
        "",
        f"WAV files of {p['clip_seconds']:g} s ({p['distinct_clips']} distinct clips repeated), "
        f"default features, Ray Data on {p['cpus']} CPUs against a serial soundfile + torchaudio "
        "loop on one thread that cuts every split as prepare does; Ray's start and the Parquet "
        "writes are included. CPU efficiency: the loop's CPU seconds over those of every "
        "process of the prepare.",
        "",
        "| files | loop s | loop, audio s per s | Ray start + prepare s | ratio (Ray running) "
        "| CPU efficiency | CPU s: actors / Ray Data helpers / driver / daemons | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for n in sizes:
        r, cpu = p["sizes"][n], p["sizes"][n]["cpu_by_kind"]
        lines.append(
            f"| {int(n):,} | {r['loop_wall_s']:.1f} | {r['loop_realtime']:,}x "
            f"| {r['ray_start_s']:.1f} + {r['prepare_s']:.1f} "
            f"| {r['ratio']:.2f}x ({r['ratio_running_ray']:.2f}x) | {r['cpu_efficiency']:.2f} "
            f"| {cpu['actors']:.0f} / {cpu['other workers']:.0f} / {cpu['driver']:.0f} / "
            f"{cpu['ray daemons']:.0f} | {r['peak_rss_mb']:,} MB |"
        )
    flat = last["peak_rss_mb"] <= 1.1 * first["peak_rss_mb"]
    lines += [
        "",
        f"At {int(sizes[-1]):,} files: {last['ratio']:.2f}x the loop (target >= "
        f"{PREPARE_SPEEDUP_TARGET}x: {check(last['ratio'] >= PREPARE_SPEEDUP_TARGET)}), CPU "
        f"efficiency {last['cpu_efficiency']:.2f} (target >= {PREPARE_EFFICIENCY_TARGET}: "
        f"{check(last['cpu_efficiency'] >= PREPARE_EFFICIENCY_TARGET)}), one core "
        f"{last['loop_realtime']:,}x real time (target >= {PREPARE_RT_TARGET}x: "
        f"{check(last['loop_realtime'] >= PREPARE_RT_TARGET)}), peak RSS "
        f"{first['peak_rss_mb']:,} MB at {int(sizes[0]):,} files and {last['peak_rss_mb']:,} MB "
        f"at {int(sizes[-1]):,} (flat: {check(flat)}).",
        "",
    ]
    return lines


def train_section(t: dict) -> list[str]:
    data = t["data_over_step_rate"]
    return [
        "## Training (`bench_train.py`)",
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
    arms, summary = s["arms"], s["summary"]
    lines = [
        "## Search efficiency (`bench_search.py`)",
        "",
        f"`search_spaces/{s['space']}` on the demo corpus, {s['trials']} trials per search, "
        f"{s['reps']} searches per arm (seeds 0..{s['reps'] - 1}), the arms interleaved; trials "
        "side by side as `make demo` runs them (one CPU each). TPE draws a quarter of the "
        "budget at random first.",
        "",
        "| search | best valid track acc, median (range) | wall s, median (range) | epochs, "
        "median (range) | trials completed / early-stopped / failed |",
        "|---|---:|---:|---:|---|",
    ]
    for arm, reps in arms.items():
        m = summary[arm]
        done = [sum(r["trials"][k] for r in reps) for k in ("completed", "early-stopped", "failed")]
        lines.append(
            f"| {arm} | {m['best']['median']:.3f} ({m['best']['min']:.3f}-{m['best']['max']:.3f}) "
            f"| {m['wall_s']['median']:.0f} ({m['wall_s']['min']:.0f}-{m['wall_s']['max']:.0f}) "
            f"| {m['epochs']['median']:.0f} ({m['epochs']['min']}-{m['epochs']['max']}) "
            f"| {' / '.join(map(str, done))} |"
        )
    t = summary["target"]
    reach = ", ".join("never" if x is None else f"{x:.0f} s" for x in t["tpe+asha_time_to_reach_s"])
    verdict = (
        "never, in the median search (target <= 0.5x: **missed**)"
        if t["ratio"] is None
        else f"{t['ratio']:.2f}x its median wall time (target <= 0.5x: {check(t['ratio'] <= 0.5)})"
    )
    lines += [
        "",
        f"TPE + ASHA reached random + FIFO's median best ({t['best']:.3f}) in {t['reached']} of "
        f"{s['reps']} searches ({reach}): {verdict}.",
        "",
        "![best validation accuracy so far against wall time](img/search_efficiency.png)",
        "",
    ]
    return lines


def quality_section(q: dict) -> list[str]:
    c = q["counts"]
    lines = [
        "## Model quality (`bench_quality.py`)",
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
    sizes = sorted(p["sizes"], key=int)
    return [
        "## Memory",
        "",
        "| process | peak RSS |",
        "|---|---:|",
        *(
            f"| prepare, driver + Ray processes, {int(n):,} files "
            f"| {p['sizes'][n]['peak_rss_mb']:,} MB |"
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
        "## Serving (`bench_serve.py`)",
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
        "## Bulk inference (`bench_bulk.py`)",
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


def trials_section(t: dict) -> list[str]:
    arms = t["arms"]
    lines = [
        "## Trial start-up (`bench_trials.py`)",
        "",
        f"The {t['trials']}-trial demo search (seed 0, TPE) once per way of running a trial, "
        "in one warm Ray; start-up is launch to first epoch report minus that epoch's own time.",
        "",
        "| arm | executor | workers | scheduler | median start-up s | start-up share of a full "
        "trial | epochs | wall s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in arms.items():
        share = r["median_startup_share_full_trials"]
        lines.append(
            f"| {name} | {r['executor']} | {r['workers']} | {r['scheduler']} "
            f"| {r['median_startup_s']:.2f} | {'-' if share is None else f'{share:.0%}'} "
            f"| {r['epochs']} | {r['wall_s']:.0f} |"
        )
    tune = arms["tune"]
    share = tune["median_startup_share_full_trials"] or 0.0
    lines += [
        "",
        f"Median start-up {tune['median_startup_s']:.2f} s (target <= 3 s: "
        f"{check(tune['median_startup_s'] <= 3)}), {share:.0%} of a full trial (target <= 10 %: "
        f"{check(share <= 0.10)}). The search took {tune['wall_s']:.0f} s against the "
        f"{SEARCH_BEFORE_S[0]}-{SEARCH_BEFORE_S[1]} s of the 4-trial demo search when every "
        f"trial went through Ray Train (4 epochs per trial then, 8 now): "
        f"{SEARCH_BEFORE_S[0] / tune['wall_s']:.1f}-{SEARCH_BEFORE_S[1] / tune['wall_s']:.1f}x "
        f"faster (target >= 1.5x: {check(SEARCH_BEFORE_S[0] / tune['wall_s'] >= 1.5)}); "
        f"{t['speedup_vs_train_ddp']:.2f}x the wall time of two-worker Ray Train trials in this "
        f"run. ASHA saved {t['asha_epochs_saved']:.0%} of the epochs and "
        f"{t['asha_wall_saved']:.0%} of the wall time.",
        "",
    ]
    return lines


def recipe_section(corpora: dict[str, dict]) -> list[str]:
    lines = [
        "## Training recipe (`bench_recipe.py`)",
        "",
        "The demo space's default point trained through the trials' epoch body, one change of "
        "the recipe at a time, the same seeds for every row; test accuracy per track of the "
        "last epoch, with the prepared 3 s segments and with segments every 1.5 s (logits "
        "averaged per track). Margin: points over the prepared directory's linear baseline.",
        "",
    ]
    for corpus, r in corpora.items():
        base = r["baseline"]["test_track_acc"]
        partial = f"; {r['partial']}" if r.get("partial") else ""
        lines += [
            f"**{corpus}** (seeds 0-{r['seeds'] - 1}; linear baseline {base:.3f}{partial})",
            "",
            "| recipe | runs | test track acc | margin | overlapping segments | margin | train s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in r["variants"].items():
            over = (
                f"{v['test_track_acc_overlap_mean']:.3f} ± {v['test_track_acc_overlap_sd']:.3f} "
                f"| {v['test_track_acc_overlap_margin_points']:+.1f}"
                if "test_track_acc_overlap_mean" in v
                else "| "
            )
            lines.append(
                f"| {name} | {v['runs']} "
                f"| {v['test_track_acc_mean']:.3f} ± {v['test_track_acc_sd']:.3f} "
                f"| {v['test_track_acc_margin_points']:+.1f} | {over} | {v['train_s_mean']:.0f} |"
            )
        lines.append("")
    return [*lines, "![test accuracy per recipe](img/recipe.png)", ""]


def gpu_section(g: dict | None) -> list[str]:
    lines = ["## GPU (`gpu_check.py`)", ""]
    if g is None or g["meta"]["device"] != "cuda":
        return [
            *lines,
            "**The GPU check has not run on a GPU yet**, so there is no GPU figure (training "
            "samples/s with and without bf16, peak GPU memory, `torch.compile` against eager, the "
            "epoch loop against a bare loop) and the CUDA path's correctness checks have not been "
            "taken on CUDA. The script is ready: `python benchmarks/gpu_check.py --json out.json` "
            "(`make gpu-check`) on a machine with one GPU, at most 5 minutes; its CPU smoke mode "
            "runs in the test suite. Put its JSON in `results/gpu.json` to render it here.",
            "",
        ]
    m, checks = g["meta"], g["checks"]
    failed = [c for c in checks if not c["ok"]]
    lines += [
        f"{m['device_name']}, torch {m['torch']}, CUDA {m['cuda']}, at commit `{m['commit']}`: "
        f"{len(checks) - len(failed)} of {len(checks)} checks passed"
        + ("." if not failed else "; failed: " + "; ".join(c["name"] for c in failed) + "."),
        "",
        "| model | batch | bf16 | samples / s | step ms | peak GPU MiB |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in g["training"]:
        if "samples_per_s" in r:
            lines.append(
                f"| {r['arch']} | {r['batch']} | {r['bf16']} | {r['samples_per_s']:,.1f} "
                f"| {r['step_ms']:.1f} | {r['peak_mem_mib']:,} |"
            )
    c = g.get("compile") or {}
    if c.get("status") == "ok":
        lines += ["", f"`torch.compile` ({c['backend']}) over eager: {c['speedup']:.2f}x "
                  f"(first step {c['first_step_s']:.0f} s)."]  # fmt: skip
    for f in g.get("feed", []):
        lines += ["", f"Epoch loop over a bare loop (batch {f['batch']}): {f['ratio']:.2f}."]
    return [*lines, ""]
