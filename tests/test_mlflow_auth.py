"""An MLflow server that checks who you are (``mlflow server --app-name basic-auth`` on
loopback): a search, its export and the registry with the right password, which is then
written nowhere; a wrong one, or one in the URI, stops each command in one line before Ray
starts; a password rotated in the middle of a real Tune run is said once and the trials whose
records it cut short are listed at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fixtures.search import SMALL, driver_env, fails_in_one_line, write_space
from mlflow.tracking import MlflowClient

from mrnet_ray import best, predict, tracking
from mrnet_ray.config import TrialConfig
from mrnet_ray.tracking.callback import MLflowTrialCallback

NAME = "mrnet-auth"
WRONG = "not-the-password-1"


def run_cli(module: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


def client_env(server, password: str | None = None, **more: str) -> dict[str, str]:
    """This process's environment, MLflow pointed at ``server`` as its user, fail-fast HTTP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | server.env(password) | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"} | more


@pytest.fixture(scope="module")
def searched(ray_session, tiny_prepared, mlflow_auth_server, tmp_path_factory):
    """A real search and its export against the server, as its user, each in its own process:
    ``(run_dir, what both printed)``."""
    root = tmp_path_factory.mktemp("auth-search")
    run_dir = root / "run"
    env = client_env(mlflow_auth_server) | driver_env(ray_session)
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    space = write_space(root, lr="0.01", epochs=2)
    searched = run_cli("mrnet_ray.tune", [
        "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "2",
        "--scheduler", "fifo", *SMALL, "--run-dir", str(run_dir), "--name", "auth",
        "--mlflow-uri", mlflow_auth_server.uri,
    ], env)  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-3000:]
    exported = run_cli("mrnet_ray.best", [
        "--run-dir", str(run_dir), "--export", "--confirm", "0", "--register-name", NAME,
    ], env)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    console = "".join([searched.stdout, searched.stderr, exported.stdout, exported.stderr])
    return run_dir, console


def server_record(server) -> list[str]:
    """Every param, tag and registered-version tag the server holds, as text."""
    client = MlflowClient(server.backend)
    texts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            texts += [f"{k}={v}" for k, v in run.data.params.items()]
            texts += [f"{k}={v}" for k, v in run.data.tags.items()]
    for version in client.search_model_versions():
        texts += [f"{k}={v}" for k, v in version.tags.items()] + [version.source or ""]
    return texts


@pytest.mark.slow
def test_with_the_right_password_runs_land_and_the_password_is_written_nowhere(
    searched, mlflow_auth_server
):
    run_dir, console = searched
    server, secret = mlflow_auth_server, mlflow_auth_server.password.encode()
    record = json.loads((run_dir / "search.json").read_text())
    assert record["status"] == "FINISHED" and record["tracking_uri"] == server.uri
    trial_runs = tracking.list_trial_runs(
        server.backend, record["experiment"], record["parent_run_id"]
    )
    assert all(r.status == "FINISHED" for r in trial_runs)
    roles = sorted(r.tags.get(tracking.TAG_ROLE, "search") for r in trial_runs)
    assert roles == ["final-fit", "search", "search"]  # best's refit on train+valid too
    assert "registered mrnet-auth version 1" in console
    assert (run_dir / "best" / "model.safetensors").is_file()  # the bundle, searched below
    # Nowhere: the console, the run directory (search.json, Tune's state and results, the
    # Optuna journal, the bundle and its lineage), the server's params, tags and artifacts.
    assert server.password not in console
    places = [run_dir, server.root / "artifacts"]
    leaks = [
        p for root in places for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()
    ]
    assert leaks == []
    assert [t for t in server_record(server) if server.password in t] == []
    assert len(server_record(server)) > 20  # params and tags were there to search


def test_a_wrong_password_stops_tune_in_one_line_before_ray_starts(
    tiny_prepared, mlflow_auth_server, tmp_path
):
    env = client_env(mlflow_auth_server, WRONG)
    env.pop("RAY_ADDRESS", None)  # were the check to pass, the driver would start its own Ray
    started = time.monotonic()
    done = run_cli("mrnet_ray.tune", [
        "--data", str(tiny_prepared), "--space", "smoke", "--run-dir", str(tmp_path / "run"),
        "--mlflow-uri", mlflow_auth_server.uri,
    ], env)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.splitlines()
    assert line == (
        f"error: MLflow tracking server at {mlflow_auth_server.uri} refused the credentials of "
        "user 'trainer' (HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
        "to a user of that server and its current password"
    )
    assert WRONG not in done.stderr + done.stdout and "Ray" not in done.stderr + done.stdout
    assert time.monotonic() - started < 60 and not (tmp_path / "run" / "ray").exists()


