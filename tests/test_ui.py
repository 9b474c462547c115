"""`mrnet_ray.ui` for real: `mlflow server` on a search's store, its REST API, and the React UI
rendered by headless Chromium (screenshots land in test-artifacts/)."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import mrnet_ray
from mrnet_ray import ui
from mrnet_ray.tracking import (
    TAG_PARENT,
    TAG_TRIAL_ID,
    log_metrics,
    log_params,
    setup_tracking,
    start_search_run,
)

REPO = Path(mrnet_ray.__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TRIALS = ("mrnet_trial_0a1b2c3d", "mrnet_trial_4e5f6a7b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def search_store(tmp_path) -> tuple[Path, str, str]:
    """A run directory whose store holds a search run and two trial runs, as a search leaves
    it: ``(run_dir, experiment_id, search run name)``."""
    run_dir = tmp_path / "run"
    tracking = setup_tracking(None, run_dir, "mrnet_ray")
    parent = start_search_run(tracking, "demo-search", key=str(run_dir / "ray" / "demo"))
    client = MlflowClient(tracking.uri)
    for i, name in enumerate(TRIALS):
        tags = {TAG_PARENT: parent, TAG_TRIAL_ID: name.rsplit("_", 1)[1]}
        run_id = client.create_run(tracking.experiment_id, run_name=name, tags=tags).info.run_id
        log_params(client, run_id, {"model.channels": 16 + 8 * i, "train.lr": 1e-3 * (i + 1)})
        for epoch in (1, 2):
            log_metrics(client, run_id, {"valid_track_acc": 0.3 * epoch + 0.1 * i}, epoch)
        client.set_terminated(run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    record = {"tracking_uri": tracking.uri, "experiment_id": tracking.experiment_id}
    (run_dir / "search.json").write_text(json.dumps(record))
    return run_dir, tracking.experiment_id, "demo-search"


def start_ui(run_dir: Path, port: int) -> tuple[subprocess.Popen, queue.Queue]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mrnet_ray.ui", "--run-dir", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in process.stdout], daemon=True).start()
    return process, lines


def wait_for_url(process: subprocess.Popen, lines: queue.Queue, timeout_s: float = 180) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError("no URL from mrnet_ray.ui:\n" + "".join(seen[-30:])) from None
        seen.append(line)
        found = re.search(r"MLflow UI for .*: (http://\S+)", line)
        if found:
            return found.group(1)
        assert process.poll() is None, "".join(seen[-30:])


def chromium(url: str, tmp_path: Path, *mode: str) -> str:
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,900",
         "--virtual-time-budget=30000", *mode, url],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    return out.stdout


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


@pytest.mark.slow
def test_ui_serves_the_search(search_store, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (`make install` installs it as root)")
    run_dir, experiment_id, search_name = search_store
    port = free_port()
    process, lines = start_ui(run_dir, port)
    try:
        url = wait_for_url(process, lines)
        base = f"http://127.0.0.1:{port}"
        assert url == f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

        found = post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
        runs = {r["info"]["run_name"]: r for r in found["runs"]}
        assert set(runs) == {search_name, *TRIALS}
        assert all(r["info"]["status"] == "FINISHED" for r in runs.values())

        # The runs table nests the trials under the search run, so the page lists the search;
        # the compare page lists every trial.
        ARTIFACTS.mkdir(exist_ok=True)
        assert search_name in chromium(url, tmp_path, "--dump-dom")
        chromium(url, tmp_path, f"--screenshot={ARTIFACTS / 'mlflow-ui.png'}")
        ids = json.dumps([runs[name]["info"]["run_id"] for name in TRIALS])
        compare = (
            f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
            f"&experiments={urllib.parse.quote(json.dumps([experiment_id]))}"
        )
        dom = chromium(compare, tmp_path, "--dump-dom")
        assert all(name in dom for name in TRIALS), dom[-2000:]
        chromium(compare, tmp_path, f"--screenshot={ARTIFACTS / 'mlflow-ui-compare.png'}")
        assert (ARTIFACTS / "mlflow-ui.png").stat().st_size > 20_000
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0
    with pytest.raises(OSError):  # the server went with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_ui_refuses_a_directory_without_a_store_and_a_busy_port(search_store, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        ui.main(["--run-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "no MLflow store" in err and "run a search there first" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            ui.main(["--run-dir", str(search_store[0]), "--port", str(port)])
    assert info.value.code == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
