"""Trials that train themselves and repeat exactly: a killed trial process resumes in its own
run, ASHA's stops free the trial's resources, and the same configuration and seed give the
same curves, in one process or two, for one worker; DDP trials repeat within a tolerance."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from fixtures.search import TUNE, client_of, driver_env, trial_runs, write_space
from ray.tune import ExperimentAnalysis
from ray.util.state import list_actors

from mrnet_ray.config import ResourcesConfig, TrialConfig
from mrnet_ray.search.settings import METRIC
from mrnet_ray.shards import open_prepared
from mrnet_ray.training.checkpoint import load_checkpoint
from mrnet_ray.training.feed import MemoryFeed
from mrnet_ray.training.fit import LocalSession, fit, plan
from mrnet_ray.training.raytrain import fit_to_data, make_trainer

TIMING = ("epoch_time_s", "samples_per_s", "time_total_s")
"""Reported metrics that measure the machine, not the model."""
FIXED_SPACE = """\
model: {arch: mrnet, channels: 16, stem_kernel: 3, n_blocks: 2, dilations: [1, 2],
        route_depths: [[1], [1, 2]], res2_scale: 2, se_channels: 8, attention_channels: 16,
        embedding_dim: 16}
train: {epochs: 3, batch_size: 8, lr: 3.0e-3, mixup_alpha: 0.2, time_mask: 8, n_masks: 1}
"""
"""Nothing drawn: every trial of it is the same configuration and seed; augmentation on, so
the augmentation draws are part of what must repeat."""


def curves(history: list[dict]) -> list[dict]:
    """Per-epoch metrics without the timing ones."""
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def mlflow_curve(client, run_id: str, keys) -> list[dict]:
    """The run's per-epoch metrics, from MLflow."""
    out: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            out.setdefault(m.step, {})[key] = m.value
    return [out[step] for step in sorted(out)]


@pytest.mark.slow
def test_a_killed_trial_process_resumes_from_its_last_checkpoint_in_one_run(
    tiny_prepared, ray_session, tmp_path
):
    """SIGKILL the process of a trial that trains itself, mid-trial: Tune retries it
    (--max-failures 1), it continues from its last epoch checkpoint, and its one MLflow run
    holds every epoch once, the epochs before the kill as they were first logged."""
    epochs, run_dir = 12, tmp_path / "run"
    space = write_space(tmp_path, "3.0e-3", epochs=epochs)
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "1",
        "--workers", "1", "--cpus-per-worker", "1", "--max-failures", "1",
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    gcs = ray_session.get_runtime_context().gcs_address
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(argv, cwd=tmp_path, env=driver_env(ray_session), stdout=log,
                              stderr=log)  # fmt: skip
    try:
        deadline, pid, seen = time.monotonic() + 300, None, {}
        while pid is None:  # its process, once it has reported (and checkpointed) 2 epochs
            assert driver.poll() is None and time.monotonic() < deadline, log.name
            time.sleep(0.2)
            runs = trial_runs(run_dir) if (run_dir / "search.json").is_file() else []
            if runs and runs[0].metrics.get("epoch_time_s") is not None:
                history = client_of(run_dir).get_metric_history(runs[0].run_id, METRIC)
                if len(history) >= 2:
                    seen = {m.step: m.value for m in history}
                    alive = [("class_name", "=", "ImplicitFunc"), ("state", "=", "ALIVE")]
                    pids = [a.pid for a in list_actors(address=gcs, filters=alive) if a.pid]
                    pid = pids[0] if len(pids) == 1 else None
        os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    record = json.loads((run_dir / "search.json").read_text())
    (trial,) = ExperimentAnalysis(record["experiment_path"]).trials
    assert trial.status == "TERMINATED" and trial.num_failures == 1
    (run,) = trial_runs(run_dir)
    assert run.status == "FINISHED" and run.tags["failures"] == "1"
    history = client_of(run_dir).get_metric_history(run.run_id, METRIC)
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))  # each epoch once
    assert {m.step: m.value for m in history if m.step in seen} == seen
    last = load_checkpoint(trial.checkpoint.path)  # the trial's latest
    assert [m["epoch"] for m in last["history"]] == list(range(1, epochs + 1))
    # the epochs before the kill come from the checkpoint, their measured times included
    assert [m[METRIC] for m in last["history"][: len(seen)]] == [seen[s] for s in sorted(seen)]


