"""``serve``: a real Ray Serve application on loopback, on the session's Ray, asked over HTTP.

One application (a tiny trained model) serves the module's tests; the last ones roll a
registered model's new version out under load, and run the command itself in a fresh process
to stop it with SIGINT.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fixtures.audio import CLASS_HZ, write_clip, write_garbage
from fixtures.models import register_bundle

from mrnet_ray.export.bundle import load_bundle, weights_sha256
from mrnet_ray.inference import predict as inference

MAX_BYTES = 1 << 20
FORMATS = [(".wav", 22050, 1), (".mp3", 44100, 2), (".flac", 16000, 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: bytes | None = None, kind: str = "audio/wav") -> tuple[int, dict]:
    """``(status, JSON)`` of a GET (no body) or a POST of ``body``."""
    headers = {"Content-Type": kind} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A WAV, an MP3 and a FLAC of each class (rates and channels differ), plus garbage."""
    root = tmp_path_factory.mktemp("serve-clips")
    out = {}
    for c, (label, hz) in enumerate(CLASS_HZ.items()):
        for suffix, rate, channels in FORMATS:
            out[f"{label}{suffix}"] = write_clip(
                root / f"{label}{suffix}", hz, 2.5, rate, channels, seed=c
            )
    out["garbage"] = write_garbage(root / "garbage.wav")
    return out


@pytest.fixture(scope="module")
def server(ray_session, tiny_bundle):
    """The application serving ``tiny_bundle`` on a free loopback port: its base URL."""
    from ray import serve

    from mrnet_ray.inference import serving

    port = free_port()
    serving.start_http("127.0.0.1", port)
    opts = serving.ServeOptions(
        model=str(tiny_bundle), port=port, cpus_per_replica=0.5, max_batch=8,
        batch_wait_ms=50, max_bytes=MAX_BYTES,
    )  # fmt: skip
    serving.deploy(opts, str(tiny_bundle))
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def test_healthz_and_index_say_what_is_served(server, tiny_bundle):
    status, health = call(f"{server}/healthz")
    assert status == 200 and health["status"] == "ok"
    assert health["model"] == {
        "name": "bundle",
        "version": None,
        "sha256": weights_sha256(tiny_bundle),
    }
    status, index = call(f"{server}/")
    assert status == 200
    assert index["labels"] == list(CLASS_HZ)
    assert index["batching"] == {"max_batch": 8, "batch_wait_ms": 50}
    assert index["max_bytes"] == MAX_BYTES
    assert call(f"{server}/nothing")[0] == 404
    assert call(f"{server}/predict")[0] == 405  # a GET


def test_wav_mp3_and_flac_answer_as_predict_does(server, tiny_bundle, clips):
    bundle = load_bundle(tiny_bundle)
    for name in [n for n in clips if n != "garbage"]:
        status, out = call(f"{server}/predict?top_k=2", clips[name].read_bytes())
        assert status == 200, out
        local = inference.answer(inference.predict_file(bundle, clips[name]), bundle.labels, 2)
        assert out["label"] == local["label"] == name.split(".")[0]  # and the right class
        assert out["segments"] == local["segments"] == 4  # 2.5 s: 1 s segments every 0.5 s
        assert [r["label"] for r in out["top_k"]] == [r["label"] for r in local["top_k"]]
        assert out["prob"] == pytest.approx(local["prob"], abs=1e-5)
        assert out["model"]["sha256"] == weights_sha256(tiny_bundle)


def test_bad_requests_get_one_line_and_the_server_goes_on(server, clips):
    status, out = call(f"{server}/predict", clips["garbage"].read_bytes())
    assert status == 400
    assert out["error"].startswith("request body: cannot decode audio")
    assert "\n" not in out["error"]
    assert call(f"{server}/predict", clips["low.wav"].read_bytes())[0] == 200  # still serving
    assert call(f"{server}/predict", b"")[0] == 400
    status, out = call(f"{server}/predict?top_k=x", clips["low.wav"].read_bytes())
    assert (status, out["error"]) == (400, "top_k=x: must be an integer >= 1")
    status, out = call(f"{server}/predict", b"--x\r\n", "multipart/form-data; boundary=x")
    assert status == 415 and "send the audio file itself" in out["error"]


def test_a_body_over_max_bytes_gets_413_declared_or_chunked(server, clips):
    big = write_clip(clips["low.wav"].with_name("long.wav"), 110.0, 40.0, 16000)
    assert big.stat().st_size > MAX_BYTES
    status, out = call(f"{server}/predict", big.read_bytes())
    assert status == 413 and f"{MAX_BYTES:,} bytes" in out["error"]
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (big.read_bytes()[i : i + 65536] for i in range(0, big.stat().st_size, 65536))
    conn.request("POST", "/predict", body=chunks, headers={"Content-Type": "audio/wav"},
                 encode_chunked=True)  # fmt: skip
    response = conn.getresponse()
    assert response.status == 413, response.read()
    conn.close()
    assert call(f"{server}/predict", clips["mid.wav"].read_bytes())[0] == 200


