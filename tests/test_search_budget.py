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


# ---- warm start ---------------------------------------------------------------------------------

WARM = TINY_SPACE.format(lr="{choice: [3.0e-3, 1.0e-2]}", epochs=1)


@pytest.fixture(scope="module")
def earlier(tiny_prepared, ray_session, tmp_path_factory):
    """A finished 2-trial search to start from, and its Optuna study."""
    tmp = tmp_path_factory.mktemp("earlier")
    done = search(tmp, ray_session, WARM, "--data", str(tiny_prepared), "--num-samples", "2",
                  "--scheduler", "fifo", "--seed", "3")  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp / "run" / "search.json").read_text())
    return tmp / "run", journal_study(record)


@pytest.fixture(scope="module")
def other_data(ray_session, audio_folder, tiny_feature, tmp_path_factory):
    """The same audio prepared with another split: other data (another content hash)."""
    from mrnet_ray.datasets import SplitOptions
    from mrnet_ray.shards.job import prepare

    out = tmp_path_factory.mktemp("other") / "prepared"
    opts = SplitOptions(seed=7, valid_fraction=0.2, test_fraction=0.2)
    return prepare("folder", audio_folder.root, out, opts, tiny_feature)


def completed(study: optuna.Study) -> list:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.slow
def test_warm_start_on_the_same_data_and_space_adds_the_earlier_trials(
    earlier, tiny_prepared, ray_session, tmp_path
):
    source_dir, source = earlier
    done = search(tmp_path, ray_session, WARM, "--data", str(tiny_prepared), "--num-samples",
                  "1", "--warm-start", str(source_dir))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"warm start: {source_dir}: 2 completed trials added with their values" in done.stdout
    record = json.loads((tmp_path / "run" / "search.json").read_text())
    assert record["trials"]["completed"] == 1  # nothing was trained again
    study = journal_study(record)
    given = [(t.params, t.values) for t in completed(source)]
    assert [(t.params, t.values) for t in completed(study)[:2]] == given
    assert len(completed(study)) == 3
    parent = MlflowClient(record["tracking_uri"]).get_run(record["parent_run_id"])
    assert str(source_dir) in parent.data.params["warm_start"]


@pytest.mark.slow
def test_warm_start_on_other_data_enqueues_the_best_configurations(
    earlier, other_data, ray_session, tmp_path
):
    source_dir, source = earlier
    done = search(tmp_path, ray_session, WARM, "--data", str(other_data), "--num-samples", "1",
                  "--warm-start", str(source_dir))  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "other data, so its 2 best fitting configurations go first" in done.stdout
    study = journal_study(json.loads((tmp_path / "run" / "search.json").read_text()))
    best = max(completed(source), key=lambda t: t.values[0])
    assert len(completed(study)) == 1  # no values carried over: only its own trial
    assert study.trials[0].params == best.params  # the earlier best went first


def test_warm_start_mistakes_are_one_line_before_any_trial(
    earlier, tiny_prepared, ray_session, tmp_path
):
    source_dir, _ = earlier
    missing = tmp_path / "nothing"
    done = search(tmp_path, ray_session, WARM, "--data", str(tiny_prepared), "--warm-start",
                  str(missing))  # fmt: skip
    assert done.returncode == 2 and f"error: {missing}/search.json: no such file" in done.stderr
    other_space = WARM.replace("channels: {choice: [16, 24]}", "channels: {choice: [32, 40]}")
    done = search(tmp_path, ray_session, other_space, "--data", str(tiny_prepared),
                  "--warm-start", str(source_dir))  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
    assert "none of its 2 completed trials fits --space" in line and "model.channels=" in line
    assert not (tmp_path / "run" / "search.json").exists()
