"""``python -m mrnet_ray.prepare``: a dataset -> log-mel Parquet shards, with Ray Data.

    python -m mrnet_ray.prepare --dataset gtzan|fma|melon|folder|demo --root DIR --out DIR|s3://...
        [--split-mode ...] [feature flags] [--force] [--limit N]

The job itself is :func:`mrnet_ray.shards.job.prepare`.
"""

from __future__ import annotations

import argparse
from typing import get_args

from mrnet_ray.config import FeatureConfig
from mrnet_ray.datasets import ADAPTERS, SplitMode, SplitOptions
from mrnet_ray.errors import UserError, cli
from mrnet_ray.shards.job import prepare


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray prepare",
        description="Build log-mel Parquet shards of a dataset with Ray Data.",
    )
    p.add_argument("--dataset", required=True, choices=sorted(ADAPTERS))
    p.add_argument("--root", required=True, help="the dataset's directory")
    p.add_argument("--out", required=True, help="output directory or s3:// URI")
    p.add_argument("--subset", choices=("small", "medium", "large"), help="FMA subset")
    p.add_argument(
        "--split-mode",
        default="default",
        choices=get_args(SplitMode),
        help="default: gtzan filtered, fma official, melon random, folder file|random",
    )
    p.add_argument("--seed", type=int, default=SplitOptions.seed)
    p.add_argument("--valid-fraction", type=float, default=SplitOptions.valid_fraction)
    p.add_argument("--test-fraction", type=float, default=SplitOptions.test_fraction)
    p.add_argument("--folds", type=int, default=SplitOptions.n_folds, help="k of kfold")
    p.add_argument("--fold", type=int, default=SplitOptions.fold, help="kfold's test fold")
    p.add_argument("--split-file", help="CSV with header path,split (folder datasets)")
    p.add_argument("--group-regex", help="regex on file stems; group 1 keys related clips")
    f = p.add_argument_group("features (defaults: FeatureConfig)")
    for name, kind in [
        ("sample_rate", int),
        ("n_fft", int),
        ("hop_length", int),
        ("n_mels", int),
        ("f_min", float),
        ("f_max", float),
        ("top_db", float),
        ("segment_seconds", float),
        ("segment_hop_seconds", float),
        ("eval_hop_seconds", float),
        ("max_track_seconds", float),
    ]:
        default = getattr(FeatureConfig, name)
        f.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name, help=f"({default})")
    f.add_argument("--short-clip", choices=("pad", "skip"), dest="short_clip")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--limit", type=int, help="prepare at most N tracks (quick runs)")
    return p


def feature_from_args(args: argparse.Namespace, dataset: str) -> FeatureConfig:
    """FeatureConfig from the flags given; the segment hop follows ``--segment-seconds``."""
    given = {
        k: getattr(args, k)
        for k in FeatureConfig.field_names()
        if getattr(args, k, None) is not None
    }
    if "segment_seconds" in given and "segment_hop_seconds" not in given:
        given["segment_hop_seconds"] = given["segment_seconds"]
    ours = {"segment_seconds", "segment_hop_seconds", "eval_hop_seconds", "short_clip"}
    ours.add("max_track_seconds")
    spectral = sorted(set(given) - ours)
    if dataset == "melon" and spectral:
        raise UserError(
            f"--{spectral[0].replace('_', '-')} does not apply to melon: it ships ready "
            "mel-spectrograms (48 bands, 16 kHz, hop 256); drop the flag"
        )
    try:
        return FeatureConfig(**given)
    except ValueError as e:
        raise UserError(f"{e}") from None


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be >= 1")
    opts = SplitOptions(
        mode=args.split_mode,
        seed=args.seed,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        n_folds=args.folds,
        fold=args.fold,
        split_file=args.split_file,
        group_regex=args.group_regex,
        subset=args.subset,
    )
    feature = feature_from_args(args, args.dataset)
    prepare(args.dataset, args.root, args.out, opts, feature, args.force, args.limit)


if __name__ == "__main__":
    main()
