"""``best`` on a real search: ranking, export, the registry's champion rule, ``predict``.

One real smoke search (the tune driver: 2 trials of a tiny MRNet, Ray Train, Optuna, MLflow in
sqlite) and one real export are shared by every test of this module.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.search import run
from safetensors.torch import load_file

from mrnet_ray import best, predict, tracking
from mrnet_ray.export import champion, evaluate
from mrnet_ray.export.bundle import ONNX, TORCHSCRIPT, WEIGHTS, export_differences, load_bundle
from mrnet_ray.inference import predict as inference
from mrnet_ray.search.record import read_record
from mrnet_ray.shards import open_prepared

# Fixed architecture but for the width; lr and epochs that fit the three tone classes.
SPACE = """\
model:
  arch: mrnet
  channels: {choice: [16, 24]}
  res2_scale: 4
  n_blocks: 2
  dilations: [2, 3]
  route_depths: [[1, 2], [1]]
  se_channels: 8
  attention_channels: 8
  embedding_dim: 16
train:
  epochs: 3
  batch_size: 4
  lr: 0.01
  warmup_fraction: 0.1
"""
NAME = "mrnet-smoke"


@pytest.fixture(scope="module")
def search(ray_session, tiny_prepared, tmp_path_factory) -> Path:
    """The run directory of a finished 2-trial search."""
    from mrnet_ray import tune as tune_cli

    root = tmp_path_factory.mktemp("search")
    (root / "space.yaml").write_text(SPACE)
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run(tune_cli.main, [
            "--data", str(tiny_prepared), "--space", str(root / "space.yaml"),
            "--num-samples", "2", "--scheduler", "fifo", "--workers", "1",
            "--cpus-per-worker", "0.4", "--run-dir", str(run_dir), "--name", "smoke",
            "--mlflow-uri", f"sqlite:///{run_dir}/mlflow.db",
        ])  # fmt: skip
    return run_dir


@pytest.fixture(scope="module")
def exported(search) -> tuple[Path, str]:
    """``best --export`` into the run directory: the bundle and what the command printed."""
    args = ["--run-dir", str(search), "--export", "--confirm", "0", "--no-final-fit",
            "--register-name", NAME]  # fmt: skip
    printed = run(best.main, args)  # the single best trial (confirmation: test_confirm.py)
    return search / "best", printed


def uri(run_dir: Path) -> str:
    return f"sqlite:///{run_dir}/mlflow.db"


def table_rows(printed: str) -> list[list[str]]:
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    rows = []
    for line in lines[start + 1 :]:
        if not line or not line[0].isdigit():
            break
        rows.append(line.split())
    return rows


@pytest.mark.slow
def test_ranking_lists_every_trial_best_first(search, exported):
    _, printed = exported
    saved = json.loads((search / "search.json").read_text())
    rows = table_rows(printed)
    assert [r[0] for r in rows] == ["1", "2"]
    accuracies = [float(r[2]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[0] == pytest.approx(saved["best"]["valid_track_acc"], abs=1e-4)
    header = printed.splitlines()[1].split()
    assert header[:6] == ["rank", "trial", "valid_track_acc", "epoch", "params", "FLOPs"]
    for row in rows:  # arch, channels, dilations, route depths, res2 scale, lr
        assert row[6:12] in (["mrnet", c, "2,3", "1-2,1", "4", "0.01"] for c in ("16", "24"))
    assert "from MLflow sqlite:" in printed


@pytest.mark.slow
def test_export_evaluates_the_best_checkpoint_once_on_test(search, exported, tiny_prepared):
    bundle_dir, printed = exported
    b = load_bundle(bundle_dir)
    lineage = b.metadata["lineage"]
    assert lineage["trial_id"] == table_rows(printed)[0][1]
    assert lineage["data_hash"] == open_prepared(tiny_prepared).content_hash
    # the winner's own checkpoint, in the Tune trial that trained it (one worker per trial)
    assert Path(lineage["checkpoint"]).parent.name == f"mrnet_trial_{lineage['trial_id']}"
    metrics = json.loads((bundle_dir / "metrics.json").read_text())
    prepared = open_prepared(tiny_prepared)
    stats, _ = evaluate.evaluate_test(b.model, prepared)  # the bundle's weights: the same numbers
    assert evaluate.held_out_metrics(stats) == pytest.approx(
        {k: v for k, v in metrics["test"].items() if k.startswith("test_")}
    )
    assert metrics["test"]["tracks"] == prepared.manifest["counts"]["test"]["tracks"]
    assert sum(r["support"] for r in metrics["per_class"].values()) == metrics["test"]["tracks"]
    assert metrics["test"]["test_track_acc"] >= 0.75  # three separable tones; chance is 1/3
    assert (bundle_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    card = (bundle_dir / "MODEL_CARD.md").read_text()
    sections = [
        "Data",
        "Split and evaluation",
        "Configuration",
        "Lineage",
        "Intended use and limits",
    ]
    assert all(f"\n## {s}\n" in card for s in sections)
    assert all(text in card for text in ("Heo et al.", "Desplanques", lineage["data_hash"]))
    # Three pure tones: the linear baseline gets every test track right, so the network can
    # only tie it, and the export says the model does not beat it, in its output and card.
    assert metrics["baseline"]["test_track_acc"] == 1.0
    assert metrics["baseline"]["margin_points"] <= 0
    assert "WARNING: the model does not beat the linear baseline" in printed
    assert "**Warning:** the model does not beat the linear baseline" in card
    assert f"registered {NAME} version 1" in printed
    assert "alias champion -> version 1" in printed


@pytest.mark.slow
def test_exports_match_pytorch(exported):
    bundle_dir, _ = exported
    b = load_bundle(bundle_dir)
    worst = export_differences(
        bundle_dir, b.model, b.feature.n_mels, batches=(2, 5), frames=(62, 23), seed=3
    )
    assert worst[TORCHSCRIPT] <= 1e-4 and worst[ONNX] <= 1e-4, worst


def trained_clips(prepared_dir: Path, audio_root: Path) -> dict[Path, str]:
    """Audio files of the training split -> their class."""
    train = open_prepared(prepared_dir).read_arrays("train")
    files = {
        p.relative_to(audio_root).with_suffix("").as_posix(): p for p in audio_root.rglob("*.*")
    }
    return {files[t]: t.split("/")[0] for t in dict.fromkeys(train.track_id)}


@pytest.mark.slow
def test_bundle_predicts_in_a_fresh_process_without_the_run_dir(
    exported, search, tiny_prepared, audio_folder, tmp_path
):
    bundle_dir, _ = exported
    moved = tmp_path / "bundle"
    shutil.copytree(bundle_dir, moved)
    clips = trained_clips(tiny_prepared, audio_folder.root)
    assert len(clips) == open_prepared(tiny_prepared).manifest["counts"]["train"]["tracks"]
    # What the bundle says in this process, with the search at hand: the reference.
    in_process = inference.open_model(str(bundle_dir))
    expected = {path: inference.predict_file(in_process, path).probabilities for path in clips}
    hidden = search.with_name("run-hidden")
    search.rename(hidden)  # nothing of the search is reachable while predict runs
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mrnet_ray.predict", str(moved), *map(str, clips), "--json"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
    finally:
        hidden.rename(search)
    assert done.returncode == 0, done.stderr
    results = {Path(r["file"]): r["top_k"] for r in json.loads(done.stdout)}
    assert set(results) == set(clips)
    labels = in_process.labels
    for path, ranked in results.items():  # the same answer, from the moved bundle alone
        assert ranked[0]["label"] == labels[int(expected[path].argmax())]
        assert ranked[0]["probability"] == pytest.approx(float(expected[path].max()), abs=1e-5)
    # and a model that learned its training clips (which exact clip a tiny run misses varies)
    right = sum(ranked[0]["label"] == clips[path] for path, ranked in results.items())
    assert right >= 0.8 * len(clips), (right, len(clips))


def register_variant(search: Path, bundle_dir: Path, name: str, worse: bool) -> str:
    """Register the exported model, or a broken copy that always says the first class, through
    champion.register (real evaluation, real MLflow); returns what it printed about the alias."""
    b = load_bundle(bundle_dir)
    model = copy.deepcopy(b.model)
    if worse:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    settings = read_record(search)
    stats, example = evaluate.evaluate_test(model, open_prepared(settings["data"]))
    lineage = {**b.metadata["lineage"], "trial_id": "worse" if worse else "trained"}
    lines = champion.register(
        uri(search), settings, search, bundle_dir, model, example, name,
        "champion", evaluate.held_out_metrics(stats), lineage,
    )  # fmt: skip
    return lines[-1]


@pytest.mark.slow
def test_champion_alias_moves_only_on_an_improvement(search, exported):
    bundle_dir, _ = exported
    lineage = load_bundle(bundle_dir).metadata["lineage"]
    trained_acc = load_bundle(bundle_dir).metadata["test_metrics"]["test_track_acc"]
    # The first holder: the export's version 1. A worse model does not take the alias.
    said = register_variant(search, bundle_dir, NAME, worse=True)
    assert said.startswith("alias champion kept on version 1")
    champion = tracking.alias_version(uri(search), NAME, "champion")
    assert champion.version == "1"
    assert float(champion.tags[tracking.TAG_TEST_ACC]) == trained_acc
    assert champion.tags[tracking.TAG_DATA_HASH] == lineage["data_hash"]
    # Another name: worse first (takes the empty alias), then the trained model beats it.
    other = f"{NAME}-order"
    assert register_variant(search, bundle_dir, other, worse=True).startswith(
        "alias champion -> version 1"
    )
    said = register_variant(search, bundle_dir, other, worse=False)
    assert said.startswith("alias champion -> version 2: test_track_acc")
    assert tracking.alias_version(uri(search), other, "champion").version == "2"


@pytest.mark.slow
def test_predict_from_the_registry(search, exported, audio_folder, capsys):
    bundle_dir, _ = exported
    clip = audio_folder.good["high"][0]
    predict.main([f"models:/{NAME}@champion", str(clip), "--json", "--mlflow-uri", uri(search)])
    (result,) = json.loads(capsys.readouterr().out)
    local = inference.predict_file(load_bundle(bundle_dir), clip)
    assert result["top_k"][0] == {
        "label": "high",
        "probability": pytest.approx(float(local.probabilities.max()), abs=2e-6),
    }
    with pytest.raises(SystemExit):
        predict.main([f"models:/{NAME}@nobody", str(clip), "--mlflow-uri", uri(search)])
    assert "not found in the registry" in capsys.readouterr().err


@pytest.mark.slow
def test_without_mlflow_ranks_from_ray_results_and_exports_unregistered(
    search, exported, tmp_path, capsys
):
    bundle_dir, printed = exported
    out = tmp_path / "offline"
    args = ["--run-dir", str(search), "--export", str(out), "--confirm", "0", "--no-final-fit",
            "--mlflow-uri", uri(tmp_path)]  # fmt: skip
    stdout = io.StringIO()
    with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(stdout):
        best.main(args)  # the bundle is written, then the exit says it is not registered
    assert e.value.code == 2
    offline, err = stdout.getvalue(), capsys.readouterr().err
    assert "is unavailable (no store file" in err
    assert "from Ray results" in offline
    assert table_rows(offline)[0][:4] == table_rows(printed)[0][:4]
    assert f"error: {out}: written but not registered" in err
    ours, theirs = load_file(out / WEIGHTS), load_file(bundle_dir / WEIGHTS)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same checkpoint


def test_run_dir_without_a_search_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        best.main(["--run-dir", str(tmp_path)])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {tmp_path / 'search.json'}: no such file")
