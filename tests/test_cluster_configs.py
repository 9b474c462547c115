"""The cluster files pass Ray's own launcher validation and carry KubeRay's required fields."""

import copy
from pathlib import Path

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


def test_rayjob_carries_the_fields_kuberay_requires():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
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
