"""The search driver, for real: Ray Tune trials of Ray Train runs on prepared data, Optuna in a
journal file, MLflow in a sqlite store; interrupted (SIGINT) or killed (SIGKILL) and resumed
in a subprocess."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pyarrow.fs
import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

import mrnet_ray
from mrnet_ray import search
from mrnet_ray import tune as tune_cli
from mrnet_ray.config import ResourcesConfig
from mrnet_ray.search import METRIC, SearchSettings
from mrnet_ray.tracking import (
    TAG_ERROR,
    TAG_PARENT,
    TAG_TRIAL_ID,
    end_orphaned_trial_runs,
    list_trial_runs,
    setup_tracking,
    start_search_run,
)

REPO = Path(mrnet_ray.__file__).resolve().parent.parent
TINY_SPACE = """\
model:
  arch: mrnet
  channels: {{choice: [16, 24]}}
  stem_kernel: 3
  n_blocks: 2
  dilations: [1, 2]
  route_depths: [[1], [1, 2]]
  res2_scale: 2
  se_channels: 8
  attention_channels: 16
  embedding_dim: 16
train:
  epochs: 2
  batch_size: 16
  lr: {lr}
"""
# 1e30 makes the loss NaN in the first epoch, which training reports as an error. With seed 5
# Optuna draws lr 3e-3, 1e30, 3e-3 (the first is the space's default point).
DIVERGING_LR = "{choice: [3.0e-3, 1.0e+30]}"
SMALL = ["--workers", "1", "--cpus-per-worker", "0.4", "--max-failures", "0"]


def write_space(tmp_path: Path, lr: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE.format(lr=lr))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def journal_study(record: dict) -> optuna.Study:
    """The search's Optuna study, from its journal file."""
    storage = search.journal_storage(Path(record["journal"]))
    return optuna.load_study(study_name=record["study_name"], storage=storage)


def fails_in_one_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        tune_cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    # The session's Ray forwards earlier tests' actor logs to this process's stderr at any
    # time; the CLI's own report must still be exactly one `error:` line, and the last one.
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0]), err
    return errors[0]


# ---- entry points and checks before the first trial -----------------------------------------


