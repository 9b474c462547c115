"""Resume without the head's disk: a search with its results in S3 (a local moto server) and
its MLflow runs on a tracking server resumes from an empty run directory, as on a new head.
A local results root that a node of a real two-node cluster cannot see stops the search in
one line before any trial."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
from fixtures.search import (
    SMALL,
    TUNE,
    client_of,
    driver_env,
    fails_in_one_line,
    free_port,
    journal_study,
    trial_runs,
    write_space,
)

from mrnet_ray.search.settings import METRIC

EPOCHS = 2


@pytest.mark.slow
def test_a_search_in_s3_resumes_from_an_empty_run_directory(
    tiny_prepared, ray_session, mlflow_server, s3_uri, tmp_path, capsys
):
    """SIGKILL the driver after its first trial; delete the run directory (search.json, the
    Optuna journal, the run-dir lock); ``--resume --storage --name`` restores both from the
    bucket, takes over the killed driver's lock there, and finishes the search."""
    run_dir, name, root = tmp_path / "run", "in-s3", s3_uri("mrnet", "shared-root")
    space = write_space(tmp_path, "{float: [1.0e-3, 1.0e-2], log: true}", epochs=EPOCHS)
    argv = [
        *TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "2",
        "--max-concurrent", "1", "--scheduler", "fifo", "--run-dir", str(run_dir),
        "--name", name, "--storage", root, "--mlflow-uri", mlflow_server.uri, *SMALL,
    ]  # fmt: skip
    env = driver_env(ray_session)
    with (tmp_path / "first.log").open("w") as log:
        driver = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 600
            while not (run_dir / "search.json").is_file() or not any(
                r.status == "FINISHED" for r in trial_runs(run_dir)
            ):
                assert driver.poll() is None and time.monotonic() < deadline, log.name
                time.sleep(0.25)
            driver.kill()
            assert driver.wait(timeout=60) == -signal.SIGKILL
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=60)
    finished = {r.trial_id for r in trial_runs(run_dir) if r.status == "FINISHED"}
    shutil.rmtree(run_dir)
    run_dir.mkdir()  # the new head's, empty

    resume = [*TUNE, "--resume", "--run-dir", str(run_dir), "--storage", root, "--name", name]
    done = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bucket = f"{root.partition('?')[0]}/{name}/mrnet_ray/"
    assert f"restored search.json and optuna.journal in {run_dir} from {bucket}" in done.stdout
    assert f"took over the lock {bucket}search.lock of search {name}: its owner, pid " in (
        done.stdout
    )
    assert "2 completed" in done.stdout

    record = json.loads((run_dir / "search.json").read_text())
    assert record["status"] == "FINISHED" and record["storage"] == root
    assert record["trials"] == {"completed": 2, "early-stopped": 0, "failed": 0, "unfinished": 0}
    study = journal_study(record)  # restored, and carried on by the resumed searcher
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and len({t.params["train.lr"] for t in complete}) == 2
    runs = [r for r in trial_runs(run_dir) if r.status != "KILLED"]  # KILLED: never saved
    assert len(runs) == 2 and {r.status for r in runs} == {"FINISHED"}
    assert finished <= {r.trial_id for r in runs}  # the first trial was not trained again
    client = client_of(run_dir)
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.run_id, METRIC))
        assert steps == list(range(1, EPOCHS + 1))
    assert not math.isnan(record["best"]["valid_track_acc"])

    # Another --run-dir cannot take the search over: its Tune state names this one.
    other = tmp_path / "other"
    line = fails_in_one_line(
        capsys, ["--resume", "--run-dir", str(other), "--storage", root, "--name", name]
    )
    assert line == (
        f"error: search {name!r} ran in --run-dir {run_dir}: resume it with that --run-dir "
        "(an empty one will do; its Tune state names the path)"
    )
    # Nor another results root than its own, once its run directory holds the record.
    elsewhere = tmp_path / "elsewhere"
    line = fails_in_one_line(
        capsys, ["--resume", "--run-dir", str(run_dir), "--storage", str(elsewhere)]
    )
    assert line == (
        f"error: the search in {run_dir} was started with --storage {root.partition('?')[0]}, "
        f"not {elsewhere}; drop --storage, or give the one it started with"
    )


# ---- a local results root on a cluster whose nodes do not share it ----------------------------

BIN = Path(sys.executable).parent  # the venv's bin, as every node of a real cluster has it
MOUNT = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs tmpfs "$0" && exec "$@"']  # fmt: skip
"""Run a command with a directory of its own at ``$0``: an empty tmpfs mounted over it in a
mount namespace of its own, as a machine's local disk holds what no other machine sees."""


def own_disk_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run([*MOUNT, str(probe), "true"], capture_output=True)
    return done.returncode == 0