@pytest.mark.slow
def test_asha_stopping_a_trial_frees_its_resources_at_once(tiny_prepared, ray_session, tmp_path):
    """One trial at a time on the whole cluster: a trial ASHA stops must hand its CPUs to the
    next trial at once (a reused process), or the search could not go on at all."""
    # The first trial is the space's default point (lr 1e-3, which learns); with seed 1 the
    # random sampler then draws lr 1e-9 three times, which learns nothing: ASHA stops those.
    space = write_space(tmp_path, "{choice: [1.0e-3, 1.0e-9]}", epochs=4)
    run_dir = tmp_path / "run"
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "4",
        "--searcher", "random", "--seed", "1", "--workers", "1", "--cpus-per-worker", "2",
        "--max-failures", "0", "--run-dir", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, env=driver_env(ray_session), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((run_dir / "search.json").read_text())
    assert record["executor"] == "tune" and record["trials"]["failed"] == 0
    assert record["trials"]["early-stopped"] >= 1, record["trials"]  # the draws make it so
    analysis = ExperimentAnalysis(record["experiment_path"])
    spans = []  # (start, end) of every trial, from its own results
    for t in analysis.trials:
        frame = analysis.trial_dataframes[t.trial_id]
        first = frame.sort_values("timestamp").iloc[0]
        spans.append((first["timestamp"] - first["time_total_s"], frame["timestamp"].max()))
    spans.sort()
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    print(f"gaps between one trial's last report and the next one's start: {gaps}")
    assert max(gaps) < 10.0  # seconds: a held process would keep the next trial waiting


@pytest.mark.slow
def test_one_worker_trials_of_one_config_and_seed_repeat_exactly(
    tiny_prepared, ray_session, tmp_path
):
    """Two trials of one configuration and seed, side by side in two processes of one search,
    and a third run of it in this process: bit-identical per-epoch metrics."""
    space = tmp_path / "fixed.yaml"
    space.write_text(FIXED_SPACE)
    run_dir = tmp_path / "run"
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "2",
        "--scheduler", "fifo", "--workers", "1", "--cpus-per-worker", "1",
        "--max-failures", "0", "--run-dir", str(run_dir),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, env=driver_env(ray_session), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "each trial trained in its own Tune trial process" in done.stdout
    runs = trial_runs(run_dir)
    assert len(runs) == 2
    client = client_of(run_dir)
    keys = [k for k in runs[0].metrics if k not in TIMING]
    first, second = (mlflow_curve(client, r.run_id, keys) for r in runs)
    assert len(first) == 3 and first == second

    prepared = open_prepared(tiny_prepared)
    trial = fit_to_data(TrialConfig.from_dict(_fixed_trial()), prepared)
    feed = MemoryFeed(prepared.read_arrays("train"), prepared.read_arrays("valid"), 8, 0)
    session = LocalSession()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a trial of one CPU trains
    try:
        fit(trial, plan(prepared, trial, 1), feed, session)
    finally:
        torch.set_num_threads(threads)
    here = [{k: float(m[k]) for k in keys} for m in session.reports]
    assert here == first  # a function of the configuration, the seed and the data


def _fixed_trial() -> dict:
    """The fixed space as a trial config (its structural n_blocks is no config field)."""
    import yaml

    values = yaml.safe_load(FIXED_SPACE)
    del values["model"]["n_blocks"]
    return values


@pytest.mark.slow
def test_ddp_trials_of_one_config_and_seed_repeat_within_tolerance(
    tiny_prepared, ray_session, tmp_path
):
    """Two workers, each with its seeded, fixed share of the data: the same run twice gives
    the same curves within the float order of gloo's all-reduce (measured: identical)."""
    trial = TrialConfig.from_dict(_fixed_trial())
    resources = ResourcesConfig(num_workers=2, cpus_per_worker=0.4)
    histories = []
    for name in ("first", "second"):
        result = make_trainer(str(tiny_prepared), trial, resources, str(tmp_path), name).fit()
        histories.append(curves(load_checkpoint(result.checkpoint.path)["history"]))
    a, b = histories
    assert [m["epoch"] for m in a] == [m["epoch"] for m in b] == [1, 2, 3]
    worst = max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)
    print(f"largest difference between two DDP runs: {worst:.3g}")
    assert worst <= 1e-6 and all(math.isfinite(v) for m in a for v in m.values())
    assert np.isclose(a[-1]["valid_loss"], b[-1]["valid_loss"], rtol=0, atol=1e-6)
