"""``mrnet-ray <command> ...``: a thin dispatcher onto each step's own ``main``.

Every command also runs as ``python -m mrnet_ray.<command>``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "prepare": "Build log-mel Parquet shards from a dataset (Ray Data).",
    "train": "Train one model on prepared shards (Ray Train).",
    "tune": "Search the architecture and optimisation (Ray Tune + Optuna, MLflow).",
    "best": "List the best trials of a search; --export writes a model bundle.",
    "predict": "Classify audio files with an exported model; --input: a whole collection.",
    "serve": "Serve a model over HTTP with Ray Serve (POST /predict).",
    "ui": "Start the MLflow UI on a search's tracking store.",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
        print("usage: mrnet-ray <command> [options]\n\ncommands:\n" + "\n".join(lines))
        raise SystemExit(0 if not argv or argv[0] in {"-h", "--help"} else 2)
    module = importlib.import_module(f"mrnet_ray.{argv[0]}")
    module.main(argv[1:])


if __name__ == "__main__":
    main()
