"""Render the benchmarks' JSON figures as ``RESULTS.md`` plus plots (no measuring here).

``run.py`` measures and calls :func:`write_report`; this module can also re-render a results
directory on its own::

    python benchmarks/report.py benchmarks/results

The sections are in ``sections.py``, the figures in ``plots.py``; a benchmark whose JSON is
missing leaves its section out (the GPU section then says the check has not run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import plots
import sections

RECIPE_CORPORA = {
    "recipe": "demo corpus, the score's instruments",
    "recipe-random-instruments": "demo corpus, random instruments",
}
"""``results/NAME.json`` of ``bench_recipe.py`` -> the corpus it measured."""


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
        "The figures come from `make bench` (`benchmarks/run.py`); a ratio always compares "
        "figures measured side by side in one benchmark's run. The raw figures are in "
        "[`results/`](results/).",
        "",
        *measured(meta),
    ]


def measured(meta: dict) -> list[str]:
    """When each benchmark ran, where ``run.py --only`` re-ran some of them after the rest."""
    dates = meta.get("measured", {})
    if len(set(dates.values())) <= 1:
        return []
    return [
        "Benchmarks re-run on their own (`run.py --only`) keep the others' figures; measured: "
        + ", ".join(f"{b} {d}" for b, d in dates.items())
        + ".",
        "",
    ]


def write_report(results_dir: Path, out: Path) -> None:
    """``out`` (markdown) and its plots under ``out.parent/img`` from ``results_dir/*.json``."""

    def load(name: str) -> dict | None:
        path = results_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    r = {name: load(name) for name in (
        "meta", "prepare", "train", "trials", "search", "quality", "serve", "bulk", "model", "gpu",
    )}  # fmt: skip
    recipes = {label: load(name) for name, label in RECIPE_CORPORA.items()}
    recipes = {label: v for label, v in recipes.items() if v}
    if r["search"]:
        plots.search_plot(r["search"], img / "search_efficiency.png")
    if r["quality"]:
        plots.quality_plot(r["quality"], img / "quality.png")
    if recipes:
        plots.recipe_plot(recipes, img / "recipe.png")
    parts = [
        r["prepare"] and sections.prepare_section(r["prepare"]),
        r["train"] and sections.train_section(r["train"]),
        r["trials"] and sections.trials_section(r["trials"]),
        r["search"] and sections.search_section(r["search"]),
        r["quality"] and sections.quality_section(r["quality"]),
        recipes and sections.recipe_section(recipes),
        r["prepare"] and r["train"] and sections.memory_section(r["prepare"], r["train"]),
        r["serve"] and sections.serve_section(r["serve"]),
        r["bulk"] and sections.bulk_section(r["bulk"]),
        r["model"] and sections.model_section(r["model"]),
        sections.gpu_section(r["gpu"]),
    ]
    lines = header(r["meta"])
    for number, part in enumerate((p for p in parts if p), start=1):
        title, *rest = part
        lines += [title.replace("## ", f"## {number}. ", 1), *rest]
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