@pytest.mark.slow
def test_a_wrong_password_stops_best_and_predict_models_in_one_line(
    searched, mlflow_auth_server, tmp_path, capsys, monkeypatch
):
    run_dir, _ = searched
    for key, value in client_env(mlflow_auth_server, WRONG).items():
        monkeypatch.setenv(key, value)
    for main, args in [
        (best.main, ["--run-dir", str(run_dir), "--export", str(tmp_path / "b"), "--confirm", "0"]),
        (predict.main, [f"models:/{NAME}@champion", str(tmp_path / "x.wav"),
                        "--mlflow-uri", mlflow_auth_server.uri]),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        out, err = capsys.readouterr()
        (line,) = err.splitlines()
        assert line.startswith(f"error: MLflow tracking server at {mlflow_auth_server.uri}")
        assert "refused the credentials of user 'trainer' (HTTP 401)" in line
        assert WRONG not in out + err
    assert not (tmp_path / "b").exists()


def test_a_uri_with_credentials_is_refused_in_one_line(
    tiny_prepared, mlflow_auth_server, tmp_path, capsys, monkeypatch
):
    """Refused, not redacted: MLflow prints the tracking URI in run links and errors, and the
    search records it; the line names the URI without them and the two variables to use."""
    server = mlflow_auth_server
    host = server.uri.removeprefix("http://")
    with_password = f"http://{server.user}:{server.password}@{host}"
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    args = ["--data", str(tiny_prepared), "--space", "smoke", "--run-dir", str(tmp_path / "r")]
    line = fails_in_one_line(capsys, [*args, "--mlflow-uri", with_password])
    assert line == (
        f"error: tracking URI {server.uri} (as given, with credentials, not shown): a user name "
        f"or password in the URI would be printed and recorded; use {server.uri} and set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )
    with pytest.raises(SystemExit):
        predict.main([f"models:/{NAME}@champion", "x.wav", "--mlflow-uri", with_password])
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line.startswith(f"error: tracking URI {server.uri} (as given")
        and server.password not in line
    )
    assert not (tmp_path / "r").exists()


def default_trial(config: dict) -> TrialConfig:
    """The callback's map from a Tune config to its TrialConfig (module level: it pickles)."""
    return TrialConfig()


def test_a_password_rotated_mid_search_is_said_once_and_incomplete_trials_listed(
    ray_session, mlflow_auth_server, tmp_path, caplog, monkeypatch
):
    from ray import tune

    def epochs_after_a_flag(config: dict) -> None:  # nested: Ray ships it by value
        """Three epochs; the second waits until the test has rotated the password."""
        for epoch in (1, 2, 3):
            if epoch == 2:
                while not Path(config["flag"]).exists():
                    time.sleep(0.05)
            tune.report({"epoch": epoch, "valid_acc": 0.1 * epoch})

    server = mlflow_auth_server
    for key, value in client_env(server).items():
        monkeypatch.setenv(key, value)
    where = tracking.setup_tracking(server.uri, tmp_path, "rotation")
    parent = tracking.start_search_run(where, "rotation", key=str(tmp_path), tags={})
    callback = MLflowTrialCallback(where, parent, default_trial, retry_s=0.1, flush_timeout_s=30)
    flag = tmp_path / "rotated"
    reader = MlflowClient(server.backend)  # the server's own store: no credentials involved

    def rotate_after_epoch_one() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = reader.search_runs(
                [where.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'"
            )
            if runs and runs[0].data.metrics.get("valid_acc") is not None:
                server.set_password("rotated-" + server.password)
                flag.touch()
                return
            time.sleep(0.1)

    rotator = threading.Thread(target=rotate_after_epoch_one, daemon=True)
    rotator.start()
    try:
        tuner = tune.Tuner(
            tune.with_resources(epochs_after_a_flag, {"CPU": 0.2}),
            param_space={"flag": str(flag)},
            run_config=tune.RunConfig(
                name="rotation", storage_path=str(tmp_path / "ray"), callbacks=[callback],
                verbose=0,
            ),
        )  # fmt: skip
        with caplog.at_level("WARNING", logger="mrnet_ray.tracking.callback"):
            results = tuner.fit()
        rotator.join(5)
    finally:
        server.set_password(server.password)
    assert flag.exists() and not results.errors
    (trial,) = [str(r.path).rsplit("/", 1)[-1] for r in results]
    messages = [r.getMessage() for r in caplog.records if r.name == "mrnet_ray.tracking.callback"]
    refused = [m for m in messages if "refuses this search's credentials" in m]
    assert len(refused) == 1, messages  # once, not once per write
    assert "UNAUTHENTICATED" in refused[0] or "401" in refused[0]
    (listed,) = [m for m in messages if "are incomplete, because these writes were refused" in m]
    assert "the records of 1 trial(s)" in listed and "log epoch 2" in listed
    assert "log epoch 3" in listed and "finish its run" in listed
    assert trial.split("_")[0] in listed or "epochs_after_a_flag" in listed
    # what MLflow kept: epoch 1 only, the run left RUNNING (Tune's results hold the rest)
    (run,) = reader.search_runs([where.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    history = reader.get_metric_history(run.info.run_id, "valid_acc")
    assert [m.step for m in history] == [1] and run.info.status == "RUNNING"
    assert server.password not in " ".join(messages)
