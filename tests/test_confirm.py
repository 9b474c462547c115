"""A winner you can trust: ``best --export --confirm K --seeds N`` retrains the search's top K
configurations with N new seeds, exports the best mean's best seed, resumes when interrupted,
and says all of it in metrics.json and the model card."""

from __future__ import annotations

import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.search import TUNE, driver_env
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from mrnet_ray.tracking import TAG_CONFIRMS, TAG_PARENT, TAG_ROLE

SPACE = """\
model:
  arch: mrnet
  channels: {choice: [16, 24]}
  stem_kernel: 3
  n_blocks: 2
  dilations: [1, 2]
  route_depths: [[1], [1, 2]]
  res2_scale: 2
  se_channels: 8
  attention_channels: 16
  embedding_dim: 16
train:
  epochs: 6
  batch_size: 16
  lr: {choice: [3.0e-3, 1.0e-2]}
"""
BEST = [sys.executable, "-m", "mrnet_ray.best"]


def confirmation_runs(record: dict) -> list:
    client = MlflowClient(record["tracking_uri"])
    query = (
        f"tags.`{TAG_PARENT}` = '{record['parent_run_id']}' and tags.`{TAG_ROLE}` = 'confirmation'"
    )
    return client.search_runs([record["experiment_id"]], query)


@pytest.fixture(scope="module")
def search(tiny_prepared, ray_session, tmp_path_factory) -> Path:
    """A finished 4-trial search that trained one trial at a time (so does its confirmation)."""
    tmp = tmp_path_factory.mktemp("confirm")
    (tmp / "space.yaml").write_text(SPACE)
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(tmp / "space.yaml"),
        "--num-samples", "4", "--scheduler", "fifo", "--seed", "2", "--max-concurrent", "1",
        "--workers", "1", "--cpus-per-worker", "1", "--run-dir", str(tmp / "run"),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp, env=driver_env(ray_session), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
def test_confirmation_picks_the_best_mean_and_resumes_after_an_interrupt(
    search, ray_session, tmp_path
):
    record = json.loads((search / "search.json").read_text())
    argv = [*BEST, "--run-dir", str(search), "--export", "--confirm", "2", "--seeds", "2"]
    env = driver_env(ray_session)
    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 600
            while first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.25)
                if any(r.info.status == "FINISHED" for r in confirmation_runs(record)):
                    break  # one seed done, the next one training
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=180) == 130
        finally:
            if first.poll() is None:
                first.kill()
    printed = (tmp_path / "first.log").read_text()
    assert "confirming the top 2 configuration(s) of search" in printed
    assert "4 more trials, about" in printed  # the count and the estimate, before they start
    assert "run the same command again to finish the confirmation" in printed
    assert not (search / "best").exists()
    finished_before = {
        r.data.tags["trial_id"]: r.info.run_id
        for r in confirmation_runs(record)
        if r.info.status == "FINISHED"
    }
    assert finished_before

    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the confirmation in" in second.stdout

    runs = confirmation_runs(record)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    client = MlflowClient(record["tracking_uri"])
    best_of_run = {}
    for r in runs:
        history = client.get_metric_history(r.info.run_id, "valid_track_acc")
        assert sorted(m.step for m in history) == list(range(1, 7))  # every seed, all epochs, once
        best_of_run[r.data.tags["trial_id"]] = max(m.value for m in history)
    for trial_id, run_id in finished_before.items():  # not trained again after the interrupt
        assert {r.data.tags["trial_id"]: r.info.run_id for r in runs}[trial_id] == run_id
    updated = json.loads((search / "search.json").read_text())["confirmation"]
    confirm_trials = ExperimentAnalysis(updated["experiment_path"]).trials
    assert len(confirm_trials) == 4 and {t.status for t in confirm_trials} == {"TERMINATED"}

    metrics = json.loads((search / "best" / "metrics.json").read_text())
    table = metrics["confirmation"]
    assert len(table) == 2 and all(len(row["seeds"]) == 2 for row in table)
    sources = {r.data.tags[TAG_CONFIRMS] for r in runs}
    assert {row["trial"] for row in table} == sources
    for row in table:  # the table's scores are its runs' best epochs, its mean their mean
        assert row["valid_track_acc"] == pytest.approx([best_of_run[t] for t in row["runs"]])
        assert row["mean"] == pytest.approx(statistics.fmean(row["valid_track_acc"]))
        seeds = [int(client.get_run(r.info.run_id).data.params["train.seed"]) for r in runs
                 if r.data.tags["trial_id"] in row["runs"]]  # fmt: skip
        assert sorted(seeds) == sorted(row["seeds"]) and 0 not in seeds  # new seeds only
    means = [row["mean"] for row in table]
    assert means == sorted(means, reverse=True) and metrics["chosen"] == table[0]["trial"]
    assert metrics["selection"]["score"] == pytest.approx(table[0]["mean"])
    # The export is a final fit of the chosen configuration on train + valid, for the median of
    # its seeds' best epochs, with its best seed; its last checkpoint is exported.
    final = metrics["final_fit"]
    chosen_runs = table[0]["runs"]
    best_seed_run = max(chosen_runs, key=lambda t: best_of_run[t])
    assert final["data"] == "train+valid"
    assert final["epochs"] == round(statistics.median(table[0]["best_epochs"]) + 1e-9)
    assert final["seed"] == table[0]["seeds"][chosen_runs.index(best_seed_run)]
    lineage = json.loads((search / "best" / "config.json").read_text())["lineage"]
    assert lineage["trial_id"] == final["trial"] and lineage["epoch"] == final["epochs"]
    fitted = {r.data.tags["trial_id"]: r for r in client.search_runs(
        [record["experiment_id"]], f"tags.`{TAG_ROLE}` = 'final-fit'"
    )}[final["trial"]]  # fmt: skip
    prepared = json.loads((Path(record["data"]) / "manifest.json").read_text())["counts"]
    rows = prepared["train"]["segments"] + prepared["valid"]["segments"]  # never test
    assert fitted.data.metrics["train_segments"] == rows // 16 * 16  # batch 16, last dropped
    assert (
        "trained on train + valid (a final fit)" in (search / "best" / "MODEL_CARD.md").read_text()
    )
    card = (search / "best" / "MODEL_CARD.md").read_text()
    assert "## How it was chosen" in card and "best mean validation track accuracy" in card
    assert all(row["trial"] in card for row in table)
    assert not math.isnan(table[0]["sd"])
