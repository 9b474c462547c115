"""Object storage end to end on a local S3 server (moto): prepared shards, a training run and a
search whose data, checkpoints and Ray results all live in the bucket, and the export of the
search's winner from there.

The store is named with pyarrow's URI options (``s3://bucket/key?endpoint_override=...``),
which every path join must keep at the end; on a cluster a plain ``s3://`` URI and
``AWS_ENDPOINT_URL`` on every node do the same (pyarrow reads it).
"""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest
import ray.train

from mrnet_ray import storage
from mrnet_ray.best import main as best_main
from mrnet_ray.datasets import SplitOptions
from mrnet_ray.shards import open_prepared
from mrnet_ray.shards.job import prepare
from mrnet_ray.train import main as train_main
from mrnet_ray.training.checkpoint import model_from_checkpoint
from mrnet_ray.tune import main as tune_main

pytestmark = pytest.mark.slow

BUCKET = "mrnet"
TRIAL_YAML = """\
model: {channels: 16, res2_scale: 4, dilations: [2], route_depths: [[1, 2]],
        se_channels: 8, attention_channels: 8, embedding_dim: 16}
train: {epochs: 2, batch_size: 8}
"""
WORKERS = ["--workers", "2", "--cpus-per-worker", "0.4"]


def _files(uri: str) -> list[str]:
    """Every file under ``uri``, relative to it."""
    fs, base, _ = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)


@pytest.fixture(scope="module")
def s3_prepared(ray_session, audio_folder, tiny_feature, s3_uri) -> str:
    """The folder tree prepared straight into the bucket."""
    opts = SplitOptions(seed=0, valid_fraction=0.2, test_fraction=0.2)
    return prepare("folder", audio_folder.root, s3_uri(BUCKET, "prepared/tiny"), opts, tiny_feature)


def test_prepared_shards_are_in_the_bucket(s3_prepared):
    files = _files(s3_prepared)
    assert "manifest.json" in files
    prepared = open_prepared(s3_prepared)
    for split in ("train", "valid", "test"):  # under the shard prefix the manifest names
        shards = f"{prepared.shards}/{split}/"
        assert any(f.startswith(shards) and f.endswith(".parquet") for f in files), split
    assert prepared.path == s3_prepared and prepared.segments("train") > 0


def test_training_reads_and_checkpoints_in_the_bucket(s3_prepared, s3_uri, tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text(TRIAL_YAML)
    runs = s3_uri(BUCKET, "train")
    args = ["--data", s3_prepared, "--config", str(config), *WORKERS, "--storage", runs,
            "--name", "tiny"]  # fmt: skip
    train_main(args)
    run = storage.join(runs, "tiny")
    printed = capsys.readouterr().out
    assert any(
        f"best checkpoint: {storage.join(run, f'epoch_000{e}')}\n" in printed for e in (1, 2)
    )
    files = _files(run)
    assert {"epoch_0001/state.pt", "epoch_0002/state.pt"} <= set(files), files
    result = ray.train.Result.from_path(run)
    assert result.metrics["epoch"] == 2
    with result.checkpoint.as_directory() as directory:
        _, trial, feature, labels = model_from_checkpoint(directory)
    prepared = open_prepared(s3_prepared)
    assert (feature, labels) == (prepared.feature, prepared.labels)
    assert trial.train.epochs == 2 and trial.model.n_classes == len(labels)

    # The same command again finds the finished run in the bucket instead of retraining.
    train_main(args)
    assert "run tiny already has 2 epochs" in capsys.readouterr().out


def test_search_keeps_results_and_checkpoints_in_the_bucket(
    s3_prepared, s3_uri, tmp_path, monkeypatch, capsys
):
    """The results root from ``MRNET_RAY_STORAGE``, as the cluster configs set it."""
    root = s3_uri(BUCKET, "search")
    monkeypatch.setenv("MRNET_RAY_STORAGE", root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    tune_main(["--data", s3_prepared, "--space", "smoke", "--num-samples", "2", *WORKERS,
               "--run-dir", str(run_dir)])  # fmt: skip

    search = json.loads((run_dir / "search.json").read_text())
    experiment = storage.join(root, search["name"])
    assert search["status"] == "FINISHED" and search["trials"]["failed"] == 0
    assert (search["data"], search["storage"]) == (s3_prepared, root)
    assert search["executor"] == "train"  # two workers per trial: DDP through Ray Train
    assert search["experiment_path"] == experiment
    assert not (run_dir / "ray").exists(), "Ray results went to the run dir, not the bucket"
    files = _files(experiment)
    assert "tuner.pkl" in files
    assert any(f.startswith("experiment_state-") for f in files), files
    trials = {f.split("/")[1] for f in files if f.startswith("train/")}
    assert len(trials) == 2, files
    for trial in trials:
        assert any(f.startswith(f"train/{trial}/epoch_") and f.endswith("/state.pt") for f in files)
    best = search["best"]
    assert best["checkpoints"] == storage.join(experiment, "train", best["trial_id"])  # DDP

    # `best` takes the winner's checkpoint from the bucket and exports it.
    capsys.readouterr()
    best_main(["--run-dir", str(run_dir), "--export", "--confirm", "0", "--no-final-fit"])
    exported = capsys.readouterr().out
    path, _, query = experiment.partition("?")
    line = next(x for x in exported.splitlines() if x.startswith("exporting trial "))
    assert f"checkpoint {path}/train/" in line and "/epoch_000" in line and f"?{query} (" in line
    assert (run_dir / "best" / "model.safetensors").is_file()
