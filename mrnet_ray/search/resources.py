"""The cluster a search runs on: joining it, what it holds, and how many trials fit at once.

A trial that trains itself holds its one worker's resources; a trial driven by Ray Train
holds ``trial_cpus`` itself while its Train workers reserve their own resources, which Tune
does not see, so the driver caps concurrency itself (:func:`default_concurrency`).

>>> trial_needs(ResourcesConfig(num_workers=2, cpus_per_worker=0.4), 0.2, "train")
{'CPU': 1.0, 'GPU': 0.0}
>>> trial_needs(ResourcesConfig(), 0.2, "tune")
{'CPU': 1.0, 'GPU': 0.0}
>>> default_concurrency({"CPU": 1.0, "GPU": 0.0}, {"CPU": 8.0}, reserve=1.0)
7
>>> default_concurrency({"CPU": 1.0, "GPU": 0.0}, {"CPU": 2.0}, reserve=0.0)
2
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import ray
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mrnet_ray.config import ResourcesConfig
from mrnet_ray.errors import UserError
from mrnet_ray.storage import process_token, write_atomic

DATA_CPU_RESERVE = 1.0
"""CPUs left free when trials stream their data: Ray Data's read tasks take one whole CPU
each, and trials whose workers hold every CPU would wait on them forever. Trials that read
the search's shared splits need no reserve."""


def init_ray() -> None:
    """Connect to the cluster (``RAY_ADDRESS``, else one ``ray start`` made here), else start
    a local one.

    A local one gets a known dashboard address in its job's environment: when Tune stops a
    trial (ASHA), Ray Train's placement-group cleaner asks the dashboard whether the trial's
    controller still lives, and on a machine running other Ray instances it cannot tell which
    dashboard is its own; the stopped trial's workers' CPUs then stay reserved and later
    trials wait for them forever.
    """
    if ray.is_initialized():
        return
    try:  # what ray.init() itself does to decide between connecting and starting
        from ray._private.services import canonicalize_bootstrap_address

        existing = canonicalize_bootstrap_address(None)
    except Exception:
        existing = "unknown"
    if existing is not None:
        ray.init()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
        # Ray Data's INFO lines (execution plans, per-epoch starts) from every trial's data
        # split would bury the trial table; RAY_DATA_LOG_LEVEL=INFO brings them back.
        "RAY_DATA_LOG_LEVEL": os.environ.get("RAY_DATA_LOG_LEVEL", "WARNING"),
    }
    ray.init(dashboard_port=port, runtime_env={"env_vars": env})


PROBE_TIMEOUT_S = 60.0
"""How long the storage probe waits for the nodes to answer."""


@ray.remote(num_cpus=0)
def _sees(path: str, token: str) -> bool:
    """Whether this node reads ``token`` in the file at ``path``."""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared_storage(storage: str) -> None:
    """A results root on a filesystem must be one every node sees: trials checkpoint there from
    whichever node runs them, and Tune and ``--resume`` read it all on the head. On a cluster
    of more than one node, a probe file written here must read back on every node (this one
    too: a driver in a container may see other files than its node); if one cannot see it (a
    local disk, not a shared mount), UserError naming ``--storage``. Nodes that do not answer
    within :data:`PROBE_TIMEOUT_S`, and nodes an autoscaler adds later, go unchecked."""
    if "://" in storage:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    token = process_token()
    probe = Path(storage) / f".mrnet_ray-probe-{token}"
    write_atomic(probe, token)
    try:
        answers = [
            _sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], False))
            .remote(str(probe), token)
            for n in nodes
        ]  # fmt: skip
        seen = ray.get(answers, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        print(f"note: not every node said within {PROBE_TIMEOUT_S:g} s whether it sees {storage}")
        return
    except ray.exceptions.RayError as e:  # a node that cannot run a task fails the trials too
        print(f"note: could not check that every node sees {storage} ({type(e).__name__})")
        return
    finally:
        probe.unlink(missing_ok=True)
    blind = [
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})"
        for n, ok in zip(nodes, seen, strict=True)
        if not ok
    ]
    if blind:
        raise UserError(
            f"the results root {storage} is a directory that {len(blind)} of the cluster's "
            f"{len(nodes)} nodes cannot see (node {', '.join(blind)}), so trials could not "
            "save or resume there: give --storage s3://BUCKET/PREFIX (or set "
            "MRNET_RAY_STORAGE), or a directory every node mounts at the same path"
        )


def trial_needs(resources: ResourcesConfig, trial_cpus: float, executor: str) -> dict[str, float]:
    """What one running trial holds: its one worker when it trains itself (``tune``), else
    its driver plus its Train workers (``train``)."""
    n = resources.num_workers
    driver = trial_cpus if executor == "train" else 0.0
    return {
        "CPU": round(driver + n * resources.cpus_per_worker, 6),
        "GPU": round(n * resources.gpus_per_worker, 6),
    }


BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
"""The cluster config ``ray up`` leaves on the head node (node types with their resources)."""


def cluster_capacity(bootstrap: Path = BOOTSTRAP_CONFIG) -> dict[str, float]:
    """The cluster's CPUs and GPUs: those up now, or more if an autoscaler may add nodes (a
    launcher cluster's GPU workers start at zero)."""
    have, most = ray.cluster_resources(), autoscaler_max(bootstrap)
    return {k: max(float(have.get(k, 0)), most.get(k, 0.0)) for k in ("CPU", "GPU")}


def autoscaler_max(bootstrap: Path = BOOTSTRAP_CONFIG) -> dict[str, float]:
    """The most CPUs and GPUs the autoscaler may reach: from the cluster config it keeps in
    Ray's GCS (autoscaler v2, KubeRay), else from ``ray up``'s config on this head node."""
    try:  # a private API, hence the broad except: no autoscaler info is no autoscaler
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception:
        found = None
    if found:
        return {k: float(found.get(k, 0)) for k in ("CPU", "GPU")}
    path = bootstrap.expanduser()
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    limit = config.get("max_workers", math.inf)
    most = {"CPU": 0.0, "GPU": 0.0}
    for name, node in (config.get("available_node_types") or {}).items():
        count = (
            1 if name == config.get("head_node_type") else min(node.get("max_workers", 0), limit)
        )
        for k in most:
            most[k] += count * float((node.get("resources") or {}).get(k, 0))
    return most


def check_feasible(needs: dict[str, float], capacity: dict[str, float]) -> None:
    """One line naming what a trial needs and what the cluster has, if it can never start."""
    short = [k for k in ("CPU", "GPU") if needs[k] > capacity.get(k, 0.0) + 1e-9]
    if short:
        want = ", ".join(f"{needs[k]:g} {k}" for k in ("CPU", "GPU"))
        have = ", ".join(f"{capacity.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))
        raise UserError(
            f"one trial needs {want} (--workers x --cpus-per-worker / --gpus-per-worker, "
            f"+ --trial-cpus under Ray Train) but the cluster has {have}; ask for less or add "
            "nodes"
        )


def default_concurrency(needs: dict[str, float], capacity: dict[str, float], reserve: float) -> int:
    """How many trials fit at once, keeping ``reserve`` CPUs free (:data:`DATA_CPU_RESERVE`
    when trials stream their data, else none); at least 1."""
    fits = [math.floor((capacity.get("CPU", 0.0) - reserve) / needs["CPU"] + 1e-9)]
    if needs["GPU"] > 0:
        fits.append(math.floor(capacity.get("GPU", 0.0) / needs["GPU"] + 1e-9))
    return max(1, min(fits))
