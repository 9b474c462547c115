"""Injected faults: armed pickles in checkpoints and bundles; arbitrary audio lengths, rates
and segment settings through the frontend; a training worker killed mid-run."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mrnet_ray import features
from mrnet_ray.config import FeatureConfig, MRNetConfig, ResourcesConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.export.bundle import CONFIG, FORMAT, TORCHSCRIPT, WEIGHTS, load_bundle
from mrnet_ray.nn import build_model
from mrnet_ray.training.checkpoint import STATE_FILE, load_checkpoint, model_from_checkpoint

TINY = MRNetConfig(
    n_mels=8, n_classes=2, channels=8, res2_scale=2, dilations=(2,), route_depths=((1,),),
    se_channels=4, attention_channels=4, embedding_dim=4,
)  # fmt: skip


class Armed:
    """Unpickling this creates ``marker``: stands for any code a hostile pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class Opaque:
    """A harmless custom object: still no tensor or plain value, so it must be refused."""


def _state(extra: object) -> dict:
    """A well-formed checkpoint state with one hostile or foreign value tucked in."""
    return {
        "model": build_model(TINY).state_dict(),
        "trial": TrialConfig(model=TINY).to_dict(),
        "feature": FeatureConfig(n_mels=8).to_dict(),
        "labels": ["a", "b"],
        "history": [{"epoch": 1, "note": extra}],
    }


