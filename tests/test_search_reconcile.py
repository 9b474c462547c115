"""Nothing lost on resume: the MLflow writes a killed driver still held in its queue (the
tracking server was down), or that the server refused (a password rotated mid-search), are
made by ``--resume`` from Tune's own results, each once."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
from fixtures.search import SMALL, TUNE, client_of, driver_env, trial_runs, write_space
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from mrnet_ray.search.settings import METRIC
from mrnet_ray.tracking import list_trial_runs

EPOCHS = 4


def tune_recorded(experiment_path: str) -> dict[str, list[tuple[int, float]]]:
    """Per trial Tune saved as ended, ``(epoch, METRIC)`` of the first report of each epoch
    (an epoch trained again after a restore keeps its first value, as the MLflow run does)."""
    analysis = ExperimentAnalysis(experiment_path)
    out = {}
    for trial in analysis.trials:
        frame = analysis.trial_dataframes[trial.trial_id].drop_duplicates("epoch")
        pairs = zip(frame["epoch"], frame[METRIC], strict=True)
        out[trial.trial_id] = [(int(e), float(v)) for e, v in pairs]
    return out


@pytest.mark.slow
def test_writes_queued_when_the_driver_is_killed_are_made_on_resume(
    tiny_prepared, ray_session, mlflow_server, tmp_path
):
    """The server stops after the first trial's first epoch reached it; the driver is killed
    (SIGKILL) once Tune has saved every trial as finished, while the later epochs, the runs'
    ends and the next trials' runs wait in its queue. After the server is back, ``--resume``
    leaves one run per trial holding each epoch Tune recorded exactly once, FINISHED."""
    run_dir = tmp_path / "run"
    space = write_space(tmp_path, "{float: [1.0e-3, 1.0e-2], log: true}", epochs=EPOCHS)
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "2",
        "--max-concurrent", "1", "--scheduler", "fifo", "--run-dir", str(run_dir),
        "--mlflow-uri", mlflow_server.uri, *SMALL,
    ]  # fmt: skip
    # MLflow's client gives up on a request at once; the callback's writer retries it.
    env = driver_env(ray_session) | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / "search.json").is_file() or not any(
            METRIC in r.metrics for r in trial_runs(run_dir)
        ):
            assert driver.poll() is None and time.monotonic() < deadline, log.name
            time.sleep(0.2)
        mlflow_server.stop()
        experiment = json.loads((run_dir / "search.json").read_text())["experiment_path"]
        recorded: dict[str, list[tuple[int, float]]] = {}
        while len(recorded) < 2 or any(len(v) < EPOCHS for v in recorded.values()):
            assert driver.poll() is None and time.monotonic() < deadline, log.name
            time.sleep(1)
            try:
                statuses = {t.status for t in ExperimentAnalysis(experiment).trials}
            except (ValueError, OSError):  # no saved state yet
                continue
            if statuses == {"TERMINATED"}:
                recorded = tune_recorded(experiment)
        driver.kill()
        assert driver.wait(timeout=60) == -signal.SIGKILL
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=60)
        log.close()
    assert "MLflow unreachable" in (tmp_path / "first.log").read_text()  # writes were queued

    mlflow_server.start()
    done = subprocess.run(
        [*TUNE, "--resume", "--run-dir", str(run_dir)], cwd=tmp_path, env=driver_env(ray_session),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the second trial's run at least: it started after the server stopped
    assert re.search(r"MLflow runs of [12] trial\(s\) completed from Tune's results", done.stdout)

    client = client_of(run_dir)
    runs = trial_runs(run_dir)
    assert sorted(r.trial_id for r in runs) == sorted(recorded)  # one run per trial
    assert [r.status for r in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        history = client.get_metric_history(run.run_id, METRIC)
        logged = sorted((m.step, m.value) for m in history)
        assert logged == recorded[run.trial_id], run.trial_id  # each epoch once, Tune's value
        assert run.params["train.lr"]  # a run made from Tune's results has the trial's params


@pytest.mark.slow
def test_a_password_rotated_mid_search_is_one_line_and_resume_completes_the_runs(
    tiny_prepared, ray_session, mlflow_auth_server, tmp_path
):
    """The search's password is rotated after its first epoch reached the authenticating
    server: the callback says so once, the trials finish, and the driver's closing MLflow
    writes end in one line (no traceback) after search.json is written. ``--resume`` with
    the new password then leaves every trial's run FINISHED with each epoch Tune recorded."""
    server, run_dir = mlflow_auth_server, tmp_path / "run"
    space = write_space(tmp_path, "{float: [1.0e-3, 1.0e-2], log: true}", epochs=EPOCHS)
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "2",
        "--max-concurrent", "1", "--scheduler", "fifo", "--run-dir", str(run_dir),
        "--mlflow-uri", server.uri, *SMALL,
    ]  # fmt: skip
    bare = {k: v for k, v in driver_env(ray_session).items() if not k.startswith("MLFLOW_")}
    bare["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    reader = MlflowClient(server.backend)  # the server's own store: no credentials involved
    rotated = "rotated-" + server.password
    out, err = tmp_path / "first.out", tmp_path / "first.err"
    try:
        with out.open("w") as stdout, err.open("w") as stderr:
            driver = subprocess.Popen(
                argv, cwd=tmp_path, env=bare | server.env(), stdout=stdout, stderr=stderr
            )
            try:
                deadline = time.monotonic() + 600
                while True:
                    assert driver.poll() is None and time.monotonic() < deadline, err.read_text()
                    time.sleep(0.2)
                    if not (run_dir / "search.json").is_file():
                        continue
                    record = json.loads((run_dir / "search.json").read_text())
                    runs = list_trial_runs(server.backend, "mrnet_ray", record["parent_run_id"])
                    if any(METRIC in r.metrics for r in runs):
                        break
                server.set_password(rotated)
                assert driver.wait(timeout=600) == 2, err.read_text()[-3000:]
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait(timeout=60)
        printed = out.read_text() + err.read_text()
        lines = err.read_text().strip().splitlines()
        assert lines[-1] == (
            f"error: MLflow at {server.uri} refused the credentials (UNAUTHENTICATED, HTTP 401) "
            "as the search ended: search.json and Tune's results hold the whole search, its "
            "MLflow runs do not; once MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are "
            "those of a user it accepts, `python -m mrnet_ray.tune --resume --run-dir "
            f"{run_dir}` completes them from Tune's results"
        ), lines[-20:]
        assert "Traceback" not in printed
        assert printed.count("refuses this search's credentials") == 1  # the callback, once
        assert server.password not in printed and rotated not in printed
        record = json.loads((run_dir / "search.json").read_text())
        assert record["status"] == "FINISHED" and record["trials"]["completed"] == 2
        recorded = tune_recorded(record["experiment_path"])
        assert all(len(v) == EPOCHS for v in recorded.values())
        kept = list_trial_runs(server.backend, "mrnet_ray", record["parent_run_id"])
        assert len(kept) < 2 or any(r.status == "RUNNING" for r in kept)  # really cut short

        done = subprocess.run(
            [*TUNE, "--resume", "--run-dir", str(run_dir)], cwd=tmp_path,
            env=bare | server.env(rotated), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        server.set_password(server.password)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"MLflow runs of [12] trial\(s\) completed from Tune's results", done.stdout)
    runs = list_trial_runs(server.backend, "mrnet_ray", record["parent_run_id"])
    assert sorted(r.trial_id for r in runs) == sorted(recorded)  # one run per trial
    assert [r.status for r in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        history = reader.get_metric_history(run.run_id, METRIC)
        assert sorted((m.step, m.value) for m in history) == recorded[run.trial_id]
        assert run.params["train.lr"]
    resumed = json.loads((run_dir / "search.json").read_text())
    assert resumed["best"]["mlflow_run_id"] in {r.run_id for r in runs}
