"""The MLflow UI on a search's local tracking store: start ``mlflow server``, wait, stop.

The server runs on 127.0.0.1 against the store a search logged to, in its own process group
so stopping it stops its workers too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mrnet_ray.errors import UserError
from mrnet_ray.tracking.store import is_remote

START_TIMEOUT_S = 120.0
"""``mlflow server`` answers about 10 s after start on an idle machine; allow for a busy one."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"mlflow server exited with status {server.returncode}; see above")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise UserError(f"mlflow server did not answer at {url} within {timeout_s:.0f} s")


def serve_ui(run_dir: Path, uri: str, experiment_id: str | None, port: int) -> None:
    """Serve the MLflow UI of store ``uri`` (the search in ``run_dir`` logged to it) on
    127.0.0.1:``port`` until Ctrl-C, opening on ``experiment_id``'s runs."""
    if is_remote(uri):
        print(f"the search in {run_dir} logged to the tracking server {uri}; open it there")
        return
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        raise UserError(
            f"{run_dir}: no MLflow store ({db} does not exist); run a search there first "
            "(python -m mrnet_ray.tune --run-dir ...)"
        )
    if not _port_free(port):
        raise UserError(f"port {port} on 127.0.0.1 is in use; pick another with --port")
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # Its own process group, so stopping it stops the server's workers too.
    server = subprocess.Popen(command, start_new_session=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    try:
        _wait_healthy(url, server, START_TIMEOUT_S)
        # The runs table of the search's experiment, in MLflow's model-training view.
        page = f"{url}/#/experiments/{experiment_id}/runs" if experiment_id else f"{url}/#"
        page += "?workflowType=machine_learning"
        print(f"MLflow UI for {run_dir}: {page}  (Ctrl-C stops it)", flush=True)
        if server.wait():
            raise UserError(f"mlflow server stopped with status {server.returncode}; see above")
    except KeyboardInterrupt:
        pass
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
