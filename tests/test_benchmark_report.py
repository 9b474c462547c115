"""The benchmark report renders the committed figures: every section, its targets and plots."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", BENCHMARKS / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_results_render_every_section(report, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results)
    out = tmp_path / "RESULTS.md"
    report.write_report(results, out)
    text = out.read_text()
    for heading in ("## 1. Prepare", "## 2. Training", "## 3. Search efficiency",
                    "## 4. Model quality", "## 5. Memory", "## Reading the figures"):  # fmt: skip
        assert heading in text
    quality = json.loads((results / "quality.json").read_text())
    mean = quality["models"]["mrnet"]["test_track_acc_mean"]
    assert f"| mrnet | {mean:.3f} ±" in text
    train = json.loads((results / "train.json").read_text())
    ok = train["ratio_ray_over_bare"] >= report.TRAIN_RATIO_TARGET
    verdict = "met" if ok else "**missed**"
    assert f"| {train['ratio_ray_over_bare']:.2f} | >= 0.9: {verdict} |" in text
    for png in ("search_efficiency.png", "quality.png"):
        assert (tmp_path / "img" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missed_target_is_flagged(report, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(BENCHMARKS / "results", results)
    prepare = json.loads((results / "prepare.json").read_text())
    prepare["peak_rss_mb"] = {"160": 1000, "960": 2000}  # memory that grows with the data
    (results / "prepare.json").write_text(json.dumps(prepare))
    report.write_report(results, tmp_path / "RESULTS.md")
    line = next(
        row
        for row in (tmp_path / "RESULTS.md").read_text().splitlines()
        if row.startswith("| peak RSS of prepare")
    )
    assert line.endswith("flat: **missed** |")
