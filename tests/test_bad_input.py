"""Bad input through every command, as a user meets it: each case runs ``python -m
mrnet_ray.<command>`` in a fresh process on real bad files, and must end in one line
``error: ...`` that names the file or field, exit status 2, no traceback, and leave nothing
on disk (README, "When things fail").

Cases tested at the function level instead, where a subprocess would add nothing but time:

- damaged bundles in every way (no config, bad JSON, truncated weights, a bad field):
  test_predict.py::test_damaged_bundle_names_the_file_and_the_fix; armed pickles:
  test_faults.py;
- a WAV cut short after its header decodes to what it holds, on purpose:
  test_features.py::test_truncated_audio_decodes_what_is_there; one corrupt file among good
  ones is skipped by prepare (test_prepare.py) and reported by predict, which predicts the
  rest (test_predict.py::test_bad_file_among_good_ones_is_reported_and_the_rest_predicted);
- a training run resumed with another model config (its checkpoints hold another model):
  test_train.py::test_cli_reruns_of_a_finished_or_changed_run_launch_nothing (needs a
  trained run), and checkpoints whose weights do not fit their config:
  test_train.py::test_model_from_checkpoint_rejects_weights_of_another_model;
- malformed train configs: test_train.py::test_cli_reports_bad_configs_in_one_line; every
  mistake a search space can hold: test_search_space.py; tune's checks that need Ray (tracking
  server down, a trial larger than the cluster, --resume of nothing): test_tune.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.audio import CLASS_HZ, write_clip, write_garbage

from mrnet_ray.config import MRNetConfig, TrialConfig
from mrnet_ray.export.bundle import CONFIG, FORMAT, WEIGHTS


@dataclass(frozen=True)
class Inputs:
    """What a case builds on: its own empty directory and the session's fixtures."""

    dir: Path
    audio_folder: Path
    fma_root: Path
    prepared: Path
    bundle: Path


@dataclass(frozen=True)
class Case:
    argv: list[str]
    """``[command, *args]``."""
    names: str
    """The file or field the error line must name."""
    says: str
    """A phrase of the message."""
    out: Path | None = None
    """The command's output, which must not appear."""


def wav(path: Path, seconds: float = 2.0) -> Path:
    return write_clip(path, CLASS_HZ["mid"], seconds, 16000)


def header_cut(path: Path) -> Path:
    """A real WAV truncated inside its 44-byte header."""
    data = wav(path).read_bytes()
    path.write_bytes(data[:30])
    return path


# ---- prepare --------------------------------------------------------------------------------


def prepare_gtzan_without_genres(i: Inputs) -> Case:
    out = i.dir / "out"  # the folder tree: ROOT/<label>/*, no genres/ folder
    argv = ["prepare", "--dataset", "gtzan", "--root", str(i.audio_folder), "--out", str(out)]
    return Case(argv, str(i.audio_folder), "expected ROOT/genres/<genre>/", out)


def prepare_fma_without_tracks_csv(i: Inputs) -> Case:
    root = i.dir / "fma"
    shutil.copytree(i.fma_root / "fma_small", root / "fma_small")  # audio, no fma_metadata/
    out = i.dir / "out"
    argv = ["prepare", "--dataset", "fma", "--root", str(root), "--out", str(out)]
    return Case(argv, str(root / "fma_metadata" / "tracks.csv"), "not found", out)


def prepare_out_of_range_flag(i: Inputs) -> Case:
    out = i.dir / "out"
    argv = ["prepare", "--dataset", "folder", "--root", str(i.audio_folder), "--out", str(out)]
    return Case([*argv, "--n-mels", "0"], "n_mels=0", "must be >= 1", out)


def prepare_only_undecodable_audio(i: Inputs) -> Case:
    root = i.dir / "songs"  # every file bad: random bytes, 0 bytes, a header cut short
    write_garbage(root / "low" / "corrupt.wav")
    (root / "mid").mkdir()
    (root / "mid" / "empty.wav").touch()
    header_cut(root / "high" / "cut.wav")
    out = i.dir / "out"
    argv = ["prepare", "--dataset", "folder", "--root", str(root), "--out", str(out)]
    return Case([*argv, "--split-mode", "random"], str(root), "none of its 3 tracks", out)


# ---- train ----------------------------------------------------------------------------------


def train_negative_epochs(i: Inputs) -> Case:
    argv = ["train", "--data", str(i.prepared), "--epochs", "-1", "--storage", str(i.dir / "r")]
    return Case(argv, "--epochs", "epochs=-1 must be >= 1", i.dir / "r")


def train_config_of_other_features(i: Inputs) -> Case:
    config = i.dir / "trial.yaml"  # the prepared data has 32 mel bands
    config.write_text("model:\n  n_mels: 64\n  channels: 16\n")
    argv = ["train", "--data", str(i.prepared), "--config", str(config)]
    return Case([*argv, "--storage", str(i.dir / "r")], str(config), "model.n_mels=64", i.dir / "r")


# ---- tune -----------------------------------------------------------------------------------

SPACE = "model:\n  channels: {choice: [16, 24]}\ntrain:\n  epochs: 2\n  lr: %s\n"


def tune(i: Inputs, space: str, *more: str) -> list[str]:
    run = ["--run-dir", str(i.dir / "run")]
    return ["tune", "--data", str(i.prepared), "--space", space, *run, *more]


def tune_malformed_space(i: Inputs) -> Case:
    space = i.dir / "space.yaml"
    space.write_text(SPACE.replace("16, 24]}", "16, 24}") % "1.0e-3")  # an unclosed [
    return Case(tune(i, str(space)), f"{space}:2", "not valid YAML", i.dir / "run")


