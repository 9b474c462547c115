"""Serve a model over HTTP with Ray Serve: POST an audio file, get its label.

    python -m mrnet_ray.serve MODEL [--host 127.0.0.1] [--port 8000] [--replicas N]
        [--max-batch B] [--batch-wait-ms MS] [--max-bytes M] [--follow-alias]
        [--poll-seconds S] [--cpus-per-replica C] [--gpus-per-replica G] [--mlflow-uri URI]

MODEL is a bundle directory or a registered model (``models:/<name>@<alias>``, read from the
store that ``--mlflow-uri`` or ``MLFLOW_TRACKING_URI`` names). ``curl --data-binary @song.mp3
http://127.0.0.1:8000/predict`` answers ``{"label": ..., "top_k": [...], "segments": n,
"model": {...}}``; ``GET /healthz`` answers once the model is loaded. The server listens on
loopback unless ``--host`` says otherwise. With ``--follow-alias`` it re-resolves the alias
every ``--poll-seconds`` and rolls a new version out without dropping requests. Ray starts
here, or joins the cluster ``RAY_ADDRESS`` names (a bundle directory must then be readable on
every node). Ctrl-C (SIGINT) or SIGTERM stops it cleanly. Details:
:mod:`mrnet_ray.inference.serving`.
"""

from __future__ import annotations

import argparse

from mrnet_ray.errors import cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray serve", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundle directory, or models:/<name>@<alias>")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (default %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most requests per forward pass (default %(default)s; 1: no batching)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="how long a request waits for others to batch with (default %(default)s)",
    )
    p.add_argument(
        "--max-bytes",
        type=int,
        default=64 << 20,
        help="largest request body; larger ones get 413 (default %(default)s)",
    )
    p.add_argument(
        "--follow-alias",
        action="store_true",
        help="re-resolve models:/NAME@ALIAS and roll out a new version when it moves",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=30.0,
        help="how often --follow-alias looks (default %(default)s)",
    )
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="(default %(default)s)")
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="> 0 runs each replica's model on a GPU (default %(default)s)",
    )
    p.add_argument("--mlflow-uri", help="store of models:/ (default $MLFLOW_TRACKING_URI)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from mrnet_ray.inference.serving import ServeOptions, serve_forever  # imports Ray Serve

    opts = ServeOptions(
        model=args.model, mlflow_uri=args.mlflow_uri, host=args.host, port=args.port,
        replicas=args.replicas, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        max_bytes=args.max_bytes, cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica, follow_alias=args.follow_alias,
        poll_s=args.poll_seconds,
    )  # fmt: skip
    serve_forever(opts)


if __name__ == "__main__":
    main()
