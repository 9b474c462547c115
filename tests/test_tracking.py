"""MLflow tracking against real stores: sqlite files, a real `mlflow server`, a real Tune run."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray import tune

import mrnet_ray
from mrnet_ray.config import MRNetConfig, TrainConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.tracking import (
    TAG_DATA_HASH,
    TAG_ERROR,
    MLflowTrialCallback,
    Tracking,
    check_reachable,
    code_version,
    end_search_run,
    list_trial_runs,
    log_learning_curve,
    log_metrics,
    log_params,
    log_trial_config,
    resolve_tracking_uri,
    run_tags,
    setup_tracking,
    start_search_run,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uri_precedence(tmp_path):
    run = tmp_path / "run"
    assert resolve_tracking_uri("http://a:5000", run, env={"MLFLOW_TRACKING_URI": "b"}) == (
        "http://a:5000"
    )
    assert resolve_tracking_uri(None, run, env={"MLFLOW_TRACKING_URI": "http://b"}) == "http://b"
    assert resolve_tracking_uri(None, run, env={}) == f"sqlite:///{run}/mlflow.db"


def test_unreachable_server_is_one_clear_line():
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError) as info:
        check_reachable(uri, timeout_s=2)
    message = str(info.value)
    assert message.startswith(f"MLflow tracking server at {uri} is unreachable: ")
    assert "make ui" in message and "--mlflow-uri" in message and "\n" not in message
    check_reachable("sqlite:////nowhere/mlflow.db")  # local stores need no server


def test_local_store_keeps_artifacts_in_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Ray's callback would have written ./mlruns here
    run_dir = tmp_path / "run"
    tracking = setup_tracking(None, run_dir, "exp")
    assert tracking.uri == f"sqlite:///{run_dir}/mlflow.db"
    assert setup_tracking(None, run_dir, "exp") == tracking  # idempotent
    client = MlflowClient(tracking.uri)
    run_id = client.create_run(tracking.experiment_id).info.run_id
    log_trial_config(client, run_id, TrialConfig())
    assert (run_dir / "mlartifacts").is_dir()
    assert list((run_dir / "mlartifacts").rglob("trial_config.yaml"))
    assert not (tmp_path / "mlruns").exists()


def test_code_version_from_git_or_package(monkeypatch):
    version = code_version()  # this checkout: a commit others may move on, so check it exists
    revision = version.removesuffix("-dirty")
    check = ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"]
    assert subprocess.run(check, cwd=Path(__file__).parent, capture_output=True).returncode == 0
    monkeypatch.setenv("PATH", "")  # no git
    assert code_version() == f"mrnet_ray {mrnet_ray.__version__}"
    assert run_tags("abc")[TAG_DATA_HASH] == "abc"


def test_search_run_is_reused_by_key(tmp_path):
    tracking = setup_tracking(None, tmp_path, "exp")
    first = start_search_run(tracking, "search", key="/runs/a", tags={"x": "1"})
    end_search_run(tracking, first, "FAILED", error="interrupted")
    again = start_search_run(tracking, "search", key="/runs/a", tags={"x": "2"})
    other = start_search_run(tracking, "search", key="/runs/b")
    assert again == first != other
    run = MlflowClient(tracking.uri).get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags["x"] == "2" and run.data.tags[TAG_ERROR] == "interrupted"


def test_logging_helpers(tmp_path):
    tracking = setup_tracking(None, tmp_path, "exp")
    client = MlflowClient(tracking.uri)
    run_id = client.create_run(tracking.experiment_id).info.run_id
    trial = TrialConfig(model=MRNetConfig(dilations=(2, 5), route_depths=((1,), (1, 3))))
    log_params(client, run_id, trial.flat())
    for epoch in (1, 2, 3):
        log_metrics(client, run_id, {"train_loss": 1 / epoch, "valid_acc": epoch / 4}, epoch)
    log_trial_config(client, run_id, trial)
    log_learning_curve(client, run_id)

    run = client.get_run(run_id)
    assert run.data.params["model.route_depths"] == "1,1-3"
    assert [m.step for m in client.get_metric_history(run_id, "valid_acc")] == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "trial_config.yaml",
        "learning_curve.png",
    }
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / "dl")))
    assert (local / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((local / "trial_config.yaml").read_text())
    assert TrialConfig.from_dict(saved) == trial


# ---- the Tune callback, driven by a real Tune run ---------------------------------------------


def make_trainable():
    """A function trainable defined in a closure, so Ray ships it by value to its workers
    (they cannot import this test module)."""

    def trainable(config):
        for epoch in (1, 2, 3):
            if config["x"] == 3 and epoch == 2:
                raise ValueError("boom at epoch 2")
            tune.report(
                {"epoch": epoch, "valid_acc": config["x"] * epoch / 10, "train_loss": 1 / epoch}
            )

    return trainable


TRAINABLE = make_trainable()


def trial_config(config) -> TrialConfig:
    return TrialConfig(train=TrainConfig(lr=config["x"] * 1e-3))


def run_search(storage: Path, callback: MLflowTrialCallback, xs=(1, 2, 3)) -> None:
    tune.Tuner(
        TRAINABLE,
        param_space={"x": tune.grid_search(list(xs))},
        run_config=tune.RunConfig(
            name="search",
            storage_path=str(storage),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    ).fit()


def child_runs(tracking: Tracking, parent: str):
    return {r.params["train.lr"]: r for r in list_trial_runs(tracking.uri, "exp", parent)}


def test_callback_one_run_per_trial_even_after_resume(tmp_path, ray_session):
    tracking = setup_tracking(None, tmp_path / "run", "exp")
    parent = start_search_run(tracking, "search", key=str(tmp_path / "ray/search"))
    callback = MLflowTrialCallback(tracking, parent, trial_config, tags={TAG_DATA_HASH: "h"})
    run_search(tmp_path / "ray", callback, xs=(1, 3))

    runs = child_runs(tracking, parent)
    assert set(runs) == {"0.001", "0.003"}
    client = MlflowClient(tracking.uri)
    done = runs["0.001"]
    assert done.status == "FINISHED" and done.tags[TAG_DATA_HASH] == "h"
    assert done.params["model.dilations"] == "2,3,4"  # fixed values are params too
    assert [m.step for m in client.get_metric_history(done.run_id, "valid_acc")] == [1, 2, 3]
    assert "learning_curve.png" in {a.path for a in client.list_artifacts(done.run_id)}
    failed = runs["0.003"]
    assert failed.status == "FAILED"
    assert "ValueError: boom at epoch 2" in failed.tags[TAG_ERROR]
    assert failed.tags["failures"] == "1"  # the first attempt was retried (max_failures=1)

    # --resume: Ray restores the pickled callback; the errored trial runs (and fails) again.
    tune.Tuner.restore(str(tmp_path / "ray/search"), TRAINABLE, resume_errored=True).fit()
    again = child_runs(tracking, parent)
    assert {lr: r.run_id for lr, r in again.items()} == {lr: r.run_id for lr, r in runs.items()}
    assert again["0.003"].status == "FAILED"
    # Every attempt (two before the resume, one after) ran epoch 1 again, from scratch; the
    # one run holds that epoch once, as the first attempt logged it.
    attempts = client.get_metric_history(failed.run_id, "valid_acc")
    assert [(m.step, m.value) for m in attempts] == [(1, 0.3)]
    assert len(list_trial_runs(tracking.uri, "exp")) == 2


# ---- a real tracking server, and an outage in the middle of a search ---------------------------


@pytest.mark.slow
def test_server_outage_mid_search_is_buffered(
    tmp_path, ray_session, mlflow_server, monkeypatch, caplog
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast; the writer retries
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = mlflow_server.uri
    tracking = setup_tracking(uri, tmp_path / "run", "exp")  # over the REST API
    parent = start_search_run(tracking, "search", key="outage")
    mlflow_server.stop()
    with pytest.raises(UserError, match="is unreachable"):
        check_reachable(uri, timeout_s=2)
    mlflow_server.start(wait=False)  # back in ~10 s, while trials report
    callback = MLflowTrialCallback(tracking, parent, trial_config, retry_s=0.5, flush_timeout_s=120)
    with caplog.at_level(logging.WARNING, logger="mrnet_ray.tracking"):
        run_search(tmp_path / "ray", callback, xs=(1, 2))
    assert "MLflow unreachable" in caplog.text  # the outage really happened
    runs = child_runs(tracking, parent)
    assert {lr: r.status for lr, r in runs.items()} == {
        "0.001": "FINISHED",
        "0.002": "FINISHED",
    }
    assert runs["0.002"].metrics["valid_acc"] == pytest.approx(0.6)
    history = MlflowClient(uri).get_metric_history(runs["0.001"].run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert (mlflow_server.root / "server-artifacts").is_dir()  # artifacts went through it
    assert not (tmp_path / "run" / "mlartifacts").exists()


def test_registry_calls_leave_no_tracking_uri_behind(tmp_path, monkeypatch):
    """Export points MLflow's global URI at the search's store for a while; later searches in
    the same process must still resolve their own store (a leak once sent them to ./mlflow.db)."""
    from mrnet_ray.tracking.registry import _global_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/a.db"
    with _global_uri(uri):
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert resolve_tracking_uri(None, tmp_path / "run") == f"sqlite:///{tmp_path}/run/mlflow.db"
