"""Re-prepare without losing data: a real prepare process killed with SIGKILL halfway, on the
local S3 server (the previous manifest and shards stay readable; the new ones switch in last)
and on a local disk (its staging is removed by the next run, which says so)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from fixtures.search import driver_env

from mrnet_ray import storage
from mrnet_ray.datasets import SPLITS, SplitOptions
from mrnet_ray.shards import open_prepared
from mrnet_ray.shards.job import prepare

pytestmark = pytest.mark.slow

OPTS = SplitOptions(seed=0, valid_fraction=0.2, test_fraction=0.2)


def prepare_command(root: Path, out: str, *more: str) -> list[str]:
    """The prepare CLI with the tiny feature settings (tests/fixtures/cluster.py) and OPTS."""
    return [
        sys.executable, "-m", "mrnet_ray.prepare", "--dataset", "folder", "--root", str(root),
        "--out", out, "--valid-fraction", "0.2", "--test-fraction", "0.2",
        "--sample-rate", "16000", "--n-fft", "512", "--hop-length", "256", "--n-mels", "32",
        "--segment-seconds", "1.0", *more,
    ]  # fmt: skip


def kill_when(command: list[str], env: dict, ready: Callable[[], bool]) -> None:
    """Run ``command``; SIGKILL it the moment ``ready()`` holds (it has written some shards)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not ready():
            assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no shards appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def files(uri: str) -> list[str]:
    """Every file under ``uri``, relative to it."""
    fs, base, _ = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)


def contents(uri: str) -> dict[str, np.ndarray]:
    prepared = open_prepared(uri)
    return {split: prepared.read_arrays(split).mel for split in SPLITS}


def test_killed_reprepare_on_s3_leaves_the_previous_data_readable(
    ray_session, audio_folder, tiny_feature, s3_uri, capsys
):
    uri = s3_uri("reprepare", "data/tiny")
    prepare("folder", audio_folder.root, uri, OPTS, tiny_feature)
    first = open_prepared(uri)
    before = contents(uri)
    assert first.shards.startswith("shards-")
    assert all(f == "manifest.json" or f.startswith(f"{first.shards}/") for f in files(uri))

    def new_shards() -> bool:
        return any(f.endswith(".parquet") and not f.startswith(first.shards) for f in files(uri))

    kill_when(
        prepare_command(audio_folder.root, uri, "--force"), driver_env(ray_session), new_shards
    )
    left = {f.split("/")[0] for f in files(uri)} - {"manifest.json", first.shards}
    assert len(left) == 1, left  # the killed run's shards, never named by a manifest
    survivor = open_prepared(uri)
    assert (survivor.manifest, survivor.shards) == (first.manifest, first.shards)
    for split, mel in contents(uri).items():
        np.testing.assert_array_equal(mel, before[split])
    assert survivor.ray_datasets(["train"])["train"].count() == first.segments("train")

    # A finished re-prepare switches to its own shards, removes the killed run's and keeps
    # the previous ones for readers that opened them; the next one removes those too.
    capsys.readouterr()
    prepare("folder", audio_folder.root, uri, OPTS, tiny_feature.replace(top_db=60.0))
    (orphan,) = left
    removed = f"removed {storage.join(uri, orphan)}: shards no manifest names any more"
    assert removed in capsys.readouterr().out
    second = open_prepared(uri)
    assert second.shards not in (first.shards, orphan) and second.feature.top_db == 60.0
    assert {f.split("/")[0] for f in files(uri)} == {"manifest.json", first.shards, second.shards}
    assert contents(uri)["train"].shape == before["train"].shape
    prepare("folder", audio_folder.root, uri, OPTS, tiny_feature, force=True)
    third = open_prepared(uri)
    assert {f.split("/")[0] for f in files(uri)} == {"manifest.json", second.shards, third.shards}
    for split, mel in contents(uri).items():  # the first settings again: the first data again
        np.testing.assert_array_equal(mel, before[split])


def test_sigkilled_local_prepare_leaves_no_staging_after_the_next_run(
    ray_session, audio_folder, tiny_feature, tmp_path, capsys
):
    out = tmp_path / "p"

    def staged_shards() -> bool:
        return any(tmp_path.glob("p.tmp-*/*/*.parquet"))

    kill_when(prepare_command(audio_folder.root, str(out)), driver_env(ray_session), staged_shards)
    (stale,) = tmp_path.glob("p.tmp-*")
    assert not out.exists()
    capsys.readouterr()
    prepare("folder", audio_folder.root, out, OPTS, tiny_feature)
    assert f"removed {stale}, left by an interrupted run" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert open_prepared(out).segments("train") > 0
