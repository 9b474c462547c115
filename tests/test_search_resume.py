"""A search driver interrupted (SIGINT) or killed (SIGKILL) in a subprocess, then resumed:
nothing lost, nothing trained twice; the multi-objective Pareto front."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from fixtures.search import (
    SMALL,
    TUNE,
    client_of,
    driver_env,
    journal_study,
    trial_runs,
    write_space,
)
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from mrnet_ray.search.driver import ORPHAN_REASON
from mrnet_ray.search.settings import METRIC
from mrnet_ray.tracking import (
    TAG_ERROR,
)

EPOCHS = 12
"""Per trial: a trial of the tiny space trains an epoch in a fraction of a second, so it
takes this many, one trial at a time, for the test to catch a trial mid-training."""


def start_driver(data: Path, tmp_path: Path, env: dict, log, *flags: str) -> subprocess.Popen:
    """A 3-trial search of the tiny space into ``tmp_path/run``, logging to ``log``."""
    space = write_space(tmp_path, "{float: [1.0e-3, 1.0e-2], log: true}", epochs=EPOCHS)
    argv = [
        *TUNE, "--data", str(data), "--space", str(space), "--num-samples", "3",
        "--max-concurrent", "1", "--run-dir", str(tmp_path / "run"), *flags, *SMALL,
    ]  # fmt: skip
    return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)


def resume_driver(run_dir: Path, tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """``tune --resume`` of ``run_dir`` to the end; it must exit 0."""
    done = subprocess.run(
        [*TUNE, "--resume", "--run-dir", str(run_dir)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_interrupted_search_resumes_without_losing_or_repeating_trials(
    tiny_prepared, ray_session, tmp_path
):
    run_dir, env = tmp_path / "run", driver_env(ray_session)
    log = (tmp_path / "first.log").open("w")
    first = start_driver(tiny_prepared, tmp_path, env, log, "--objective", "acc-params")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.25)
            runs = trial_runs(run_dir) if (run_dir / "search.json").is_file() else []
            if any(r.status == "FINISHED" for r in runs) and len(runs) >= 2:
                break  # one trial done, the next one training
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=180) == 130
    finally:
        if first.poll() is None:
            first.kill()
    record = json.loads((run_dir / "search.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    assert record["status"] == "KILLED" and record["trials"]["unfinished"] >= 1
    assert client.get_run(record["parent_run_id"]).info.status == "KILLED"
    done_before = {r.trial_id for r in trial_runs(run_dir) if r.status == "FINISHED"}

    second = resume_driver(run_dir, tmp_path, env)
    assert "search " in second.stdout and "3 completed" in second.stdout

    record = json.loads((run_dir / "search.json").read_text())
    assert record["status"] == "FINISHED" and record["trials"]["completed"] == 3
    assert client.get_run(record["parent_run_id"]).info.status == "FINISHED"
    analysis = ExperimentAnalysis(record["experiment_path"])
    trial_ids = {t.trial_id for t in analysis.trials}
    assert len(trial_ids) == 3 and {t.status for t in analysis.trials} == {"TERMINATED"}
    runs = trial_runs(run_dir)
    assert sorted(r.trial_id for r in runs) == sorted(trial_ids)  # one MLflow run per trial
    assert done_before <= trial_ids and all(r.status == "FINISHED" for r in runs)
    for run in runs:
        steps = {m.step for m in client.get_metric_history(run.run_id, "valid_track_acc")}
        assert steps == set(range(1, EPOCHS + 1))

    study = journal_study(record)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and len(study.directions) == 2
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # none repeated
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]

    # The Pareto front of accuracy against size: a table, a plot, both on the search run.
    rows = (run_dir / "pareto.csv").read_text().splitlines()
    assert rows[0] == "trial_id,valid_track_acc,params,on_front,status" and len(rows) == 4
    front = [r.split(",") for r in rows[1:] if ",True," in r]
    assert front and set(record["pareto"]) == {r[0] for r in front}
    others = [r.split(",") for r in rows[1:]]
    for _, acc, params, *_ in front:  # nothing on the front is dominated
        assert not any(
            float(a) >= float(acc) and float(p) <= float(params)
            and (float(a), float(p)) != (float(acc), float(params))
            for _, a, p, *_ in others
        )  # fmt: skip
    assert (run_dir / "pareto.png").stat().st_size > 10_000
    artifacts = {a.path for a in client.list_artifacts(record["parent_run_id"])}
    assert {"pareto.csv", "pareto.png", "trials.csv"} <= artifacts
    assert not math.isnan(record["best"]["valid_track_acc"])


@pytest.mark.slow
def test_killed_search_driver_resumes_without_losing_or_repeating_trials(
    tiny_prepared, ray_session, tmp_path
):
    """SIGKILL, unlike SIGINT, lets the driver close nothing: search.json, the search run and
    the killed trial's run stay RUNNING, the Optuna trial stays asked, and Tune's experiment
    state may be a snapshot older than MLflow and the journal (Tune saves it every 10 s or
    so). ``--resume`` must still finish the search with one run and one Optuna trial per
    Tune trial, without training again what was already trained."""
    run_dir, env = tmp_path / "run", driver_env(ray_session)
    with (tmp_path / "first.log").open("w") as log:
        first = start_driver(tiny_prepared, tmp_path, env, log, "--scheduler", "fifo")
        try:
            training, deadline = None, time.monotonic() + 600
            while training is None and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.25)
                runs = trial_runs(run_dir) if (run_dir / "search.json").is_file() else []
                if any(r.status == "FINISHED" for r in runs):  # then one mid-training: epoch 1
                    # reported (and checkpointed), epoch 2 under way
                    running = [r for r in runs if r.status == "RUNNING" and METRIC in r.metrics]
                    training = running[0] if running else None
            tail = (tmp_path / "first.log").read_text()[-3000:]
            assert training is not None and first.poll() is None, tail
            first.kill()
            history = client_of(run_dir).get_metric_history(training.run_id, METRIC)
            trained_before = {m.step: m.value for m in history}
            assert first.wait(timeout=60) == -signal.SIGKILL
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(timeout=60)
    record = json.loads((run_dir / "search.json").read_text())
    client = MlflowClient(record["tracking_uri"])
    assert record["status"] == "RUNNING"  # nothing was closed on the way out
    assert client.get_run(record["parent_run_id"]).info.status == "RUNNING"
    before = {r.trial_id: r for r in trial_runs(run_dir)}
    done_before = {t: r for t, r in before.items() if r.status == "FINISHED"}
    assert done_before and before[training.trial_id].status == "RUNNING"

    second = resume_driver(run_dir, tmp_path, env)
    summary = [line for line in second.stdout.splitlines() if " trials in " in line]
    assert "3 completed" in second.stdout, summary or second.stdout[-3000:]

    record = json.loads((run_dir / "search.json").read_text())
    assert record["status"] == "FINISHED"
    assert record["trials"] == {"completed": 3, "early-stopped": 0, "failed": 0, "unfinished": 0}
    assert client.get_run(record["parent_run_id"]).info.status == "FINISHED"
    analysis = ExperimentAnalysis(record["experiment_path"])
    trial_ids = {t.trial_id for t in analysis.trials}
    assert len(trial_ids) == 3 and {t.status for t in analysis.trials} == {"TERMINATED"}

    runs = trial_runs(run_dir)
    assert not [r for r in runs if r.status == "RUNNING"]
    ours = {r.trial_id: r for r in runs if r.trial_id in trial_ids}
    assert len(ours) == len([r for r in runs if r.trial_id in trial_ids]) == 3  # one run each
    assert all(r.status == "FINISHED" for r in ours.values())
    for run in runs:  # a trial started after Tune's last snapshot is unknown to the Tuner
        if run.trial_id not in trial_ids:  # restored: its run ends KILLED, saying why
            assert run.status == "KILLED" and run.tags[TAG_ERROR] == ORPHAN_REASON
    assert set(done_before) <= trial_ids  # nothing finished is lost...
    for trial_id, run in ours.items():  # ...or trained again: every epoch logged once
        history = client.get_metric_history(run.run_id, METRIC)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (trial_id, history)
        if trial_id in before:  # the same run, continued, with the same config
            assert run.run_id == before[trial_id].run_id
            assert run.params == before[trial_id].params
    # The trial killed mid-training was either saved by Tune before the kill, and resumed from
    # its epoch-1 checkpoint in the same run, or started after Tune's last snapshot, and its
    # run was closed as an orphan. Either way the test says which, and checks that case.
    killed = next(r for r in runs if r.run_id == training.run_id)
    if training.trial_id in trial_ids:
        print(f"killed trial {training.trial_id}: saved by Tune, resumed")
        after = {m.step: m.value for m in client.get_metric_history(training.run_id, METRIC)}
        assert killed.status == "FINISHED" and trained_before
        assert {s: after[s] for s in trained_before} == trained_before  # kept, not re-logged
    else:
        print(f"killed trial {training.trial_id}: unknown to Tune's snapshot, closed")
        assert killed.status == "KILLED" and killed.tags[TAG_ERROR] == ORPHAN_REASON

    study = journal_study(record)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # none repeated
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    drawn = [(t.params["model.channels"], t.params["train.lr"]) for t in complete]
    for run in ours.values():  # each trial's config is one complete Optuna trial's
        channels, lr = int(run.params["model.channels"]), float(run.params["train.lr"])
        assert [(c, x) for c, x in drawn if c == channels and math.isclose(x, lr)], run.params
