"""The benchmark report renders the committed figures: every section, its targets and plots."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(BENCHMARKS))  # report.py imports its sections and plots beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_report", BENCHMARKS / "report.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_committed_results_render_every_section(report, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results)
    out = tmp_path / "RESULTS.md"
    report.write_report(results, out)
    text = out.read_text()
    titles = re.findall(r"^## (\d+)\. (.+?)(?: \(|$)", text, flags=re.MULTILINE)
    assert [int(n) for n, _ in titles] == list(range(1, len(titles) + 1))  # numbered in order
    names = [name for _, name in titles]
    for name in ("Prepare", "Training", "Trial start-up", "Search efficiency", "Model quality",
                 "Training recipe", "Memory", "GPU"):  # fmt: skip
        assert name in names
    assert "## Reading the figures" in text
    quality = json.loads((results / "quality.json").read_text())
    mean = quality["models"]["mrnet"]["test_track_acc_mean"]
    assert f"| mrnet | {mean:.3f} ±" in text
    train = json.loads((results / "train.json").read_text())
    ok = train["ratio_ray_over_bare"] >= report.sections.TRAIN_RATIO_TARGET
    verdict = "met" if ok else "**missed**"
    assert f"| {train['ratio_ray_over_bare']:.2f} | >= 0.9: {verdict} |" in text
    for png in ("search_efficiency.png", "quality.png"):
        assert (tmp_path / "img" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missed_target_is_flagged(report, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results)
    prepare = json.loads((results / "prepare.json").read_text())
    sizes = sorted(prepare["sizes"], key=int)
    prepare["sizes"][sizes[0]]["peak_rss_mb"] = 1000  # memory that grows with the data
    prepare["sizes"][sizes[-1]]["peak_rss_mb"] = 2000
    (results / "prepare.json").write_text(json.dumps(prepare))
    report.write_report(results, tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "(flat: **missed**)" in text
    assert f"| {int(sizes[-1]):,} " in text  # a row per size


def test_serve_and_bulk_figures_render(report, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results)
    level = {"requests": 8, "failures": 0, "requests_per_s": 12.5, "p50_ms": 70.0, "p99_ms": 90.0}
    serve = {
        "cpus": 2, "clip_seconds": 10.0, "channels": 64, "quick": True, "cli_s_per_call": 3.1,
        "in_process_ms_per_file": 25.0,
        "serve": {
            name: {"1": level, "8": level, "32": level, "batch_sizes": {"1": 3, "4": 2}}
            for name in ("batching", "no batching")
        },
    }  # fmt: skip
    bulk = {
        "cpus": 2, "files": 96, "clip_seconds": 10.0, "channels": 64, "quick": True,
        "loop_files_per_s": 21.5, "loop_files_per_s_by_threads": {"1": 21.5, "2": 9.0},
        "bulk_files_per_s": 30.0, "bulk_with_ray_start_files_per_s": 20.0, "ray_start_s": 6.5,
        "speedup": 1.4,
    }  # fmt: skip
    (results / "serve.json").write_text(json.dumps(serve))
    (results / "bulk.json").write_text(json.dumps(bulk))
    report.write_report(results, tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert re.search(r"^## \d+\. Serving", text, re.M) and re.search(r"^## \d+\. Bulk", text, re.M)
    assert "| batching | 8 | 12.5 | 70 | 90 | 0 |" in text
    assert "| per-file `predict` CLI (a process per file) | 1 | 0.32 | 3100 | | |" in text
    assert "batching: 1: 3, 4: 2" in text
    assert "| bulk over the loop | 1.40x |" in text