def node_env() -> dict[str, str]:
    """The nodes' (and their clients') environment: token authentication with a token of
    this cluster's own, the venv activated, no address of the test session's Ray."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }


@contextlib.contextmanager
def cluster_with_a_blind_node(local: Path, logs: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A head and a second node (``ray start``, one CPU each) on this machine; the second sees
    an empty ``local`` of its own. Yields (the clients' environment, ``RAY_ADDRESS`` the
    head's; the second node's id); stops exactly these nodes (SIGTERM, then SIGKILL of what
    is left in their sessions)."""
    env, port, dashboard = node_env(), free_port(), free_port()
    temp = Path(tempfile.mkdtemp(prefix="mrn-", dir="/tmp"))  # Ray's sockets: a short path
    common = ["--block", "--num-cpus", "1", "--object-store-memory", str(200 << 20)]
    nodes = {
        "head": ["--head", "--port", str(port), "--dashboard-port", str(dashboard),
                 "--ray-client-server-port", str(free_port())],
        "blind": ["--address", f"127.0.0.1:{port}"],
    }  # fmt: skip
    procs = []
    try:
        for name, args in nodes.items():
            ports = [f"--{p}-port" for p in ("dashboard-agent-listen", "dashboard-agent-grpc",
                                            "metrics-export", "runtime-env-agent")]  # fmt: skip
            argv = [str(BIN / "ray"), "start", *common, *args, "--temp-dir", str(temp / name)]
            argv += [x for p in ports for x in (p, str(free_port()))]
            prefix = [*MOUNT, str(local)] if name == "blind" else []
            with (logs / f"ray-{name}.log").open("w") as log:
                procs.append(subprocess.Popen(
                    [*prefix, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))  # fmt: skip
        deadline = time.monotonic() + 240
        while True:
            assert all(p.poll() is None for p in procs), "a node stopped"
            assert time.monotonic() < deadline, "the nodes did not come up"
            time.sleep(2)
            listed = subprocess.run(
                [str(BIN / "ray"), "list", "nodes", "--address", f"http://127.0.0.1:{dashboard}",
                 "--format", "json", "--filter", "state=ALIVE"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            alive = json.loads(listed.stdout) if listed.stdout.startswith("[") else []
            if len(alive) == 2:
                break
        (blind,) = [n["node_id"] for n in alive if not n["is_head_node"]]
        yield env | {"RAY_ADDRESS": f"127.0.0.1:{port}"}, blind
    finally:
        for proc in procs[::-1]:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        sessions = {proc.pid for proc in procs}
        for pid in psutil.pids():
            with contextlib.suppress(OSError):
                if os.getsid(pid) in sessions:
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


CHECK = """\
import sys, ray
from mrnet_ray.search.resources import check_shared_storage
ray.init()
check_shared_storage(sys.argv[1])
print("every node sees it")
"""


@pytest.mark.slow
def test_a_local_root_that_a_node_cannot_see_stops_the_search_in_one_line(tiny_prepared, tmp_path):
    """On a real two-node cluster, one node with a disk of its own at ``--storage``: the
    search stops in one line naming the blind node, before Tune saves anything; a directory
    both nodes see passes the same check."""
    local, shared = tmp_path / "local-disk", tmp_path / "shared"
    local.mkdir()
    shared.mkdir()
    if not own_disk_works(tmp_path):
        pytest.skip("needs mount namespaces (unshare --mount) to give one node a disk of its own")
    space = write_space(tmp_path, "3.0e-3", epochs=1)
    argv = [*TUNE, "--data", str(tiny_prepared), "--space", str(space), "--num-samples", "1",
            *SMALL, "--run-dir", str(tmp_path / "run"), "--name", "blind",
            "--storage", str(local)]  # fmt: skip
    with cluster_with_a_blind_node(local, tmp_path) as (env, blind):
        refused = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=600)  # fmt: skip
        passed = subprocess.run([sys.executable, "-c", CHECK, str(shared)], env=env,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    err = refused.stderr.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err[-20:]
    assert re.match(
        rf"error: the results root {local} is a directory that 1 of the cluster's 2 nodes "
        rf"cannot see \(node [\d.]+ \({blind[:8]}\)\), ",
        errors[0],
    ), (errors[0], blind)
    assert errors[0].endswith(
        "so trials could not save or resume there: give --storage s3://BUCKET/PREFIX (or set "
        "MRNET_RAY_STORAGE), or a directory every node mounts at the same path"
    ), errors[0]
    assert "Traceback" not in refused.stderr
    assert not list(local.glob("blind/*.json")) and not list(local.glob("blind/*.pkl"))
    assert not (tmp_path / "run" / "search.json").exists()  # nothing of a search started
    assert not list(local.glob(".mrnet_ray-probe-*"))
    assert passed.returncode == 0, passed.stdout[-2000:] + passed.stderr[-2000:]
    assert "every node sees it" in passed.stdout
