"""The cluster files pass Ray's own launcher validation and carry KubeRay's required fields,
and every one starts Ray with token authentication, the token kept out of the file, and
reaches MLflow only through localhost or an authenticating server."""

import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import ray
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _validate(config: dict) -> dict:
    """Ray's path for `ray up`: fill defaults for the provider, then check the JSON schema."""
    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


@pytest.mark.parametrize("name", ["gpu.yaml", "local.yaml"])
def test_launcher_config_passes_ray_validation(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    full = _validate(config)
    assert full["cluster_name"].startswith("mrnet-ray")
    setup = " ".join(full["setup_commands"])
    assert "constraints.txt" in setup and "-e " in setup, "every node installs the project"
    assert "MLFLOW_TRACKING_URI" in setup and "MRNET_RAY_STORAGE" in setup


def test_gpu_config_pins_the_image_to_our_ray_version():
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    head = config["available_node_types"][config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "head has no GPU"
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0, "autoscales"


def test_validation_is_real():
    config = yaml.safe_load((CLUSTER / "gpu.yaml").read_text())
    config["available_node_types"]["head"]["bogus_field"] = 1
    with pytest.raises(ValidationError, match="bogus_field"):
        _validate(config)


def _rayjob() -> tuple[dict, dict]:
    """The RayJob and the NetworkPolicy of ``rayjob.yaml``."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text())}
    assert set(docs) == {"RayJob", "NetworkPolicy"}
    return docs["RayJob"], docs["NetworkPolicy"]


def test_rayjob_carries_the_fields_kuberay_requires():
    job, _ = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "mrnet_ray.tune" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    # Required (no omitempty) in KubeRay's ray.io/v1 types: HeadGroupSpec.{rayStartParams,
    # template}; WorkerGroupSpec.{groupName, minReplicas, maxReplicas, rayStartParams, template}.
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, key
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert "MLFLOW_TRACKING_URI" in env


TOKEN_VALUE = re.compile(r"RAY_AUTH_TOKEN=|\b[0-9a-f]{32,}\b")
"""A token written into a file: a RAY_AUTH_TOKEN value, or a long hex string."""


def launcher_problems(config: dict) -> list[str]:
    """What keeps a launcher config from starting every node with token authentication and
    reaching MLflow only through localhost or an authenticating server; empty when all is well."""
    problems = []
    token_at = "$HOME/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        if not starts:
            problems.append(f"{key}: no ray start")
        for command in starts:
            before = command.split("ray start")[0]
            if "RAY_AUTH_MODE=token" not in before:
                problems.append(f"{key}: ray start without RAY_AUTH_MODE=token")
            if f"RAY_AUTH_TOKEN_PATH={token_at}" not in before:
                problems.append(f"{key}: ray start without RAY_AUTH_TOKEN_PATH={token_at}")
        if any("--dashboard-host=0.0.0.0" in c for c in starts):
            problems.append(f"{key}: dashboard open to the network")
    mounts = {
        remote.replace("/home/ray", "~"): local for remote, local in config["file_mounts"].items()
    }
    source = mounts.get("~/.ray/auth_token", "")
    if not source.startswith("~/"):
        problems.append("file_mounts: no ~/.ray/auth_token from a file of the user's")
    setup = " ".join(config["setup_commands"])
    if "export RAY_AUTH_MODE=token" not in setup:
        problems.append("setup_commands: drivers on the head are not in token mode")
    text = yaml.safe_dump(config)
    if TOKEN_VALUE.search(text):
        problems.append("a token value is written in the file")
    uri = re.search(r"MLFLOW_TRACKING_URI=(\S+?)'", setup)
    parts = urlsplit(uri.group(1) if uri else "")
    if parts.username or parts.password:
        problems.append("MLFLOW_TRACKING_URI carries credentials")
    local = parts.hostname in ("127.0.0.1", "localhost")
    authenticated = parts.scheme == "https" and "~/.mlflow/credentials" in mounts
    if not (local or authenticated):
        problems.append(
            f"MLflow at {parts.geturl()!r}: neither localhost nor an authenticating server"
        )
    return problems


@pytest.mark.parametrize("name", ["gpu.yaml", "local.yaml"])
def test_launcher_configs_start_every_node_with_token_auth(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    assert launcher_problems(config) == []
    # and the check sees each hole: auth dropped, a token in the file, MLflow on the LAN
    open_head = copy.deepcopy(config)
    open_head["head_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token", "") for c in config["head_start_ray_commands"]
    ]
    assert launcher_problems(open_head) == [
        "head_start_ray_commands: ray start without RAY_AUTH_MODE=token"
    ]
    inline = copy.deepcopy(config)
    inline["setup_commands"].append("echo 'export RAY_AUTH_TOKEN=" + "ab" * 32 + "' >> ~/.bashrc")
    assert launcher_problems(inline) == ["a token value is written in the file"]
    lan = copy.deepcopy(config)
    lan["setup_commands"] = [
        re.sub(r"MLFLOW_TRACKING_URI=\S+?'", "MLFLOW_TRACKING_URI=http://192.0.2.10:5000'", c)
        for c in config["setup_commands"]
    ]
    assert launcher_problems(lan) == [
        "MLflow at 'http://192.0.2.10:5000': neither localhost nor an authenticating server"
    ]


def rayjob_problems(job: dict, policy: dict) -> list[str]:
    """What keeps the RayJob from token authentication, a closed network and MLflow
    credentials from a Secret; empty when all is well."""
    problems = []
    cluster = job["spec"]["rayClusterSpec"]
    auth = cluster.get("authOptions") or {}
    if auth.get("mode") != "token" or not auth.get("secretName"):
        problems.append("authOptions: not token mode from a Secret")
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    labels = [g["template"].get("metadata", {}).get("labels", {}) for g in groups]
    containers = [c for g in groups for c in g["template"]["spec"]["containers"]]
    if any(p["containerPort"] == 10001 for c in containers for p in c.get("ports", [])):
        problems.append("the Ray Client port 10001 is exposed")
    for c in containers:
        for env in c.get("env", []):
            secret = "AUTH_TOKEN" in env["name"] or "PASSWORD" in env["name"]
            if secret and "valueFrom" not in env:
                problems.append(f"{env['name']}: a value in the file, not from a Secret")
    if TOKEN_VALUE.search(yaml.safe_dump(job)):
        problems.append("a token value is written in the file")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    if not all(selected.items() <= group.items() for group in labels):
        problems.append("NetworkPolicy: does not select every node of the cluster")
    if "Ingress" not in policy["spec"].get("policyTypes", []):
        problems.append("NetworkPolicy: does not restrict ingress")
    for rule in policy["spec"].get("ingress", []):
        sources = rule.get("from", [])
        own = sources == [{"podSelector": {"matchLabels": selected}}]
        dashboard_only = [p.get("port") for p in rule.get("ports", [])] == [8265]
        if not sources or any("ipBlock" in s for s in sources):
            problems.append("NetworkPolicy: a rule admits any address")
        elif not (own or dashboard_only):
            problems.append(f"NetworkPolicy: {sources} reach more than the dashboard")
    return problems


def test_rayjob_authenticates_and_admits_only_its_own_pods():
    job, policy = _rayjob()
    assert rayjob_problems(job, policy) == []
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert not urlsplit(env["MLFLOW_TRACKING_URI"]).password
    head_env = {
        e["name"]
        for e in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][
            0
        ]["env"]
    }
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= head_env
    # and the check sees each hole
    no_auth = copy.deepcopy(job)
    del no_auth["spec"]["rayClusterSpec"]["authOptions"]
    assert rayjob_problems(no_auth, policy) == ["authOptions: not token mode from a Secret"]
    client = copy.deepcopy(job)
    head = client["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["ports"].append({"containerPort": 10001, "name": "client"})
    assert rayjob_problems(client, policy) == ["the Ray Client port 10001 is exposed"]
    wide = copy.deepcopy(policy)
    wide["spec"]["ingress"][1].pop("ports")
    assert len(rayjob_problems(job, wide)) == 1
    anyone = copy.deepcopy(policy)
    anyone["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    assert rayjob_problems(job, anyone) == ["NetworkPolicy: a rule admits any address"]
