"""Ray Train V2 training on a real prepared directory: metrics, checkpoints, resume, CLI."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
import torch

from mrnet_ray.config import FeatureConfig, MRNetConfig, ResourcesConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.nn import build_model, model_cost
from mrnet_ray.shards import open_prepared
from mrnet_ray.train import main
from mrnet_ray.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mrnet_ray.training.loop import evaluate
from mrnet_ray.training.raytrain import make_trainer
from mrnet_ray.training.run import load_trial

METRICS = {
    "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "valid_track_acc",
    "valid_macro_f1", "lr", "train_segments", "samples_per_s", "epoch_time_s", "params", "flops",
}  # fmt: skip
TRIAL_YAML = """\
model: {channels: 16, res2_scale: 4, dilations: [2], route_depths: [[1, 2]],
        se_channels: 8, attention_channels: 8, embedding_dim: 16}
train: {epochs: 1, batch_size: 4, lr: 0.01, warmup_fraction: 0.1, time_mask: 8, n_masks: 1}
"""
# 0.4 CPU per worker: two workers, the Train controller and Ray Data's reads fit on 2 cores.
WORKERS = ["--workers", "2", "--cpus-per-worker", "0.4"]


@pytest.fixture(scope="module")
def trial_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "trial.yaml"
    path.write_text(TRIAL_YAML)
    return path


@pytest.fixture(scope="module")
def resumed(ray_session, tiny_prepared, trial_yaml, tmp_path_factory):
    """Epoch 1 through ``make_trainer``; then the CLI asks the same run for 2 epochs.

    Returns the first run's result, the run directory and the CLI's output.
    """
    storage = tmp_path_factory.mktemp("runs")
    trial, _ = load_trial(str(trial_yaml))
    resources = ResourcesConfig(num_workers=2, cpus_per_worker=0.4)
    first = make_trainer(str(tiny_prepared), trial, resources, str(storage), "tiny").fit()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--data", str(tiny_prepared), "--config", str(trial_yaml), "--epochs", "2",
              *WORKERS, "--storage", str(storage), "--name", "tiny"])  # fmt: skip
    return first, storage / "tiny", out.getvalue()


@pytest.mark.slow
def test_run_reports_every_metric_and_a_checkpoint(resumed, tiny_prepared):
    first, run, _ = resumed
    assert set(first.metrics) == METRICS
    assert first.metrics["epoch"] == 1
    assert all(math.isfinite(v) for v in first.metrics.values())
    assert first.metrics["samples_per_s"] > 0 and first.metrics["lr"] > 0
    assert first.checkpoint is not None
    assert Path(first.checkpoint.path) == run / "epoch_0001"
    state = load_checkpoint(first.checkpoint.path)
    prepared = open_prepared(tiny_prepared)
    assert state["labels"] == list(prepared.labels)
    assert state["feature"] == prepared.feature.to_dict()
    trial = TrialConfig.from_dict(state["trial"])
    assert (trial.model.n_mels, trial.model.n_classes) == (32, 3)  # taken from the data
    cost = model_cost(trial.model, prepared.feature.segment_frames)
    assert (first.metrics["params"], first.metrics["flops"]) == (cost.params, cost.flops)
    assert not any(k.startswith("module.") for k in state["model"])  # unwrapped from DDP


@pytest.mark.slow
def test_second_run_resumes_at_epoch_two(resumed, tiny_prepared):
    first, run, printed = resumed
    state = load_checkpoint(run / "epoch_0002")
    assert state["epoch"] == 2
    assert [m["epoch"] for m in state["history"]] == [1, 2]
    # epoch 1 comes from the first run's checkpoint, not from training it again
    assert state["history"][0] == first.metrics
    train_segments = open_prepared(tiny_prepared).segments("train")
    steps_per_epoch = train_segments // 2 // 4
    assert state["scheduler"]["last_epoch"] == 2 * steps_per_epoch
    assert "last (epoch 2)" in printed
    assert f"best checkpoint: {run}" in printed


@pytest.mark.slow
def test_checkpoint_reloads_to_the_reported_accuracy(resumed, tiny_prepared):
    _, run, _ = resumed
    model, _, _, labels = model_from_checkpoint(run / "epoch_0002")
    reported = load_checkpoint(run / "epoch_0002")["metrics"]
    valid = open_prepared(tiny_prepared).read_arrays("valid")
    batches = [
        {
            "mel": torch.from_numpy(valid.mel[i : i + 8].copy()),
            "label": torch.from_numpy(valid.label[i : i + 8]),
            "track_index": torch.from_numpy(valid.track_index[i : i + 8]),
        }
        for i in range(0, len(valid.label), 8)
    ]
    again = evaluate(model, batches, len(labels), torch.device("cpu")).metrics()
    for key in ("valid_acc", "valid_track_acc", "valid_macro_f1"):
        assert again[key] == pytest.approx(reported[key])
    assert again["valid_loss"] == pytest.approx(reported["valid_loss"], rel=1e-4)


@pytest.mark.slow
def test_it_learns(resumed):
    _, run, _ = resumed
    history = load_checkpoint(run / "epoch_0002")["history"]
    # three tone classes: chance is 1/3
    assert history[-1]["valid_track_acc"] >= 0.8
    assert history[-1]["train_acc"] > 0.6


@pytest.mark.slow
def test_cli_reruns_of_a_finished_or_changed_run_launch_nothing(
    resumed, tiny_prepared, trial_yaml, tmp_path, capsys
):
    _, run, _ = resumed
    args = ["--data", str(tiny_prepared), *WORKERS, "--storage", str(run.parent), "--name", "tiny"]
    main([*args, "--config", str(trial_yaml), "--epochs", "2"])
    assert "run tiny already has 2 epochs" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    other.write_text(TRIAL_YAML.replace("channels: 16", "channels: 32"))
    with pytest.raises(SystemExit):
        main([*args, "--config", str(other), "--epochs", "3"])
    assert "holds another model (channels differ)" in capsys.readouterr().err


def test_model_from_checkpoint_rejects_weights_of_another_model(tmp_path):
    small = MRNetConfig(n_mels=8, n_classes=2, channels=8, res2_scale=2, dilations=(2,),
                        route_depths=((1,),), se_channels=4, attention_channels=4,
                        embedding_dim=4)  # fmt: skip
    state = {
        "model": build_model(small).state_dict(),
        "trial": TrialConfig(model=small).to_dict(),
        "feature": FeatureConfig().to_dict(),
        "labels": ["a", "b"],
    }
    save_checkpoint(state, tmp_path / "good")
    model, trial, feature, labels = model_from_checkpoint(tmp_path / "good")
    assert (trial.model, feature, labels) == (small, FeatureConfig(), ("a", "b"))
    assert not model.training

    state["trial"] = TrialConfig(model=small.replace(channels=16)).to_dict()
    save_checkpoint(state, tmp_path / "wide")
    with pytest.raises(UserError, match=r"wide: the stored weights do not fit.*size mismatch"):
        model_from_checkpoint(tmp_path / "wide")
    del state["labels"]
    save_checkpoint(state, tmp_path / "partial")
    with pytest.raises(UserError, match=r"partial: checkpoint lacks or has a bad entry"):
        model_from_checkpoint(tmp_path / "partial")
    with pytest.raises(UserError, match="not a training checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: {channels: 16\n", r"trial.yaml:\d+: not valid YAML"),
        ("model: {chanels: 16}\n", r"trial.yaml: chanels: unknown MRNetConfig field"),
        ("train: {lr: -1}\n", r"trial.yaml: lr=-1 must be a positive number"),
        ("optimiser: {lr: 1}\n", r"trial.yaml: optimiser: unknown section"),
        ("- 1\n", r"trial.yaml: expected a mapping"),
    ],
)
def test_cli_reports_bad_configs_in_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "trial.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(tmp_path), "--config", str(config)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err), err


def test_cli_rejects_a_class_count_the_data_does_not_have(tiny_prepared, tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text("model: {n_classes: 10}\n")
    with pytest.raises(SystemExit):
        main(["--data", str(tiny_prepared), "--config", str(config)])
    assert "model.n_classes=10 but" in capsys.readouterr().err


def test_make_trainer_rejects_a_batch_larger_than_a_shard(tiny_prepared, tmp_path):
    trial = TrialConfig.from_dict({"train": {"batch_size": 10_000}})
    with pytest.raises(UserError, match="batch_size=10000 is larger than"):
        make_trainer(str(tiny_prepared), trial, ResourcesConfig(), str(tmp_path), "big")