def test_48_requests_8_at_a_time_all_succeed_in_shared_batches(server, tiny_bundle, clips):
    bundle = load_bundle(tiny_bundle)
    names = [n for n in clips if n != "garbage"]
    expected = {n: inference.predict_file(bundle, clips[n]).probabilities.argmax() for n in names}
    before = call(f"{server}/")[1]["replica"]["batches"]

    def ask(i: int) -> tuple[str, int, dict]:
        name = names[i % len(names)]
        return (name, *call(f"{server}/predict", clips[name].read_bytes()))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, range(48)))
    assert [status for _, status, _ in results] == [200] * 48
    for name, _, out in results:
        assert out["label"] == bundle.labels[expected[name]]
    after = call(f"{server}/")[1]["replica"]["batches"]
    grew = {int(size): n - before.get(size, 0) for size, n in after.items()}
    assert sum(size * n for size, n in grew.items()) == 48
    assert max(size for size, n in grew.items() if n > 0) > 1, grew  # batched across callers


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--follow-alias"], "--follow-alias needs a models:/NAME@ALIAS model to follow"),
        (["--max-batch", "0"], "--max-batch 0: must be >= 1"),
        (["--port", "0"], "--port 0: must be >= 1"),
    ],
)
def test_bad_flags_are_one_line(flags, says, tiny_bundle, capsys):
    from mrnet_ray import serve

    with pytest.raises(SystemExit) as e:
        serve.main([str(tiny_bundle), *flags])
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {says}")


def test_replicas_the_cluster_cannot_hold_are_one_line(ray_session, tiny_bundle):
    from mrnet_ray.errors import UserError
    from mrnet_ray.inference import serving

    opts = serving.ServeOptions(model=str(tiny_bundle), replicas=2, cpus_per_replica=4)
    with pytest.raises(UserError, match="need 8 CPU; the cluster has 2 CPU"):
        serving.serve_forever(opts)


@pytest.mark.slow
def test_follow_alias_rolls_a_new_version_out_without_dropping_requests(server, registered, clips):
    from mrnet_ray.inference import serving

    name = "mrnet-follow"
    register_bundle(registered.uri, registered.run_dir, registered.bundle, name, 0.5)
    port = int(server.rsplit(":", 1)[1])
    opts = serving.ServeOptions(
        model=f"models:/{name}@champion", mlflow_uri=registered.uri, port=port,
        cpus_per_replica=0.5, follow_alias=True,
    )  # fmt: skip
    _, info = inference.open_model_info(opts.model, opts.mlflow_uri)
    serving.deploy(opts, inference.pinned(opts.model, info))
    assert call(f"{server}/healthz")[1]["model"]["version"] == "1"
    seen: list[tuple[float, int, str | None]] = []  # (sent at, status, version)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            status, out = call(f"{server}/predict", clips["high.flac"].read_bytes())
            seen.append((sent, status, out.get("model", {}).get("version")))

    said: list[str] = []
    assert serving.follow(opts, info, said.append) == info  # the alias has not moved
    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        lines = register_bundle(registered.uri, registered.run_dir, registered.bundle, name, 0.9)
        assert lines[-1].startswith("alias champion -> version 2"), lines
        new = serving.follow(opts, info, said.append)
        rolled_out = time.monotonic()
        time.sleep(2)  # requests after the rollout, on the new replicas
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert new.version == "2"
    assert said == [
        f"models:/{name}@champion: version 1 -> 2 (sha256 {info.sha256[:12]}); rolling out",
        f"models:/{name}@champion: version 2 serving",
    ]
    assert {status for _, status, _ in seen} == {200}, seen  # no request dropped
    assert seen[0][2] == "1"
    after = [v for sent, _, v in seen if sent > rolled_out]
    assert after and set(after) == {"2"}, seen


@pytest.mark.slow
def test_serve_command_starts_on_loopback_and_stops_on_sigint(tiny_bundle, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ""}
    command = [sys.executable, "-m", "mrnet_ray.serve", str(tiny_bundle), "--port", str(port),
               "--cpus-per-replica", "0.5"]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving bundle (sha256 "), "".join(lines)
        assert f"at http://127.0.0.1:{port}" in lines[-1]
        assert call(f"http://127.0.0.1:{port}/healthz")[0] == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, "".join(lines) + rest
    assert rest.rstrip().endswith("stopped")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # nothing listens any more
