"""The MLflow UI on a search's local tracking store (``make ui RUNS=DIR``).

    python -m mrnet_ray.ui --run-dir DIR [--port 5000]

Starts ``mlflow server`` on 127.0.0.1 against the store the search in ``DIR`` logged to (its
``search.json``, else the default local store of :mod:`mrnet_ray.tracking`), waits until it
answers and prints the address of the search's experiment; Ctrl-C stops it. A search that
logged to a tracking server has nothing local to serve: its address is printed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mrnet_ray.errors import UserError, cli
from mrnet_ray.tracking import is_remote, resolve_tracking_uri

START_TIMEOUT_S = 120.0
"""``mlflow server`` answers about 10 s after start on an idle machine; allow for a busy one."""


def store_of(run_dir: Path) -> tuple[str, str | None]:
    """``(tracking URI, experiment id or None)`` of the search in ``run_dir``."""
    record = run_dir / "search.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        return saved["tracking_uri"], saved.get("experiment_id")
    return resolve_tracking_uri(None, run_dir, env={}), None


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrnet-ray ui", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="a search's run directory (e.g. runs/demo)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir).expanduser().resolve()
    uri, experiment_id = store_of(run_dir)
    if is_remote(uri):
        print(f"the search in {run_dir} logged to the tracking server {uri}; open it there")
        return
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if db is not None and not db.is_file():
        raise UserError(
            f"{run_dir}: no MLflow store ({db} does not exist); run a search there first "
            "(python -m mrnet_ray.tune --run-dir ...)"
        )
    if not _port_free(args.port):
        raise UserError(f"port {args.port} on 127.0.0.1 is in use; pick another with --port")
    url = f"http://127.0.0.1:{args.port}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
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


if __name__ == "__main__":
    main()