def _write(path: Path, obj: object, how: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "torch.save":
        torch.save(obj, path)
    elif how == "torch.save legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch, on the pickle.dump file
@pytest.mark.parametrize("how", ["torch.save", "torch.save legacy", "pickle.dump"])
def test_armed_checkpoint_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    _write(ckpt / STATE_FILE, _state(Armed(marker)), how)
    for load in (load_checkpoint, model_from_checkpoint):
        with pytest.raises(UserError) as e:
            load(ckpt)
        message = str(e.value)
        assert message.startswith(f"{ckpt / STATE_FILE}: ")
        assert "\n" not in message and "weights_only" not in message  # no advice to unlock it
        assert not marker.exists()
    # the file really is armed: a plain unpickle runs the payload
    if how == "pickle.dump":
        pickle.loads((ckpt / STATE_FILE).read_bytes())
    else:
        torch.load(ckpt / STATE_FILE, weights_only=False)
    assert marker.exists()


def test_checkpoint_with_a_custom_object_is_refused_and_names_it(tmp_path):
    _write(tmp_path / STATE_FILE, _state(Opaque()), "torch.save")
    with pytest.raises(
        UserError, match=r"state\.pt: refused: .*GLOBAL test_faults\.Opaque was not"
    ):
        model_from_checkpoint(tmp_path)


def _bundle(root: Path) -> Path:
    """A minimal bundle: config.json and safetensors weights of the tiny model."""
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    save_file(build_model(TINY).state_dict(), str(root / WEIGHTS))
    config = {
        "format": FORMAT,
        "trial": TrialConfig(model=TINY).to_dict(),
        "feature": FeatureConfig(n_mels=8).to_dict(),
        "labels": ["a", "b"],
    }
    (root / CONFIG).write_text(json.dumps(config))
    return root


def test_bundle_load_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"
    root = _bundle(tmp_path / "bundle")
    for name in (TORCHSCRIPT, "model.pt", "model.pkl"):  # armed files beside the real ones
        _write(root / name, Armed(marker), "torch.save")
    bundle = load_bundle(root)
    assert bundle.labels == ("a", "b") and not marker.exists()

    _write(root / WEIGHTS, build_model(TINY).state_dict() | {"x": Armed(marker)}, "torch.save")
    with pytest.raises(UserError) as e:  # pickled weights under the safetensors name
        load_bundle(root)
    assert str(e.value).startswith(f"{root / WEIGHTS}: unreadable safetensors file")
    assert "\n" not in str(e.value)
    assert not marker.exists()
    torch.load(root / TORCHSCRIPT, weights_only=False)  # the planted files really are armed
    assert marker.exists()


RATES = (8000, 16000, 22050, 44100, 48000)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(
    seconds=st.floats(0.05, 12.0),
    file_rate=st.sampled_from(RATES),
    rate=st.sampled_from(RATES),
    hop=st.sampled_from((64, 128, 256, 512)),
    segment_seconds=st.floats(0.05, 4.0),
    hop_seconds=st.floats(0.02, 4.0),
    short_clip=st.sampled_from(("pad", "skip")),
)
def test_segment_count_follows_the_documented_policy(
    seconds, file_rate, rate, hop, segment_seconds, hop_seconds, short_clip
):
    try:
        cfg = FeatureConfig(
            sample_rate=rate, n_fft=2 * hop, hop_length=hop, n_mels=8,
            segment_seconds=segment_seconds, segment_hop_seconds=hop_seconds,
            short_clip=short_clip,
        )  # fmt: skip
    except ValueError:  # fewer than 8 frames per segment: the config itself is refused
        assume(False)
    samples = max(1, round(seconds * file_rate))
    rng = np.random.default_rng(samples)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.wav"
        sf.write(path, (0.1 * rng.standard_normal(samples)).astype(np.float32), file_rate)
        wave = features.load_audio(path, rate)
        segs = features.audio_to_segments(path, cfg)
    # resampling gives ceil(samples * rate / file_rate) (torchaudio rounds in float32: +-1)
    assert abs(len(wave) - math.ceil(samples * rate / file_rate)) <= 1
    frames = 1 + len(wave) // hop  # centred STFT frames
    width, step = cfg.segment_frames, cfg.segment_hop_frames
    expected = {"pad": 1, "skip": 0}[short_clip]  # shorter than one segment
    if frames >= width:
        expected = (frames - width) // step + 1  # a trailing partial window is dropped
    assert segs.shape == (expected, 8, width)  # (n_segments, n_mels, segment_frames)
    assert segs.dtype == np.float32 and np.isfinite(segs).all()


@pytest.mark.slow
def test_worker_killed_mid_run_resumes_from_the_last_checkpoint(
    ray_session, tiny_prepared, tmp_path
):
    """SIGKILL one DDP worker once epoch 1 is checkpointed: Ray Train restarts the group
    (max_failures=1) and the loop continues from that checkpoint to the last epoch."""
    from ray.util.state import list_actors

    from mrnet_ray.training.raytrain import make_trainer

    model = {"channels": 8, "res2_scale": 2, "dilations": [2], "route_depths": [[1]],
             "se_channels": 4, "attention_channels": 4, "embedding_dim": 4}  # fmt: skip
    trial = TrialConfig.from_dict({"model": model, "train": {"epochs": 3, "batch_size": 4}})
    resources = ResourcesConfig(num_workers=2, cpus_per_worker=0.4)
    trainer = make_trainer(str(tiny_prepared), trial, resources, str(tmp_path), "killed")
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the test's thread below
            outcome["error"] = e

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    run, deadline = tmp_path / "killed", time.monotonic() + 420  # minutes on a loaded machine
    pids: list[int] = []
    gcs = ray_session.get_runtime_context().gcs_address  # other Ray instances may run here
    while len(pids) < 2:  # the workers, found before epoch 1 ends so the kill is prompt
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        pids = [a.pid for a in list_actors(address=gcs, filters=alive) if a.pid]
        time.sleep(0.5)
    # Kill once the controller has registered epoch 1 (its snapshot names the checkpoint);
    # the file alone appears earlier, and a kill then rightly restarts from scratch.
    snapshot = run / "checkpoint_manager_snapshot.json"
    while not (snapshot.exists() and "epoch_0001" in snapshot.read_text()):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.05)
    os.kill(pids[-1], signal.SIGKILL)
    done_at_kill = sorted(p.name for p in run.glob("epoch_*"))
    epoch_one = load_checkpoint(run / "epoch_0001")["metrics"]
    thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not thread.is_alive(), "fit did not finish after the kill"
    if "error" in outcome:
        raise outcome["error"]

    assert "epoch_0003" not in done_at_kill  # the kill landed mid-run
    result = outcome["result"]
    assert result.metrics["epoch"] == 3
    state = load_checkpoint(run / "epoch_0003")
    assert [m["epoch"] for m in state["history"]] == [1, 2, 3]
    # epoch 1 (its measured time included) comes from the checkpoint, not from a rerun
    assert state["history"][0] == epoch_one
    assert not psutil.pid_exists(pids[-1])
