"""The GPU check (``benchmarks/gpu_check.py``) in its CPU smoke mode, run as the GPU machine
would run it: Ray, MLflow, Optuna and soundfile absent and mrnet_ray not installed; and a
model that is not what its weights describe fails its checks and the run."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from mrnet_ray.nn import build_model

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
BARE_MACHINE = '''\
"""The GPU machine, for every Python process started with this directory on PYTHONPATH:
Ray, MLflow, Optuna and soundfile are absent and mrnet_ray is not installed."""
import sys

# None in sys.modules is how Python marks a module absent: importing it raises
# ModuleNotFoundError and importlib.util.find_spec answers None, as for one never installed.
sys.modules.update(dict.fromkeys(("ray", "mlflow", "optuna", "soundfile")))


def installed(hook):
    return getattr(hook, "__module__", "").startswith("__editable__")


sys.meta_path[:] = [f for f in sys.meta_path if not installed(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not installed(h)]
'''
PROBE = """
import importlib
for name in ("ray", "mlflow", "optuna", "soundfile", "mrnet_ray"):
    try:
        importlib.import_module(name)
        print(name)
    except ImportError:
        pass
"""


@pytest.fixture(scope="module")
def gpu_check():
    path = sys.path[:]  # the script puts the checkout first on it
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    sys.path[:] = path


def test_smoke_mode_runs_without_ray_mlflow_optuna_soundfile_or_an_install(gpu_check, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BARE_MACHINE)
    env = {**os.environ, "PYTHONPATH": str(site)}
    importable = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert importable.returncode == 0, importable.stderr
    assert importable.stdout.split() == []  # the block holds, and nothing is installed

    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["meta"]["plan"] == "smoke"
    device = result["meta"]["device"]
    names = {c["name"] for c in result["checks"] if c["ok"]}
    for arch in gpu_check.ARCHS:
        assert {
            f"{arch}: training loss goes down",
            f"{arch}: checkpoint written on {device} loads and resumes on the CPU",
            f"{arch}: evaluation on {device} matches the CPU",
            f"{arch}: TorchScript and ONNX match eager",
            f"{arch}: TorchScript on {device} matches eager there",
        } <= names
        figures = result["correctness"][arch]
        assert figures["eval_max_abs_diff"] <= figures["eval_bound"]
        assert set(figures["export_max_abs_diff"]) == {"model.ts", "model.onnx"}
    assert "imports: none of ray, mlflow, optuna, soundfile" in names

    smoke = gpu_check.SMOKE
    speeds = {(r["arch"], r["batch"], r["bf16"]): r["samples_per_s"] for r in result["training"]}
    assert set(speeds) == set(itertools.product(gpu_check.ARCHS, smoke.batches, (True, False)))
    assert min(speeds.values()) > 0
    assert [r["batch"] for r in result["feed"]] == list(smoke.feed_batches)
    assert all(r["epoch_loop_samples_per_s"] > 0 and r["ratio"] > 0 for r in result["feed"])
    assert set(result["compile"]) == set(smoke.compile_archs)
    assert all(p["status"] == "ok" and p["speedup"] > 0 for p in result["compile"].values())
    assert len(result["sections_s"]) == 4 and result["total_s"] > 0


def test_a_model_that_is_not_what_its_weights_describe_fails_the_run(
    gpu_check, monkeypatch, request, tmp_path
):
    """The model the run evaluates and exports gets a ReLU in its dropout slot, which holds no
    weights, as code changed after training would: the checkpoint cannot show it, but its
    evaluation no longer matches the CPU's and its export no longer matches the model its
    weights rebuild, and the run exits 1."""

    def changed(cfg):
        model = build_model(cfg)
        model.dropout = nn.ReLU()
        return model

    request.addfinalizer(partial(torch.set_num_threads, torch.get_num_threads()))  # smoke: 1
    monkeypatch.setattr(gpu_check, "build_model", changed)
    monkeypatch.setattr(gpu_check, "ARCHS", ("mrnet",))  # one architecture shows it
    monkeypatch.setattr(gpu_check, "SMOKE", dataclasses.replace(gpu_check.SMOKE, compile_archs=()))
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--smoke", "--device", "cpu", "--json", str(out)]) == 1
    result = json.loads(out.read_text())
    failed = [c["name"] for c in result["checks"] if not c["ok"]]
    # The import check fails here too: the suite's fixtures hold Ray in this process.
    assert [name for name in failed if not name.startswith("imports:")] == [
        "mrnet: evaluation on cpu matches the CPU",
        "mrnet: TorchScript and ONNX match eager",
    ]
    assert not result["ok"]
