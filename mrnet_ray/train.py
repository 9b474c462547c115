"""``python -m mrnet_ray.train``: train one model on prepared shards (Ray Train).

    python -m mrnet_ray.train --data DIR [--config FILE.yaml] [--epochs N] [--workers N]
        [--gpu | --gpus-per-worker G] [--cpus-per-worker C] [--storage PATH|s3://...] [--name N]

``FILE.yaml`` has ``model:`` and ``train:`` sections of config fields; running the same command
again resumes the run, and a larger ``--epochs`` continues it (:mod:`mrnet_ray.training.run`).
"""

from __future__ import annotations

import argparse

from mrnet_ray.config import ResourcesConfig
from mrnet_ray.errors import cli
from mrnet_ray.training.run import train_run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrnet-ray train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="prepared directory (from `mrnet-ray prepare`)")
    p.add_argument("--config", help="YAML file with model: and train: sections")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--workers", type=int, help="Ray Train workers (DDP ranks)")
    p.add_argument("--gpu", action="store_true", help="one GPU and 4 CPUs per worker")
    p.add_argument("--gpus-per-worker", type=float)
    p.add_argument("--cpus-per-worker", type=float, help="may be fractional, e.g. 0.4")
    p.add_argument("--storage", default="runs/train", help="local path or URI (s3://...)")
    p.add_argument("--name", help="run name; default: from the config and data (resumes)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    resources = ResourcesConfig.from_flags(
        args.workers, args.cpus_per_worker, args.gpus_per_worker, gpu=args.gpu
    )
    train_run(args.data, args.config, args.epochs, resources, args.storage, args.name)


if __name__ == "__main__":
    main()
