"""A real search in this process: Ray Tune trials of Ray Train runs on prepared data, Optuna in a
journal file, MLflow in a sqlite store, Ray's results in S3 (a local moto server)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow.fs
import pytest
from fixtures.search import (
    DIVERGING_LR,
    SMALL,
    fails_in_one_line,
    journal_study,
    write_space,
)
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from mrnet_ray import tune as tune_cli
from mrnet_ray.search.settings import SearchSettings
from mrnet_ray.tracking import (
    TAG_ERROR,
    TAG_PARENT,
    list_trial_runs,
)


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
    statuses = sorted(status for status, _ in outcomes.values())
    assert statuses == ["ERROR", "TERMINATED", "TERMINATED"]  # the others trained to the end
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
    # One worker: the trial trained in its own Tune trial, which keeps its checkpoints, in S3.
    assert record["executor"] == "tune"
    fs, path = pyarrow.fs.FileSystem.from_uri(best["checkpoints"])
    assert Path(path).name == f"mrnet_trial_{best['trial_id']}"
    kept = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    assert any(Path(f.path).parent.name.startswith("checkpoint_") for f in kept
               if f.path.endswith("/state.pt"))  # fmt: skip
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
