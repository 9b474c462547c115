"""A real two-node Ray cluster on this machine: a search submitted as a Ray job trains on both.

The nodes are what ``ray up`` starts on real machines: ``ray start --head`` and ``ray start
--address`` (Ray lets several nodes share one machine), each with one CPU and the package
installed in the environment they run from; the search goes in with ``ray job submit
--working-dir``, and the trials' results and checkpoints go to the filesystem the nodes share
(on separate machines: NFS or ``s3://``). Two Train workers of 0.6 CPU cannot
share a 1-CPU node, so every trial must place one worker on each node; the GCS records where
each ``RayTrainWorker`` actor ran.

Each node runs as ``ray start --block`` in a session of its own and gets its own temp dir, so
``ray.init()`` elsewhere on the machine never joins it, and the test stops exactly these
processes (SIGTERM, then SIGKILL of whatever is left in their sessions). ``ray stop`` is never
used: it ends every Ray instance on the machine, the test session's own included.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from mrnet_ray import tracking

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin; not resolved, which would leave the venv
RAY = str(BIN / "ray")
NODE_CPUS = 1
WORKER_CPUS = 0.6
"""Two workers of 0.6 CPU need 1.2 CPUs: more than a node has, so they must spread."""
START_TIMEOUT_S = 240
JOB_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    """Ports every node opens; the defaults are fixed numbers that another Ray on the machine
    may hold already (its dashboard agent then fails to bind and no job can be submitted)."""
    return [
        "--dashboard-agent-listen-port", str(_free_port()),
        "--dashboard-agent-grpc-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()),
        "--runtime-env-agent-port", str(_free_port()),
    ]  # fmt: skip


def _cluster_env() -> dict[str, str]:
    """The nodes' environment: the venv activated, as on a machine set up by ``ray up``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN_PATH")
    }
    return env | {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "VIRTUAL_ENV": str(BIN.parent),
        "RAY_USAGE_STATS_ENABLED": "0",
        # A token of this cluster's own, given to its nodes and to the CLI: the test neither
        # reads nor writes ~/.ray/auth_token. Worker nodes need the mode set explicitly.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        # SIGTERM would otherwise wait 30 s for the node to drain before stopping.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # The second worker of a trial starts cold on the other node (imports torch).
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
    }


@dataclass
class Cluster:
    address: str
    """``127.0.0.1:PORT`` of the head's GCS."""
    dashboard: str
    """``http://127.0.0.1:PORT``: the jobs and state API (``--address`` of the CLI)."""
    env: dict[str, str]
    nodes: dict[str, str]
    """Custom resource naming the node ('node_head', 'node_b') -> node id."""

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each ``ray start --block`` (it stops its node's processes), then SIGKILL
    anything still alive in their sessions."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    sessions = {proc.pid for proc in procs}
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) in sessions:
                os.kill(pid, signal.SIGKILL)


def _tail(paths: list[Path], lines: int = 15) -> str:
    return "\n".join(
        f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
        for p in paths
        if p.exists()
    )


