"""The registered model: its pyfunc flavor (in process and behind ``mlflow models serve``), the
weights' sha256 that ``predict models:/...`` checks, and the alias re-check of concurrent
exports. A real sqlite MLflow store; the model is registered through ``champion.register``."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from fixtures.audio import CLASS_HZ, write_clip, write_garbage
from mlflow.tracking import MlflowClient

from mrnet_ray import predict
from mrnet_ray.errors import UserError
from mrnet_ray.export import champion
from mrnet_ray.export.bundle import WEIGHTS, load_bundle, weights_sha256
from mrnet_ray.inference import predict as inference
from mrnet_ray.tracking import TAG_DATA_HASH, TAG_TEST_ACC, alias_version, register_version
from mrnet_ray.tracking.registry import TAG_WEIGHTS_SHA256

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-clips")
    formats = [(".wav", 22050, 1), (".mp3", 44100, 2), (".flac", 16000, 1)]
    out = {
        label: write_clip(root / f"{label}{suffix}", hz, 2.5, rate, channels, seed=i)
        for i, ((label, hz), (suffix, rate, channels)) in enumerate(
            zip(CLASS_HZ.items(), formats, strict=True)
        )
    }
    out["garbage"] = write_garbage(root / "garbage.wav")
    return out


@pytest.fixture
def tracking_env(registered, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.uri)
    mlflow.set_tracking_uri(registered.uri)
    yield registered
    mlflow.set_tracking_uri(None)


def expected(bundle_dir: Path, clip: Path, k: int = 3) -> dict:
    bundle = load_bundle(bundle_dir)
    return inference.answer(inference.predict_file(bundle, clip), bundle.labels, k)


def test_pyfunc_predicts_on_bytes_and_on_paths_as_predict_does(tracking_env, clips):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{tracking_env.name}@champion")
    labels = list(CLASS_HZ)
    on_bytes = model.predict(
        pd.DataFrame({"audio": [clips[x].read_bytes() for x in [*labels, "garbage"]]}),
        params={"top_k": 2},
    )
    on_paths = model.predict(pd.DataFrame({"path": [str(clips[x]) for x in labels]}))
    for i, label in enumerate(labels):
        want = expected(tracking_env.bundle, clips[label])
        for row, k in [(on_bytes.iloc[i], 2), (on_paths.iloc[i], 3)]:
            assert row["error"] is None
            assert row["label"] == want["label"] == label
            assert row["prob"] == pytest.approx(want["prob"], abs=1e-5)
            assert [r["label"] for r in row["top_k"]] == [r["label"] for r in want["top_k"][:k]]
            assert row["segments"] == want["segments"]
    bad = on_bytes.iloc[3]
    assert bad["label"] is None and bad["error"].startswith("row 3: cannot decode audio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_an_audio_request(registered, clips, tmp_path):
    port = free_port()
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": registered.uri, "PYTHONWARNINGS": "ignore",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # its uvicorn
    }  # fmt: skip
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m",
               f"models:/{registered.name}@champion", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            ping = f"http://127.0.0.1:{port}/ping"
            with contextlib.suppress(OSError), urllib.request.urlopen(ping, timeout=5) as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(1)
        clip = clips["mid"]
        payload = {
            "dataframe_split": {
                "columns": ["audio"],
                "data": [[base64.b64encode(clip.read_bytes()).decode()]],
            },
            "params": {"top_k": 2},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as r:
            (row,) = json.loads(r.read())["predictions"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    want = expected(registered.bundle, clip, 2)
    assert row["label"] == want["label"] == "mid"
    assert row["prob"] == pytest.approx(want["prob"], abs=1e-5)
    assert [r["label"] for r in row["top_k"]] == [r["label"] for r in want["top_k"]]
    assert row["error"] is None


def _weights_under(registered, folder: str) -> Path:
    """The weights file stored under an artifact folder (a run's or a logged model's id)."""
    (path,) = [p for p in registered.run_dir.rglob(WEIGHTS) if folder in p.parts]
    return path


@contextlib.contextmanager
def tampered(path: Path):
    """``path`` with one byte of its last kilobyte flipped, restored afterwards."""
    saved = path.with_name(path.name + ".orig")
    shutil.copy2(path, saved)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        yield
    finally:
        shutil.move(saved, path)


def test_the_version_carries_the_weights_sha256(registered):
    mv = MlflowClient(registered.uri).get_model_version(registered.name, "1")
    assert mv.tags[TAG_WEIGHTS_SHA256] == weights_sha256(registered.bundle)
    _, info = inference.open_model_info(f"models:/{registered.name}@champion", registered.uri)
    assert (info.name, info.version, info.sha256) == (
        registered.name,
        "1",
        weights_sha256(registered.bundle),
    )


def test_a_tampered_download_is_refused_in_one_line(registered, clips, capsys, tracking_env):
    import mlflow.pyfunc

    mv = MlflowClient(registered.uri).get_model_version(registered.name, "1")
    model = f"models:/{registered.name}@champion"
    with tampered(_weights_under(registered, mv.run_id)):
        with pytest.raises(SystemExit) as e:
            predict.main([model, str(clips["low"]), "--mlflow-uri", registered.uri])
        assert e.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: {model} (version 1): the downloaded {WEIGHTS} has sha256")
        assert "changed after registration" in line
    predict.main([model, str(clips["low"]), "--mlflow-uri", registered.uri])  # restored: fine
    pyfunc_weights = _weights_under(registered, mv.source.removeprefix("models:/"))
    with tampered(pyfunc_weights), pytest.raises(UserError, match="its sha256 is not"):
        mlflow.pyfunc.load_model(model)


def test_a_version_without_the_tag_is_refused(registered, clips):
    client = MlflowClient(registered.uri)
    mv = client.get_model_version(registered.name, "1")
    name = "mrnet-untagged"
    tags = {k: v for k, v in mv.tags.items() if k != TAG_WEIGHTS_SHA256}
    version = register_version(registered.uri, name, mv.source, mv.run_id, tags)
    with pytest.raises(UserError, match=f"has no {TAG_WEIGHTS_SHA256} tag"):
        inference.open_model(f"models:/{name}/{version.version}", registered.uri)


def _versions(registered, name: str, accuracies: list[float]) -> list[str]:
    """New versions of ``name`` (the registered model's source) with these test accuracies."""
    mv = MlflowClient(registered.uri).get_model_version(registered.name, "1")
    out = []
    for acc in accuracies:
        tags = {**mv.tags, TAG_TEST_ACC: repr(acc), TAG_DATA_HASH: "tones"}
        out.append(register_version(registered.uri, name, mv.source, mv.run_id, tags).version)
    return out


def _race(registered, name: str, claims: list[tuple[str, float]]) -> list[str]:
    """Each ``(version, acc)`` claims the alias from its own thread, all at once."""
    barrier = threading.Barrier(len(claims))
    said: dict[str, str] = {}

    def claim(version: str, acc: float) -> None:
        barrier.wait()
        said[version] = champion.claim_alias(
            registered.uri, name, "champion", version, acc, "tones"
        )

    threads = [threading.Thread(target=claim, args=c) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [said[v] for v, _ in claims]


@pytest.mark.parametrize("accs", [(0.6, 0.7), (0.7, 0.7)], ids=["better", "equal"])
def test_two_concurrent_exports_cannot_both_take_the_alias(registered, accs):
    name = f"mrnet-race-{accs[0]}-{accs[1]}"
    versions = _versions(registered, name, list(accs))
    said = _race(registered, name, list(zip(versions, accs, strict=True)))
    winners = [v for v, s in zip(versions, said, strict=True) if "-> version" in s]
    assert len(winners) == 1, said
    holder = alias_version(registered.uri, name, "champion").version
    assert holder == winners[0]
    if accs[0] != accs[1]:
        assert holder == versions[1]  # the better one
    loser = said[versions.index(holder) ^ 1]
    assert loser.startswith(f"alias champion kept on version {holder}"), said


@pytest.mark.parametrize("intruder_acc", [0.1, 0.99], ids=["worse", "better"])
def test_a_move_during_the_recheck_is_seen(registered, intruder_acc):
    name = f"mrnet-intruder-{intruder_acc}"
    mine, intruder = _versions(registered, name, [0.5, intruder_acc])
    said = []
    claim = threading.Thread(target=lambda: said.append(champion.claim_alias(
        registered.uri, name, "champion", mine, 0.5, "tones", settle_s=1.0
    )))  # fmt: skip
    claim.start()
    time.sleep(0.3)  # it has moved the alias and waits to re-read it
    MlflowClient(registered.uri).set_registered_model_alias(name, "champion", intruder)
    claim.join()
    holder = alias_version(registered.uri, name, "champion").version
    if intruder_acc < 0.5:
        assert holder == mine and said[0].startswith(f"alias champion -> version {mine}")
    else:
        assert holder == intruder
        assert said[0].startswith(f"alias champion kept on version {intruder}")
        assert f"version {intruder} took the alias while this export moved it" in said[0]
