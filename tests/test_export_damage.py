"""``best --export`` on a damaged search: a truncated checkpoint, MLflow gone at export time.

One real finished search (2 trials of a tiny MRNet, sqlite MLflow) is shared by the tests; a
test that damages a file puts it back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.search import free_port, run

from mrnet_ray import best, ranking
from mrnet_ray.export.bundle import load_bundle
from mrnet_ray.export.checkpoints import kept_checkpoints
from mrnet_ray.search.record import read_record, trial_location
from mrnet_ray.training.checkpoint import STATE_FILE

SPACE = """\
model:
  arch: mrnet
  channels: 16
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
  lr: {choice: [0.01, 0.003]}
  warmup_fraction: 0.1
"""


@pytest.fixture(scope="module")
def search(ray_session, tiny_prepared, tmp_path_factory) -> Path:
    """The run directory of a finished 2-trial search."""
    from mrnet_ray import tune as tune_cli

    root = tmp_path_factory.mktemp("damage")
    (root / "space.yaml").write_text(SPACE)
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run(tune_cli.main, [
            "--data", str(tiny_prepared), "--space", str(root / "space.yaml"),
            "--num-samples", "2", "--scheduler", "fifo", "--workers", "1",
            "--cpus-per-worker", "0.4", "--run-dir", str(run_dir), "--name", "damage",
            "--mlflow-uri", f"sqlite:///{run_dir}/mlflow.db",
        ])  # fmt: skip
    return run_dir


def export_args(search: Path, out: Path, *more: str) -> list[str]:
    return [
        "--run-dir",
        str(search),
        "--export",
        str(out),
        "--confirm",
        "0",
        "--no-final-fit",
        *more,
    ]


@pytest.mark.slow
def test_a_truncated_best_checkpoint_is_skipped_and_the_next_best_exported(
    search, tmp_path, capsys
):
    record = read_record(search)
    trials = [
        d.name.removeprefix("mrnet_trial_")
        for d in Path(record["experiment_path"]).glob("mrnet_trial_*")
    ]
    assert len(trials) == 2, trials
    kept, intact = {}, {}
    for trial in trials:  # each trial's best checkpoint cut short: ties can pick either trial
        ranked = ranking.ranked(
            kept_checkpoints(trial_location(record, trial)), "valid_track_acc", lambda p: p[1]
        )
        assert len(ranked) >= 2, ranked  # a next best to fall back on
        kept[trial] = ranked
        state = Path(ranked[0][0].path) / STATE_FILE
        intact[state] = state.read_bytes()
        state.write_bytes(intact[state][: len(intact[state]) // 3])  # a torn upload, a full disk
    try:
        printed = run(best.main, export_args(search, tmp_path / "b"))
    finally:
        for state, data in intact.items():
            state.write_bytes(data)
    err = capsys.readouterr().err
    winner = load_bundle(tmp_path / "b").metadata["lineage"]["trial_id"]
    state = Path(kept[winner][0][0].path) / STATE_FILE
    assert f"note: skipping checkpoint {state.parent}: {state}: unreadable checkpoint" in err
    lineage = load_bundle(tmp_path / "b").metadata["lineage"]
    assert lineage["checkpoint"] == str(Path(kept[winner][1][0].path))
    assert f"exporting trial {winner}: checkpoint {kept[winner][1][0].path}" in printed


@pytest.mark.slow
def test_mlflow_down_at_export_writes_the_bundle_then_exits_2_saying_how_to_register(
    search, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a dead port fails at once
    out = tmp_path / "offline"
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit) as e:
        run(best.main, export_args(search, out, "--mlflow-uri", dead))
    assert e.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: {out}: written but not registered in MLflow")
    assert "run the same `best --export` again to register it" in line
    assert load_bundle(out).labels == ("high", "low", "mid")  # the whole bundle, loadable