@contextlib.contextmanager
def two_node_cluster(log_dir: Path) -> Iterator[Cluster]:
    """A head and a second node, one CPU each, both alive; stopped on exit."""
    env = _cluster_env()
    port, dashboard_port = _free_port(), _free_port()
    # Short: Ray's Unix sockets live under it (at most 107 characters).
    temp = Path(tempfile.mkdtemp(prefix="mrn-", dir="/tmp"))
    head_args = [
        "--head", "--port", str(port), "--resources", '{"node_head": 1}',
        "--include-dashboard", "true", "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(_free_port()),
    ]  # fmt: skip
    b_args = ["--address", f"127.0.0.1:{port}", "--resources", '{"node_b": 1}']
    procs: dict[str, subprocess.Popen] = {}
    logs: list[Path] = []
    try:
        for name, args in (("head", head_args), ("b", b_args)):
            log = log_dir / f"ray-start-{name}.log"
            logs.append(log)
            with log.open("w") as out:
                procs[name] = subprocess.Popen(
                    [RAY, "start", "--block", *args, "--num-cpus", str(NODE_CPUS),
                     "--object-store-memory", str(200 << 20), "--temp-dir", str(temp / name),
                     *_agent_ports()],
                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        cluster = Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", env, {})
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(cluster.nodes) < 2:
            dead = [name for name, proc in procs.items() if proc.poll() is not None]
            assert not dead and time.monotonic() < deadline, (
                f"nodes did not come up ({dead or 'timeout'}):\n{_tail(logs)}"
            )
            time.sleep(2)
            out = cluster.ray("list", "nodes", "--address", cluster.dashboard, "--format",
                              "json", "--filter", "state=ALIVE", "--detail")  # fmt: skip
            if out.returncode == 0 and out.stdout.startswith("["):  # else "No resource ..."
                cluster.nodes = {
                    key: node["node_id"]
                    for node in json.loads(out.stdout)
                    for key in ("node_head", "node_b")
                    if key in node["resources_total"]
                }
        yield cluster
    finally:
        _stop(list(procs.values())[::-1])
        shutil.rmtree(temp, ignore_errors=True)


def _submit(cluster: Cluster, entrypoint: list[str]) -> tuple[str, subprocess.CompletedProcess]:
    """``ray job submit`` of the repository, waiting for the job to end: (job id, the CLI's
    output). Retried while the head's job agent is still registering."""
    runtime_env = {
        "excludes": [".venv", ".git", "runs", "data"],
        # Ray Train's placement-group cleaner finds its cluster through the state API, which
        # guesses the cluster unless RAY_ADDRESS names it and fails when several Ray instances
        # share a machine (here: the test session's own). Then a worker group's CPUs can stay
        # reserved after its trial and the next trial waits forever.
        "env_vars": {"RAY_ADDRESS": cluster.address},
    }
    for _ in range(3):
        job_id = f"mrnet-multinode-{secrets.token_hex(4)}"
        out = cluster.ray(
            "job", "submit", "--address", cluster.dashboard,
            "--submission-id", job_id, "--working-dir", str(REPO),
            "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint,
            timeout=JOB_TIMEOUT_S,
        )  # fmt: skip
        if "No available agent" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    return job_id, out


def test_search_job_trains_every_trial_on_both_nodes(tiny_prepared, tmp_path):
    run_dir = tmp_path / "run"
    entrypoint = [
        "python", "mrnet_ray/tune.py", "--data", str(tiny_prepared), "--space", "smoke",
        "--num-samples", "2", "--workers", "2", "--cpus-per-worker", str(WORKER_CPUS),
        "--run-dir", str(run_dir),
    ]  # fmt: skip
    with two_node_cluster(tmp_path) as cluster:
        job_id, submitted = _submit(cluster, entrypoint)
        (tmp_path / "job.log").write_text(submitted.stdout + submitted.stderr)
        status = cluster.ray("job", "status", "--address", cluster.dashboard, job_id)
        actors = cluster.ray(
            "list", "actors", "--address", cluster.dashboard, "--format", "json", "--detail",
            "--filter", "class_name=RayTrainWorker", "--limit", "10000",
        )  # fmt: skip
    log = (submitted.stdout + submitted.stderr)[-4000:]
    assert submitted.returncode == 0, log
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status.stdout

    # Every trial's worker group (one placement group) held one worker on each node.
    assert actors.returncode == 0, actors.stderr
    groups: dict[str, set[str]] = {}
    for actor in json.loads(actors.stdout):
        groups.setdefault(actor["placement_group_id"], set()).add(actor["node_id"])
    assert len(groups) >= 2, groups
    assert all(nodes == set(cluster.nodes.values()) for nodes in groups.values()), (
        groups,
        cluster.nodes,
    )

    # The search finished, on the shared filesystem, and MLflow holds its runs.
    search = json.loads((run_dir / "search.json").read_text())
    assert search["status"] == "FINISHED"
    assert search["trials"]["failed"] == 0
    assert search["trials"]["completed"] + search["trials"]["early-stopped"] == 2
    runs = tracking.list_trial_runs(
        search["tracking_uri"], search["experiment"], search["parent_run_id"]
    )
    assert len(runs) == 2 and {r.status for r in runs} == {"FINISHED"}
    assert all(0.0 <= r.metrics["valid_track_acc"] <= 1.0 for r in runs)
    best_run = Path(search["best"]["checkpoints"])  # DDP trials: their Ray Train runs
    assert list(best_run.glob("epoch_*/state.pt")), f"no checkpoint in {best_run}"
