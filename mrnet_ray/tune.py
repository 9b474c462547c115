"""Architecture search: Ray Tune trials drawn by Optuna, recorded in MLflow.

    python -m mrnet_ray.tune --data DIR|s3://... [--space smoke|demo|mrnet|FILE.yaml]
        [--num-samples N] [--time-budget S] [--scheduler asha|fifo] [--searcher tpe|random]
        [--objective acc|acc-params|acc-flops] [--workers N --cpus-per-worker C
        --gpus-per-worker G] [--trial-executor auto|train|tune] [--run-dir DIR]
        [--storage PATH|s3://...] [--mlflow-uri URI]
    python -m mrnet_ray.tune --resume --run-dir DIR [--storage PATH|s3://... --name NAME]

Also ``ray submit cluster/gpu.yaml mrnet_ray/tune.py -- ARGS``, which copies this file alone
to the head node and runs it as a script. Everything is checked before the first trial (data,
space, tracking server, resources); the run directory then holds ``search.json`` (what ``best``
and ``--resume`` read), the Optuna journal, the local MLflow store and, unless ``--storage``,
the Ray results. A search keeps copies of ``search.json`` and the journal in the results root,
so ``--resume`` with ``--storage`` and ``--name`` works from a head whose run directory is
empty. The search itself is :mod:`mrnet_ray.search.driver`.
"""

import sys
from pathlib import Path

if not __package__:
    # Run as a script (`ray submit ... mrnet_ray/tune.py`): sys.path[0] is then the package
    # directory, whose packages (datasets/, search/, nn/ ...) would shadow top-level packages
    # of the same names, e.g. the `datasets` that mlflow probes for. Import the installed
    # package instead.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import dataclasses

from mrnet_ray.config import ResourcesConfig
from mrnet_ray.errors import UserError, cli
from mrnet_ray.search import driver, resume
from mrnet_ray.search.record import RECORD
from mrnet_ray.search.settings import OBJECTIVES, STORAGE_ENV, SearchSettings
from mrnet_ray.search.spaces import DEFAULT_SPACE

SMOKE = {"num_samples": 2, "space": "smoke"}
KNOBS = ("num_samples", "trial_cpus", "searcher", "seed", "objective", "max_failures",
         "experiment", "max_concurrent", "trial_executor")  # fmt: skip
"""Flags that are SearchSettings fields of the same name."""
RESUME_FLAGS = ("resume", "run_dir", "name", "data", "space", "storage")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray tune", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    d = {f.name: f.default for f in dataclasses.fields(SearchSettings)}
    d["space"] = DEFAULT_SPACE
    p.add_argument("--data", help="prepared directory or s3:// URI (from `mrnet-ray prepare`)")
    p.add_argument("--space", help=f"shipped space name or YAML file (default {d['space']})")
    p.add_argument("--num-samples", type=int, help=f"trials (default {d['num_samples']})")
    p.add_argument("--time-budget", type=float, help="stop the search after this many seconds")
    p.add_argument("--max-concurrent", type=int, help="default: what the cluster fits")
    p.add_argument("--workers", type=int, help="workers per trial (default 1; more: DDP)")
    p.add_argument("--cpus-per-worker", type=float, help="default 1 (4 with GPUs)")
    p.add_argument("--gpus-per-worker", type=float, help="default 0; 1 on GPU clusters")
    p.add_argument(
        "--trial-executor", choices=["auto", "train", "tune"],
        help="tune: a trial trains in its own process; train: through Ray Train; "
        "auto (default): tune for one worker, train for DDP",
    )  # fmt: skip
    p.add_argument(
        "--trial-cpus", type=float,
        help=f"CPU of a trial driving Ray Train (default {d['trial_cpus']})",
    )  # fmt: skip
    p.add_argument("--scheduler", choices=["asha", "fifo"], help="default asha (fifo: 2 metrics)")
    p.add_argument("--searcher", choices=["tpe", "random"], help="Optuna sampler (default tpe)")
    p.add_argument("--seed", type=int, help=f"sampler seed (default {d['seed']})")
    p.add_argument("--objective", choices=list(OBJECTIVES), help="acc, or a Pareto front")
    p.add_argument(
        "--max-failures", type=int,
        help=f"restarts of a failed trial from its checkpoint (default {d['max_failures']})",
    )  # fmt: skip
    p.add_argument(
        "--warm-start", action="append", metavar="RUN_DIR",
        help="start from an earlier search's trials (repeatable)",
    )  # fmt: skip
    p.add_argument("--name", help="search name (default: space-dataset-datahash)")
    p.add_argument("--run-dir", help="default runs/<name>")
    p.add_argument(
        "--storage", help=f"Ray results: path or URI (default ${STORAGE_ENV}, else RUN_DIR/ray)"
    )
    p.add_argument("--mlflow-uri", help="default $MLFLOW_TRACKING_URI, else sqlite in the run dir")
    p.add_argument("--experiment", help=f"MLflow experiment (default {d['experiment']})")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the search in --run-dir (an empty one: from --storage, --name)",
    )  # fmt: skip
    p.add_argument("--smoke-test", action="store_true", help="2 trials of the smoke space")
    return p


def _resume(args: argparse.Namespace) -> int:
    given = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v not in (None, False)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(
            f"{flag}: --resume continues a search exactly as it was started (its settings are "
            f"in {RECORD}); drop {flag}, or start a new search with another --name"
        )
    run_dir = resume.locate_run_dir(args.run_dir, args.name, args.data, args.space)
    settings, prepared = resume.resumed_search(run_dir, args.storage, args.name)
    return driver.run(settings, prepared, resume=True)


def _start(args: argparse.Namespace) -> int:
    if args.data is None:
        raise UserError("--data is required: a prepared directory (from `mrnet-ray prepare`)")
    smoke = SMOKE if args.smoke_test else {}
    knobs = {k: getattr(args, k) for k in KNOBS if getattr(args, k) is not None}
    knobs = {k: v for k, v in smoke.items() if k in KNOBS} | knobs
    settings, prepared = driver.plan_search(
        args.data,
        args.space or smoke.get("space", DEFAULT_SPACE),
        name=args.name,
        run_dir=args.run_dir,
        storage=args.storage,
        mlflow_uri=args.mlflow_uri,
        scheduler=args.scheduler,
        time_budget_s=args.time_budget,
        warm_start=tuple(str(Path(w).expanduser().resolve()) for w in args.warm_start or ()),
        resources=ResourcesConfig.from_flags(
            args.workers, args.cpus_per_worker, args.gpus_per_worker
        ),
        **knobs,
    )
    return driver.run(settings, prepared, resume=False)


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    code = _resume(args) if args.resume else _start(args)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
