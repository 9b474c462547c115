"""The search command before its first trial: entry points, shipped spaces, one-line errors,
the cluster's capacity, and trial runs Tune never saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fixtures.search import (
    REPO,
    fails_in_one_line,
    free_port,
    write_space,
)
from mlflow.tracking import MlflowClient

from mrnet_ray.config import ResourcesConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search import resources
from mrnet_ray.search.spaces import resolve_space
from mrnet_ray.tracking import (
    TAG_ERROR,
    TAG_PARENT,
    TAG_TRIAL_ID,
    end_orphaned_trial_runs,
    setup_tracking,
    start_search_run,
)


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
    assert resolve_space("smoke") == REPO / "search_spaces" / "smoke.yaml"
    own = write_space(tmp_path, "1.0e-3")
    assert resolve_space(str(own)) == own
    with pytest.raises(UserError, match="shipped: baselines, demo, mrnet, smoke"):
        resolve_space("nosuch")


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
    err = fails_in_one_line(
        capsys, [*data, "--space", "smoke", "--workers", "2", "--trial-executor", "tune"]
    )
    assert "--trial-executor tune trains each trial in its own process" in err
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
    capacity = resources.cluster_capacity(bootstrap)
    assert capacity == {"CPU": 72.0, "GPU": 8.0}
    needs = resources.trial_needs(ResourcesConfig.gpu(), 0.2, "tune")  # one GPU, trains itself
    resources.check_feasible(needs, capacity)
    assert resources.default_concurrency(needs, capacity, reserve=0.0) == 8  # one per GPU node
    assert resources.cluster_capacity(tmp_path / "none.yaml") == {"CPU": 2.0, "GPU": 0.0}


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


def test_a_search_of_an_earlier_layout_says_it_cannot_be_resumed(tiny_prepared, tmp_path, capsys):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    record = {  # search.json as an mrnet_ray before the package layout wrote it: no format
        "name": "old", "data": str(tiny_prepared), "tracking_uri": "sqlite:///none.db",
        "experiment": "mrnet_ray", "experiment_path": str(tmp_path / "ray" / "old"),
        "train_storage": str(tmp_path / "ray" / "old" / "train"), "status": "KILLED",
    }  # fmt: skip
    (run_dir / "search.json").write_text(json.dumps(record))
    err = fails_in_one_line(capsys, ["--resume", "--run-dir", str(run_dir)])
    assert str(run_dir / "search.json") in err
    assert "started by an older mrnet_ray" in err and "new --run-dir" in err