def tune_space_out_of_range(i: Inputs) -> Case:
    space = i.dir / "space.yaml"
    space.write_text(SPACE % "{float: [-1.0e-3, 1.0e-2]}")  # a negative learning rate
    return Case(tune(i, str(space)), "train.lr", str(space), i.dir / "run")


def tune_negative_workers(i: Inputs) -> Case:
    argv = tune(i, "smoke", "--workers", "-2")
    return Case(argv, "num_workers=-2", "must be >= 1", i.dir / "run")


# ---- best -----------------------------------------------------------------------------------


def best_malformed_record(i: Inputs) -> Case:
    run = i.dir / "run"
    run.mkdir()
    (run / "search.json").write_text('{"name": "mrnet-folder", "data": ')  # cut off mid-write
    return Case(["best", "--run-dir", str(run), "--export"], str(run / "search.json"),
                "not valid JSON", run / "best")  # fmt: skip


# ---- predict --------------------------------------------------------------------------------


def predict_audio(i: Inputs, make: Callable[[Path], Path], says: str) -> Case:
    audio = make(i.dir / "song.wav")
    return Case(["predict", str(i.bundle), str(audio)], str(audio), says)


def predict_corrupt_audio(i: Inputs) -> Case:
    return predict_audio(i, write_garbage, "cannot decode audio")


def predict_empty_audio(i: Inputs) -> Case:
    return predict_audio(i, lambda p: p.touch() or p, "empty file (0 bytes)")


def predict_header_cut_audio(i: Inputs) -> Case:
    return predict_audio(i, header_cut, "cannot decode audio")


def damaged_bundle(i: Inputs, damage: Callable[[Path], None], names: str, says: str) -> Case:
    bundle = i.dir / "bundle"
    shutil.copytree(i.bundle, bundle)
    damage(bundle)
    audio = wav(i.dir / "song.wav")
    return Case(["predict", str(bundle), str(audio)], str(bundle / names), says)


def predict_bundle_without_weights(i: Inputs) -> Case:
    return damaged_bundle(i, lambda b: (b / WEIGHTS).unlink(), WEIGHTS, "missing")


def predict_bundle_of_other_features(i: Inputs) -> Case:
    def other_features(bundle: Path) -> None:  # config.json's frontend gives 64 bands
        config = json.loads((bundle / CONFIG).read_text())
        config["feature"]["n_mels"] = 64
        (bundle / CONFIG).write_text(json.dumps(config))

    return damaged_bundle(i, other_features, CONFIG, "64 mel bands do not fit")


def predict_weights_of_another_model(i: Inputs) -> Case:
    def other_model(bundle: Path) -> None:  # weights trained with 24 channels, config says 16
        save_weights(bundle / WEIGHTS, tiny_model(channels=24))

    return damaged_bundle(i, other_model, WEIGHTS, "weights do not fit the model")


CASES = [
    prepare_gtzan_without_genres,
    prepare_fma_without_tracks_csv,
    prepare_out_of_range_flag,
    prepare_only_undecodable_audio,
    train_negative_epochs,
    train_config_of_other_features,
    tune_malformed_space,
    tune_space_out_of_range,
    tune_negative_workers,
    best_malformed_record,
    predict_corrupt_audio,
    predict_empty_audio,
    predict_header_cut_audio,
    predict_bundle_without_weights,
    predict_bundle_of_other_features,
    predict_weights_of_another_model,
]


# ---- the test -------------------------------------------------------------------------------


def tiny_model(channels: int = 16) -> MRNetConfig:
    return MRNetConfig(
        n_mels=32, n_classes=len(CLASS_HZ), channels=channels, res2_scale=2, dilations=(2,),
        route_depths=((1,),), se_channels=4, attention_channels=4, embedding_dim=4,
    )  # fmt: skip


def save_weights(path: Path, model: MRNetConfig) -> None:
    from safetensors.torch import save_file

    from mrnet_ray.nn import build_model

    save_file(build_model(model).state_dict(), str(path))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_feature) -> Path:
    """What ``predict`` reads of a bundle: config.json and the weights (of an untrained model)."""
    root = tmp_path_factory.mktemp("bundle") / "tiny"
    root.mkdir()
    save_weights(root / WEIGHTS, tiny_model())
    config = {
        "format": FORMAT,
        "trial": TrialConfig(model=tiny_model()).to_dict(),
        "feature": tiny_feature.to_dict(),
        "labels": list(CLASS_HZ),
    }
    (root / CONFIG).write_text(json.dumps(config))
    return root


def snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``paths``: (size, mtime) of files, (-1, 0) of dirs."""
    seen = {}
    for root in paths:
        for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
            st = p.stat()
            seen[str(p)] = (-1, 0) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return seen


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__.replace("_", "-"))
def test_bad_input_is_one_line_and_leaves_nothing(
    make, tmp_path, audio_folder, fma_tree, tiny_prepared, bundle, ray_session
):
    case = make(Inputs(tmp_path, audio_folder.root, fma_tree.root, tiny_prepared, bundle))
    inputs = [tmp_path] + [Path(a) for a in case.argv if a.startswith("/") and Path(a).exists()]
    before = snapshot(inputs)
    env = {
        **os.environ,
        # the session's Ray: a command that gets as far as Ray joins it in seconds
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
    }
    command, *args = case.argv
    done = subprocess.run(
        [sys.executable, "-m", f"mrnet_ray.{command}", *args], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    assert done.returncode == 2, report
    assert "Traceback" not in done.stderr, report
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), report
    assert sum(line.startswith("error: ") for line in lines) == 1, report
    assert case.names in lines[-1] and case.says in lines[-1], report
    assert case.out is None or not case.out.exists()
    assert snapshot(inputs) == before  # nothing written, nothing half-written, nothing changed
