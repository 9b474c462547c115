"""The MLflow UI on a search's local tracking store (``make ui RUNS=DIR``).

    python -m mrnet_ray.ui --run-dir DIR [--port 5000]

Starts ``mlflow server`` on 127.0.0.1 against the store the search in ``DIR`` logged to (its
``search.json``, else the default local store of :mod:`mrnet_ray.tracking`), waits until it
answers and prints the address of the search's experiment; Ctrl-C stops it. A search that
logged to a tracking server has nothing local to serve: its address is printed instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mrnet_ray.errors import cli
from mrnet_ray.search.record import tracking_store
from mrnet_ray.tracking.server import serve_ui


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrnet-ray ui", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="a search's run directory (e.g. runs/demo)")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir).expanduser().resolve()
    uri, experiment_id = tracking_store(run_dir)
    serve_ui(run_dir, uri, experiment_id, args.port)


if __name__ == "__main__":
    main()
