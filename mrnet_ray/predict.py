"""Classify audio files with an exported model.

    python -m mrnet_ray.predict MODEL AUDIO... [--top-k K] [--json] [--segments]
        [--mlflow-uri URI]
    python -m mrnet_ray.predict MODEL --input DIR|s3://PREFIX --output OUT.parquet|OUT.csv
        [--top-k K] [--actors N] [--mlflow-uri URI]

MODEL is a bundle directory (``python -m mrnet_ray.best --export``) or a registered model,
``models:/<name>@<alias>`` or ``models:/<name>/<version>``, whose bundle is downloaded from the
store that ``--mlflow-uri`` or ``MLFLOW_TRACKING_URI`` names.

Every file is decoded and cut by the frontend preparation used, then scored per segment and
per track (:mod:`mrnet_ray.inference.predict`).

Exit status: 0 when every file was predicted. A file that cannot be decoded gets one line on
stderr (``error: FILE: why``) and the others are still predicted and printed; the status is
then 2, as for any user error, so scripts notice. A missing or damaged bundle stops before
the first file, also with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mrnet_ray.errors import EXIT_USER_ERROR, UserError, cli
from mrnet_ray.features import AudioError
from mrnet_ray.inference.predict import open_model, predict_file, table, to_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray predict", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", help="bundle directory, or models:/<name>@<alias>")
    p.add_argument("audio", nargs="*", help="audio files (any format soundfile reads)")
    p.add_argument("--top-k", type=int, default=3, help="labels per file (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--segments", action="store_true", help="add per-segment predictions")
    p.add_argument("--mlflow-uri", help="store of models:/ (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--input", help="classify every audio file under DIR or s3://PREFIX (Ray Data)")
    p.add_argument("--output", help="with --input: OUT.parquet or OUT.csv, one row per file")
    p.add_argument(
        "--actors",
        type=int,
        help="with --input: model actors (default: one per GPU, else one per two CPUs)",
    )
    return p  # fmt: skip


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be >= 1")
    if args.model.startswith("models:/"):  # a store that refuses us: one line, before Ray
        _check_store(args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    if args.input is not None or args.output is not None:
        _bulk(args)
        return
    if not args.audio:
        raise UserError("give audio files to classify, or --input DIR --output OUT.parquet")
    bundle = open_model(args.model, args.mlflow_uri)
    k = min(args.top_k, len(bundle.labels))
    results, failed = [], 0
    for path in args.audio:
        try:
            prediction = predict_file(bundle, path)
        except AudioError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            results.append({"file": path, "error": str(e)})
            continue
        results.append(to_json(prediction, bundle, k, args.segments))
    good = [r for r in results if "error" not in r]
    if args.json:
        print(json.dumps(results, indent=2))
    elif good:
        print(table(good, k))
    if failed:
        raise SystemExit(EXIT_USER_ERROR)


def _check_store(uri: str) -> None:
    """UserError if the registry's tracking server is down, refuses our credentials or is
    named with credentials in its URI."""
    if uri:
        from mrnet_ray.tracking.store import check_reachable  # MLflow loads only here

        check_reachable(uri)


def _bulk(args: argparse.Namespace) -> None:
    if args.audio:
        raise UserError(f"give audio files or --input, not both ({args.audio[0]} and --input)")
    if args.input is None or args.output is None:
        raise UserError("--input DIR and --output OUT.parquet|OUT.csv go together")
    if args.json or args.segments:
        raise UserError("--json and --segments print per-file results; --input writes --output")
    if args.actors is not None and args.actors < 1:
        raise UserError(f"--actors {args.actors}: must be >= 1")
    from mrnet_ray.inference.bulk import BulkOptions, classify_collection  # imports Ray

    opts = BulkOptions(
        model=args.model, input=args.input, output=args.output, mlflow_uri=args.mlflow_uri,
        top_k=args.top_k, actors=args.actors,
    )  # fmt: skip
    classify_collection(opts)


if __name__ == "__main__":
    main()
