"""Searches that spend their budget well: proposals over a space's limits are never trained
(Optuna is told they are infeasible, MLflow records them), and a warm start adds the trials of
earlier searches to the study before the first proposal."""

from __future__ import annotations

import json
import subprocess

import optuna
import pytest
from fixtures.search import TINY_SPACE, TUNE, driver_env, journal_study, trial_runs
from mlflow.tracking import MlflowClient

from mrnet_ray.errors import UserError
from mrnet_ray.search.space import load_space
from mrnet_ray.tracking import TAG_INFEASIBLE, TAG_PARENT

LIMITED = (
    TINY_SPACE.format(lr="3.0e-3", epochs=1).replace(
        "channels: {choice: [16, 24]}", "channels: {choice: [16, 48]}"
    )
    + "limits:\n  params: LIMIT\n"
)
"""Width 16 has about 11k parameters, width 48 about 70k: a 30k limit rules out the wider."""


def search(tmp_path, ray_session, space_text: str, *flags: str) -> subprocess.CompletedProcess:
    space = tmp_path / "space.yaml"
    space.write_text(space_text)
    argv = [*TUNE, "--space", str(space), "--run-dir", str(tmp_path / "run"), "--workers", "1",
            "--cpus-per-worker", "1", "--max-failures", "0", *flags]  # fmt: skip
    return subprocess.run(argv, cwd=tmp_path, env=driver_env(ray_session), capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_limits_are_checked_where_they_are_written(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("model:\n  channels: 16\nlimits:\n  param: 5\n  flops: -1\n")
    with pytest.raises(UserError) as err:
        load_space(path)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 problems in the search space:"
    assert lines[1] == f"{path}:4: limits.param: unknown limit; did you mean 'params'?"
    assert lines[2].startswith(f"{path}:5: limits.flops: -1 must be a positive number")
    path.write_text("model:\n  channels: 16\nlimits:\n  params: 5.0e+6\n  flops: 2.0e9\n")
    assert load_space(path).limits == {"params": 5.0e6, "flops": 2.0e9}


@pytest.mark.slow
def test_proposals_over_a_limit_are_recorded_and_never_trained(
    tiny_prepared, ray_session, tmp_path
):
    done = search(
        tmp_path, ray_session, LIMITED.replace("LIMIT", "3.0e4"), "--data", str(tiny_prepared),
        "--num-samples", "3", "--searcher", "random", "--seed", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "search.json").read_text())
    runs = trial_runs(tmp_path / "run")
    assert len(runs) == 3 == record["trials"]["completed"]  # --num-samples counts trained ones
    assert all(r.metrics["params"] <= 3.0e4 and r.params["model.channels"] == "16" for r in runs)

    client = MlflowClient(record["tracking_uri"])
    query = f"tags.`{TAG_PARENT}` = '{record['parent_run_id']}' and tags.`{TAG_INFEASIBLE}` != ''"
    rejected = client.search_runs([record["experiment_id"]], query)
    assert rejected, "the random draws of seed 0 include width 48"
    for run in rejected:
        assert run.info.status == "KILLED" and run.data.params["model.channels"] == "48"
        assert (
            run.data.tags[TAG_INFEASIBLE].startswith("params ")
            and "> limit 3e+04" in (run.data.tags[TAG_INFEASIBLE])
        )
        assert run.data.metrics["params"] > 3.0e4 and "flops" in run.data.metrics
        assert not client.get_metric_history(run.info.run_id, "valid_track_acc")  # no epochs
    assert f"{len(rejected)} proposal(s) over the space's limits were never trained" in done.stdout

    study = journal_study(record)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(pruned) == len(rejected) and len(complete) == 3
    assert all(t.constraints["params"] > 0 for t in pruned)  # told infeasible: over by this
    assert all(t.constraints["params"] <= 0 for t in complete)


@pytest.mark.slow
def test_a_search_whose_every_proposal_is_over_the_limits_stops_in_one_line(
    tiny_prepared, ray_session, tmp_path
):
    done = search(
        tmp_path, ray_session, LIMITED.replace("LIMIT", "10"), "--data", str(tiny_prepared),
        "--num-samples", "2",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "20 proposals in a row exceeded the space's limits" in errors[0]
    assert "loosen limits.params" in errors[0]
    assert "Traceback" not in done.stderr