def test_both_entry_points_start(tmp_path):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    runs = [
        subprocess.Popen([sys.executable, *how, "--help"], cwd=REPO, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for how in (["mrnet_ray/tune.py"], ["-m", "mrnet_ray.tune"])
    ]  # fmt: skip
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert "--resume" in out and "--smoke-test" in out
    # As a script (what `ray submit` runs) the package directory must leave sys.path, or its
    # datasets/ package would stand in for the top-level `datasets` that mlflow probes for.
    probe = (
        "import importlib.util, runpy, sys; sys.path.insert(0, 'mrnet_ray'); "
        "runpy.run_path('mrnet_ray/tune.py', run_name='probe'); "
        "spec = importlib.util.find_spec('datasets'); "
        "print('shadowed' if spec and 'mrnet_ray' in (spec.origin or '') else 'clean')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.stdout.strip().endswith("clean"), out.stderr


def test_shipped_space_names_and_paths(tmp_path):
    assert tune_cli.resolve_space("smoke") == REPO / "search_spaces" / "smoke.yaml"
    own = write_space(tmp_path, "1.0e-3")
    assert tune_cli.resolve_space(str(own)) == own
    with pytest.raises(tune_cli.UserError, match="shipped: baselines, demo, mrnet, smoke"):
        tune_cli.resolve_space("nosuch")


def test_bad_inputs_fail_in_one_line(tiny_prepared, tmp_path, capsys, ray_session):
    data = ["--data", str(tiny_prepared), "--run-dir", str(tmp_path / "run")]
    assert "--space nosuch: no such file" in fails_in_one_line(capsys, [*data, "--space", "nosuch"])
    empty = tmp_path / "not-prepared"
    empty.mkdir()
    err = fails_in_one_line(capsys, ["--data", str(empty), "--space", "smoke"])
    assert str(empty) in err and "prepare" in err
    closed = f"http://127.0.0.1:{free_port()}"
    err = fails_in_one_line(capsys, [*data, "--space", "smoke", "--mlflow-uri", closed])
    assert f"MLflow tracking server at {closed} is unreachable" in err
    err = fails_in_one_line(
        capsys, [*data, "--space", "smoke", "--workers", "4", "--cpus-per-worker", "1"]
    )
    assert "one trial needs 4.2 CPU, 0 GPU" in err and "the cluster has 2 CPU" in err
    err = fails_in_one_line(capsys, [*data, "--objective", "acc-params", "--scheduler", "asha"])
    assert "ASHA" in err
    err = fails_in_one_line(capsys, ["--resume", "--run-dir", str(tmp_path / "none")])
    assert err.startswith("error: nothing to resume")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_capacity_counts_the_nodes_an_autoscaler_may_add(ray_session, tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"  # as `ray up cluster/gpu.yaml` leaves it
    bootstrap.write_text(
        "max_workers: 8\nhead_node_type: head\navailable_node_types:\n"
        "  head: {resources: {CPU: 8}, min_workers: 0, max_workers: 0}\n"
        "  gpu_worker: {resources: {CPU: 8, GPU: 1}, min_workers: 0, max_workers: 8}\n"
    )
    capacity = search.cluster_capacity(bootstrap)
    assert capacity == {"CPU": 72.0, "GPU": 8.0}
    needs = search.trial_needs(ResourcesConfig.gpu(), trial_cpus=0.2)
    search.check_feasible(needs, capacity)
    assert search.default_concurrency(needs, capacity) == 8  # one trial per GPU node
    assert search.cluster_capacity(tmp_path / "none.yaml") == {"CPU": 2.0, "GPU": 0.0}


def test_trial_runs_tune_never_saved_end_killed(tmp_path):
    tracking = setup_tracking(None, tmp_path / "run", "mrnet_ray")
    parent = start_search_run(tracking, "search", key="k")
    client = MlflowClient(tracking.uri)
    runs = {
        trial_id: client.create_run(
            tracking.experiment_id, tags={TAG_PARENT: parent, TAG_TRIAL_ID: trial_id}
        ).info.run_id
        for trial_id in ("known", "lost")
    }
    assert end_orphaned_trial_runs(tracking, parent, {"known"}, "never saved") == 1
    lost = client.get_run(runs["lost"])
    assert lost.info.status == "KILLED" and lost.data.tags[TAG_ERROR] == "never saved"
    assert client.get_run(runs["known"]).info.status == "RUNNING"
    assert end_orphaned_trial_runs(tracking, parent, {"known"}, "never saved") == 0


# ---- a real search ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_search(tiny_prepared, ray_session, tmp_path_factory, s3_uri):
    """Three trials, ASHA, TPE; the second diverges. Run in this process on the session's Ray,
    with Ray's results and checkpoints in S3 (a local moto server)."""
    tmp = tmp_path_factory.mktemp("search")
    run_dir = tmp / "run"
    argv = [
        "--data", str(tiny_prepared), "--space", str(write_space(tmp, DIVERGING_LR)),
        "--num-samples", "3", "--seed", "5", "--run-dir", str(run_dir),
        "--storage", s3_uri("results", "searches"), *SMALL,
    ]  # fmt: skip
    env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    started = time.monotonic()
    tune_cli.main(argv)
    seconds = time.monotonic() - started
    if env is None:  # main() picks Tune's classic progress table for its own process
        os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
    record = json.loads((run_dir / "search.json").read_text())
    return run_dir, record, seconds


@pytest.mark.slow
def test_search_records_every_trial_in_mlflow(failing_search):
    run_dir, record, seconds = failing_search
    settings = SearchSettings.from_dict(record)
    assert record["status"] == "FINISHED" and settings.experiment_path.startswith("s3://results/")
    assert {"optuna.journal", "mlflow.db", "search.json"} <= {p.name for p in run_dir.iterdir()}
    client = MlflowClient(record["tracking_uri"])
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["num_samples"] == "3" and parent.data.params["scheduler"] == "asha"
    assert parent.data.params["resources.num_workers"] == "1"
    assert parent.data.tags["mrnet_ray.space"] == "space"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"space.yaml", "trials.csv"} <= artifacts

    runs = list_trial_runs(record["tracking_uri"], "mrnet_ray", record["parent_run_id"])
    assert len(runs) == 3 and len({r.trial_id for r in runs}) == 3
    assert all(r.tags[TAG_PARENT] == record["parent_run_id"] for r in runs)
    outcomes = tune_outcomes(settings)
    for run in runs:
        assert run.params["model.dilations"] == "1,2"  # the whole config, flattened
        diverged = float(run.params["train.lr"]) > 1
        assert run.status == ("FAILED" if diverged else "FINISHED"), run.params["train.lr"]
        history = client.get_metric_history(run.run_id, "valid_track_acc")
        if diverged:
            assert "FloatingPointError: train_loss is nan at epoch 1" in run.tags[TAG_ERROR]
            assert outcomes[run.trial_id][0] == "ERROR" and not history
            continue
        status, epochs = outcomes[run.trial_id]  # 2 epochs, or 1 if ASHA stopped it
        assert status == "TERMINATED"
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert run.metrics["params"] > 1000 and run.metrics["flops"] > run.metrics["params"]
    statuses = [status for status, _ in outcomes.values()]
    assert statuses == ["TERMINATED", "ERROR", "TERMINATED"]  # the search went on after it
    early = sum(epochs < 2 for status, epochs in outcomes.values() if status == "TERMINATED")
    assert record["trials"] == {
        "completed": 2 - early,
        "early-stopped": early,
        "failed": 1,
        "unfinished": 0,
    }
    print(f"3-trial search: {seconds:.0f} s")


def tune_outcomes(settings: SearchSettings) -> dict[str, tuple[str, int]]:
    """Trial id -> (Tune status, epochs reported), from Tune's own experiment state."""
    analysis = ExperimentAnalysis(settings.experiment_path)
    out = {}
    for trial in analysis.trials:
        frame = analysis.trial_dataframes[trial.trial_id]
        out[trial.trial_id] = (trial.status, int(frame["epoch"].max()) if "epoch" in frame else 0)
    return out


@pytest.mark.slow
def test_search_json_names_everything_best_needs(failing_search):
    run_dir, record, _ = failing_search
    best = record["best"]
    runs = list_trial_runs(record["tracking_uri"], "mrnet_ray", record["parent_run_id"])
    finished = [r for r in runs if r.status == "FINISHED"]
    assert best["mlflow_run_id"] in {r.run_id for r in finished}
    client = MlflowClient(record["tracking_uri"])
    every_epoch = [
        m.value for r in finished for m in client.get_metric_history(r.run_id, "valid_track_acc")
    ]
    assert best["valid_track_acc"] == pytest.approx(max(every_epoch))
    assert best["trial_config"]["train"]["lr"] == pytest.approx(3e-3)
    assert best["trial_config"]["model"]["n_mels"] == 32  # from the prepared data
    fs, path = pyarrow.fs.FileSystem.from_uri(best["train_run"])  # Ray Train's run, in S3
    kept = fs.get_file_info(pyarrow.fs.FileSelector(path))
    assert "checkpoint_manager_snapshot.json" in {Path(f.path).name for f in kept}
    assert 1 <= best["epoch"] <= 2 and best["metrics"]["params"] > 1000
    assert (run_dir / "trials.csv").read_text().count("\n") == 4


@pytest.mark.slow
def test_optuna_study_is_in_the_journal(failing_search):
    _, record, _ = failing_search
    study = journal_study(record)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE"]
    assert study.trials[0].params == {"model.channels": 24, "train.lr": 3e-3}  # default point
    assert study.best_value == max(t.value for t in study.trials if t.value is not None)


@pytest.mark.slow
def test_a_second_start_asks_for_resume(failing_search, capsys, tiny_prepared):
    run_dir, record, _ = failing_search
    argv = ["--data", str(tiny_prepared), "--space", record["space"], "--run-dir", str(run_dir)]
    assert "already holds a search; continue it with --resume" in fails_in_one_line(
        capsys,
        [*argv, *SMALL],  # results would go elsewhere (run_dir/ray), but it is the same dir
    )
    err = fails_in_one_line(capsys, ["--resume", "--run-dir", str(run_dir), "--seed", "1"])
    assert "--seed: --resume continues a search exactly as it was started" in err


# ---- interrupted and resumed, multi-objective --------------------------------------------------


def trial_runs(run_dir: Path):
    record = json.loads((run_dir / "search.json").read_text())
    return list_trial_runs(record["tracking_uri"], "mrnet_ray", record["parent_run_id"])


TUNE = [sys.executable, "-m", "mrnet_ray.tune"]


def driver_env(ray_session) -> dict[str, str]:
    """A search driver's environment: the session's Ray cluster, unbuffered output."""
    address = ray_session.get_runtime_context().gcs_address
    return {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}


def start_driver(data: Path, tmp_path: Path, env: dict, log, *flags: str) -> subprocess.Popen:
    """A 3-trial search of the tiny space into ``tmp_path/run``, logging to ``log``."""
    space = write_space(tmp_path, "{float: [1.0e-3, 1.0e-2], log: true}")
    argv = [
        *TUNE, "--data", str(data), "--space", str(space), "--num-samples", "3",
        "--run-dir", str(tmp_path / "run"), *flags, *SMALL,
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
            time.sleep(2)
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
        assert steps == {1, 2}

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
                time.sleep(1)
                runs = trial_runs(run_dir) if (run_dir / "search.json").is_file() else []
                if any(r.status == "FINISHED" for r in runs):  # then one mid-training: epoch 1
                    # reported (and checkpointed), epoch 2 under way
                    running = [r for r in runs if r.status == "RUNNING" and METRIC in r.metrics]
                    training = running[0] if running else None
            tail = (tmp_path / "first.log").read_text()[-3000:]
            assert training is not None and first.poll() is None, tail
            first.kill()
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
    assert "3 completed" in second.stdout

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
            assert run.status == "KILLED" and run.tags[TAG_ERROR] == tune_cli.ORPHAN_REASON
    assert set(done_before) <= trial_ids  # nothing finished is lost...
    for trial_id, run in ours.items():  # ...or trained again: every epoch logged once
        history = client.get_metric_history(run.run_id, METRIC)
        assert sorted(m.step for m in history) == [1, 2], (trial_id, history)
        if trial_id in before:  # the same run, continued, with the same config
            assert run.run_id == before[trial_id].run_id
            assert run.params == before[trial_id].params
    if training.trial_id in trial_ids:  # resumed from its epoch-1 checkpoint
        (epoch_one,) = [
            m for m in client.get_metric_history(training.run_id, METRIC) if m.step == 1
        ]
        assert epoch_one.value == training.metrics[METRIC]

    study = journal_study(record)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # none repeated
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    drawn = [(t.params["model.channels"], t.params["train.lr"]) for t in complete]
    for run in ours.values():  # each trial's config is one complete Optuna trial's
        channels, lr = int(run.params["model.channels"]), float(run.params["train.lr"])
        assert [(c, x) for c, x in drawn if c == channels and math.isclose(x, lr)], run.params
