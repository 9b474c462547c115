"""Bundles and predict without Ray: export formats, damaged bundles, the predict CLI.

The searched, trained and registered path (``best --export``, ``models:/``) is in test_best.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.audio import CLASS_HZ, write_clip, write_garbage

from mrnet_ray import predict
from mrnet_ray.config import MRNetConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.export.bundle import (
    CONFIG,
    ONNX,
    TORCHSCRIPT,
    WEIGHTS,
    export_bundle,
    export_differences,
    load_bundle,
)
from mrnet_ray.features import AudioError, audio_to_segments
from mrnet_ray.inference import predict as inference
from mrnet_ray.nn import build_model

LABELS = tuple(CLASS_HZ)


def tiny_trial(arch: str = "mrnet", n_mels: int = 32) -> TrialConfig:
    model = MRNetConfig(
        arch=arch, n_mels=n_mels, n_classes=len(LABELS), channels=16, res2_scale=4,
        dilations=(2, 3), route_depths=((1, 2), (1,)), se_channels=8, attention_channels=8,
        embedding_dim=8,
    )  # fmt: skip
    return TrialConfig(model=model)


def trained_looking(trial: TrialConfig, seed: int = 0) -> torch.nn.Module:
    """A fresh model whose BatchNorm statistics are not the defaults (as after training),
    so exports that mishandle them would show."""
    torch.manual_seed(seed)
    model = build_model(trial.model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, tiny_feature) -> Path:
    """A bundle of an untrained tiny MRNet (read-only; copy it to change it)."""
    trial = tiny_trial(n_mels=tiny_feature.n_mels)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return export_bundle(
        out, trained_looking(trial), trial, tiny_feature, LABELS,
        metadata={"lineage": {"trial_id": "t1"}}, extra={"MODEL_CARD.md": "# tiny\n"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """One clip per class in three formats and rates, plus an undecodable file."""
    root = tmp_path_factory.mktemp("clips")
    formats = [(".wav", 22050, 1), (".flac", 44100, 2), (".ogg", 16000, 1)]
    out = {
        label: write_clip(root / f"{label}{suffix}", hz, 2.5, rate, channels, seed=i)
        for i, ((label, hz), (suffix, rate, channels)) in enumerate(
            zip(CLASS_HZ.items(), formats, strict=True)
        )
    }
    out["broken"] = write_garbage(root / "broken.wav")
    return out


def test_bundle_round_trip(bundle_dir, tiny_feature):
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(
        ["MODEL_CARD.md", CONFIG, ONNX, TORCHSCRIPT, WEIGHTS]
    )
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs
    bundle = load_bundle(bundle_dir)
    trial = tiny_trial(n_mels=tiny_feature.n_mels)
    assert (bundle.trial, bundle.feature, bundle.labels) == (trial, tiny_feature, LABELS)
    assert bundle.metadata["lineage"] == {"trial_id": "t1"}
    assert not bundle.model.training
    x = torch.randn(2, tiny_feature.n_mels, 62)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), trained_looking(trial)(x))
    assert b"pickle" not in (bundle_dir / WEIGHTS).read_bytes()[:64]  # safetensors header


@pytest.mark.parametrize("arch", ["mrnet", "ecapa", "shortchunk"])
def test_torchscript_and_onnx_match_pytorch(arch, tmp_path, tiny_feature):
    trial = tiny_trial(arch, tiny_feature.n_mels)
    model = trained_looking(trial, seed=1)
    path = export_bundle(tmp_path / arch, model, trial, tiny_feature, LABELS)
    worst = export_differences(
        path, load_bundle(path).model, tiny_feature.n_mels, batches=(1, 4), frames=(62, 17)
    )
    assert set(worst) == {TORCHSCRIPT, ONNX}
    assert all(v <= 1e-4 for v in worst.values()), worst


def test_export_replaces_a_bundle_but_no_other_directory(bundle_dir, tmp_path, tiny_feature):
    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)
    trial = tiny_trial(n_mels=tiny_feature.n_mels)
    export_bundle(out, trained_looking(trial, seed=5), trial, tiny_feature, LABELS)
    assert "lineage" not in load_bundle(out).metadata  # the new bundle, not the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no model bundle"):
        export_bundle(other, trained_looking(trial), trial, tiny_feature, LABELS)
    assert (other / "todo.txt").read_text() == "mine"


def _damage(path: Path, how: str) -> str:
    """Damage a copied bundle; returns the file the error must name."""
    match how:
        case "no weights":
            (path / WEIGHTS).unlink()
            return WEIGHTS
        case "truncated weights":
            data = (path / WEIGHTS).read_bytes()
            (path / WEIGHTS).write_bytes(data[: len(data) // 2])
            return WEIGHTS
        case "no config":
            (path / CONFIG).unlink()
            return CONFIG
        case "bad json":
            (path / CONFIG).write_text('{"format": 1, "trial": ')
            return CONFIG
        case "other model":
            config = json.loads((path / CONFIG).read_text())
            config["trial"]["model"]["channels"] = 32
            (path / CONFIG).write_text(json.dumps(config))
            return WEIGHTS
        case "bad field":
            config = json.loads((path / CONFIG).read_text())
            config["feature"]["hop_length"] = 0
            (path / CONFIG).write_text(json.dumps(config))
            return CONFIG
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["no weights", "truncated weights", "no config", "bad json", "other model", "bad field"]
)
def test_damaged_bundle_names_the_file_and_the_fix(how, bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    name = _damage(copy, how)
    with pytest.raises(UserError) as e:
        load_bundle(copy)
    message = str(e.value)
    assert message.startswith(str(copy / name))
    assert "re-export with python -m mrnet_ray.best" in message
    assert "\n" not in message


def test_predict_uses_the_preparation_frontend(bundle_dir, clips):
    bundle = load_bundle(bundle_dir)
    p = inference.predict_file(bundle, clips["mid"])
    # the code path of prepare, cut as the test split is: 1 s segments every 0.5 s
    segments = audio_to_segments(clips["mid"], bundle.feature.for_split("test"))
    with torch.no_grad():
        logits = bundle.model(torch.from_numpy(segments))
    np.testing.assert_allclose(p.segment_probabilities, torch.softmax(logits, 1), atol=1e-6)
    np.testing.assert_allclose(p.probabilities, torch.softmax(logits.mean(0), 0), atol=1e-6)
    assert p.segment_probabilities.shape == (4, len(LABELS))  # 2.5 s -> four 1 s segments


def test_predict_cli_table_json_and_segments(bundle_dir, clips, capsys):
    files = [str(clips[label]) for label in LABELS]
    predict.main([str(bundle_dir), *files, "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "segments", "1st", "2nd"]
    assert [line.split()[0] for line in lines[1:]] == files
    predict.main([str(bundle_dir), files[0], "--json", "--segments", "--top-k", "5"])
    (result,) = json.loads(capsys.readouterr().out)
    assert result["file"] == files[0] and result["segments"] == 4
    assert sorted(r["label"] for r in result["top_k"]) == sorted(LABELS)  # k capped at 3
    assert sum(r["probability"] for r in result["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert [s["start_s"] for s in result["segment_predictions"]] == [0.0, 0.5, 1.0, 1.5]


def test_bad_file_among_good_ones_is_reported_and_the_rest_predicted(bundle_dir, clips, capsys):
    with pytest.raises(SystemExit) as e:
        predict.main([str(bundle_dir), str(clips["low"]), str(clips["broken"]), str(clips["high"])])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        str(clips["low"]),
        str(clips["high"]),
    ]
    (line,) = err.splitlines()
    assert line.startswith(f"error: {clips['broken']}: cannot decode audio")


def test_unreadable_audio_cli_gives_one_line_and_status_2(bundle_dir, clips):
    """The whole CLI in a fresh process: one ``error:`` line, exit status 2, no traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "mrnet_ray.predict", str(bundle_dir), str(clips["broken"])],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: {clips['broken']}: cannot decode audio")


def test_missing_bundle_and_registry_without_store(tmp_path, clips, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        predict.main([str(tmp_path / "nothing"), str(clips["low"])])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {tmp_path / 'nothing'}: no such model bundle directory")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="needs its tracking store"):
        inference.open_model("models:/mrnet-x@champion")
    with pytest.raises(UserError, match="no store file"):
        inference.open_model("models:/mrnet-x@champion", f"sqlite:///{tmp_path}/none.db")


def test_clip_shorter_than_a_segment_follows_the_bundles_policy(bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    short = write_clip(tmp_path / "short.wav", CLASS_HZ["low"], 0.4, 16000)
    assert inference.predict_file(bundle, short).segment_probabilities.shape == (1, len(LABELS))
    skipping = dataclasses.replace(bundle, feature=bundle.feature.replace(short_clip="skip"))
    with pytest.raises(AudioError, match="shorter than one 1 s segment"):
        inference.predict_file(skipping, short)
