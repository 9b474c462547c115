"""Architecture search: Ray Tune trials of Ray Train runs, drawn by Optuna, recorded in MLflow.

    python -m mrnet_ray.tune --data DIR|s3://... [--space smoke|demo|mrnet|FILE.yaml]
        [--num-samples N] [--time-budget S] [--scheduler asha|fifo] [--searcher tpe|random]
        [--objective acc|acc-params|acc-flops] [--workers N --cpus-per-worker C
        --gpus-per-worker G] [--run-dir DIR] [--storage PATH|s3://...] [--mlflow-uri URI]
    python -m mrnet_ray.tune --resume --run-dir DIR

Also ``ray submit cluster/gpu.yaml mrnet_ray/tune.py -- ARGS``, which copies this file alone
to the head node and runs it as a script. Everything is checked before the first trial (data,
space, tracking server, resources); the run directory then holds ``search.json`` (what ``best``
and ``--resume`` read), the Optuna journal, the local MLflow store and, unless ``--storage``,
the Ray results. ``search.py`` builds the Tuner; ``search_report.py`` reads the outcome.
"""

import sys
from pathlib import Path

if not __package__:
    # Run as a script (`ray submit ... mrnet_ray/tune.py`): sys.path[0] is then the package
    # directory, whose modules (datasets/, data.py, config.py, train.py) would shadow top-level
    # packages of the same names, e.g. the `datasets` that mlflow probes for. Import the
    # installed package instead.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import dataclasses
import functools
import json
import os
import re
import time

from ray import tune

import mrnet_ray
from mrnet_ray import search, search_report, tracking
from mrnet_ray.config import ResourcesConfig
from mrnet_ray.data import Prepared, open_prepared
from mrnet_ray.errors import UserError, cli
from mrnet_ray.search import OBJECTIVES, SearchSettings
from mrnet_ray.search_space import load_space

SPACES_DIR = Path(mrnet_ray.__file__).resolve().parent.parent / "search_spaces"
STORAGE_ENV = "MRNET_RAY_STORAGE"
TAG_SPACE = "mrnet_ray.space"
ORPHAN_REASON = "started just before the search was killed; Tune never saved this trial"
SMOKE = {"num_samples": 2, "space": "smoke"}
DEFAULTS = {
    "num_samples": 16,
    "space": "mrnet",
    "trial_cpus": 0.2,
    "searcher": "tpe",
    "seed": 0,
    "objective": "acc",
    "max_failures": 1,
    "experiment": "mrnet_ray",
}


def resolve_space(name_or_path: str) -> Path:
    """A shipped space name (``search_spaces/<name>.yaml`` of this checkout) or a file path."""
    shipped = SPACES_DIR / f"{name_or_path}.yaml"
    bare = "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml"))
    if bare and shipped.is_file():
        return shipped
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    names = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
    raise UserError(
        f"--space {name_or_path}: no such file and no shipped space of that name; "
        f"shipped: {names or 'none found'}"
    )


def default_name(space: Path, prepared: Prepared) -> str:
    """Space, dataset and data hash: stable, so ``--resume`` finds the same search."""
    raw = f"{space.stem}-{prepared.manifest.get('dataset', 'data')}-{prepared.content_hash[:8]}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)


def _resources(args: argparse.Namespace) -> ResourcesConfig:
    try:
        return ResourcesConfig.from_flags(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    except ValueError as e:
        raise UserError(f"resources: {e}") from None


def new_settings(args: argparse.Namespace) -> tuple[SearchSettings, Prepared]:
    """Settings of a new search from the flags, checking the data and the space file."""
    if args.data is None:
        raise UserError("--data is required: a prepared directory (from `mrnet-ray prepare`)")
    smoke = SMOKE if args.smoke_test else {}
    pick = {k: getattr(args, k) for k in DEFAULTS}
    pick = {k: v if v is not None else smoke.get(k, DEFAULTS[k]) for k, v in pick.items()}
    prepared = open_prepared(args.data)
    space_path = resolve_space(pick["space"])
    load_space(space_path)
    name = args.name or default_name(space_path, prepared)
    run_dir = Path(args.run_dir or Path("runs") / name).expanduser().resolve()
    storage = args.storage or os.environ.get(STORAGE_ENV) or str(run_dir / "ray")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    multi = len(OBJECTIVES[pick["objective"]]) > 1
    scheduler = args.scheduler or ("fifo" if multi else "asha")
    if multi and scheduler == "asha":
        raise UserError(
            f"--objective {pick['objective']} has two metrics but ASHA ranks trials by one; "
            "drop --scheduler asha (FIFO is the default here)"
        )
    if pick["num_samples"] < 1 or (args.time_budget is not None and args.time_budget <= 0):
        raise UserError("--num-samples and --time-budget must be positive")
    if pick["max_failures"] < 0 or pick["trial_cpus"] <= 0 or (args.max_concurrent or 0) < 0:
        raise UserError("--max-failures and --max-concurrent must be >= 0, --trial-cpus > 0")
    settings = SearchSettings(
        name=name,
        data=prepared.path,
        space=str(space_path),
        run_dir=str(run_dir),
        storage=storage,
        tracking_uri=tracking.resolve_tracking_uri(args.mlflow_uri, run_dir),
        experiment=pick["experiment"],
        num_samples=pick["num_samples"],
        time_budget_s=args.time_budget,
        max_concurrent=args.max_concurrent or 0,  # 0: derived from the cluster at start
        resources=_resources(args),
        trial_cpus=pick["trial_cpus"],
        scheduler=scheduler,
        searcher=pick["searcher"],
        seed=pick["seed"],
        objective=pick["objective"],
        max_failures=pick["max_failures"],
    )
    return settings, prepared


RESUME_FLAGS = ("resume", "run_dir", "name", "data", "space")


def resumed_settings(args: argparse.Namespace) -> tuple[SearchSettings, Prepared]:
    """The saved settings of the search in ``--run-dir`` (or the one the flags name)."""
    given = [k for k, v in vars(args).items() if k not in RESUME_FLAGS and v not in (None, False)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(
            f"{flag}: --resume continues a search exactly as it was started (its settings are "
            f"in {search_report.RECORD}); drop {flag}, or start a new search with another --name"
        )
    if args.run_dir:
        run_dir = Path(args.run_dir).expanduser().resolve()
    elif args.name:
        run_dir = Path("runs", args.name).resolve()
    elif args.data and args.space:
        run_dir = Path("runs", default_name(resolve_space(args.space), open_prepared(args.data)))
        run_dir = run_dir.resolve()
    else:
        raise UserError("--resume needs --run-dir DIR (or the --data and --space it started with)")
    saved = run_dir / search_report.RECORD
    if not saved.is_file():
        raise UserError(
            f"nothing to resume: {saved} does not exist; start the search without --resume"
        )
    settings = SearchSettings.from_dict(json.loads(saved.read_text()))
    prepared = open_prepared(settings.data)
    load_space(settings.space)
    return settings, prepared


def run(settings: SearchSettings, prepared: Prepared, *, resume: bool) -> int:
    """Check everything, run (or continue) the search, report; returns the exit status."""
    space = load_space(settings.space)
    tracking.check_reachable(settings.tracking_uri)
    experiment_exists = tune.Tuner.can_restore(settings.experiment_path)
    if resume and not experiment_exists:
        raise UserError(
            f"nothing to resume: no Tune experiment at {settings.experiment_path} (the search "
            "stopped before its first trial); start it again without --resume"
        )
    record = Path(settings.run_dir) / search_report.RECORD
    if not resume and record.is_file():  # the run dir's own search, wherever its results went
        earlier = json.loads(record.read_text()).get("experiment_path", "")
        experiment_exists |= bool(earlier) and tune.Tuner.can_restore(earlier)
    if not resume and experiment_exists:
        raise UserError(
            f"{settings.run_dir} already holds a search; continue it with --resume, "
            "or pick another --run-dir (or --name)"
        )
    if not resume:
        search.drop_stale_study(settings)
    search.init_ray()
    capacity = search.cluster_capacity()
    needs = search.trial_needs(settings.resources, settings.trial_cpus)
    search.check_feasible(needs, capacity)
    if not settings.max_concurrent:
        settings = dataclasses.replace(
            settings, max_concurrent=search.default_concurrency(needs, capacity)
        )

    run_dir = Path(settings.run_dir)
    where = tracking.setup_tracking(settings.tracking_uri, run_dir, settings.experiment)
    tags = tracking.run_tags(prepared.content_hash) | {TAG_SPACE: Path(settings.space).stem}
    parent = tracking.start_search_run(
        where, settings.name, key=settings.experiment_path, tags=tags
    )
    search_report.write_record(
        settings, status="RUNNING", experiment_id=where.experiment_id, parent_run_id=parent
    )
    params = {
        k: v
        for k, v in settings.to_dict().items()
        if k not in ("run_dir", "tracking_uri", "experiment", "resources")
    } | {f"resources.{k}": v for k, v in settings.resources.to_dict().items()}
    tracking.log_search_details(where, parent, params, [Path(settings.space)])

    n_mels, n_classes = prepared.feature.n_mels, len(prepared.labels)
    to_trial = functools.partial(space.to_trial, n_mels=n_mels, n_classes=n_classes)
    trainable = search.trainable(settings, space, n_mels, n_classes)
    # The new output engine ignores progress_reporter and picks its own first four metrics.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if resume:
        tuner = search.restore_tuner(settings, trainable)
    else:
        callback = tracking.MLflowTrialCallback(where, parent, to_trial, tags=tags)
        tuner = search.make_tuner(settings, space, trainable, [callback])
    started = time.monotonic()
    try:
        tuner.fit()
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        tracking.end_search_run(where, parent, status, error=f"{type(e).__name__}: {e}")
        search_report.write_record(settings, status=status)
        raise
    wall_s = time.monotonic() - started

    outcomes = search_report.collect(settings.experiment_path, to_trial)
    counts = search_report.counts(outcomes)
    interrupted = counts["unfinished"] > 0
    files, notes = search_report.write_reports(settings, outcomes, interrupted)
    best = search_report.best_trial(outcomes)
    best_record = search_report.best_record(settings, where, parent, best, to_trial)
    old = json.loads((run_dir / search_report.RECORD).read_text())
    status = "KILLED" if interrupted else "FINISHED"
    search_report.write_record(
        settings,
        status=status,
        wall_s=round(old.get("wall_s", 0.0) + wall_s, 1),
        trials=counts,
        best=best_record,
        pareto=[o.trial_id for o in files.pop("front", [])],
    )
    if not interrupted:
        orphans = tracking.end_orphaned_trial_runs(
            where, parent, {o.trial_id for o in outcomes}, ORPHAN_REASON
        )
        if orphans:
            notes.append(f"{orphans} MLflow trial run(s) of trials Tune never saved ended KILLED")
    tracking.log_search_details(where, parent, files=list(files.values()))
    tracking.end_search_run(where, parent, status)
    print(search_report.summary(settings, where, parent, outcomes, wall_s, notes))
    return 130 if interrupted else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray tune", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    d = DEFAULTS
    p.add_argument("--data", help="prepared directory or s3:// URI (from `mrnet-ray prepare`)")
    p.add_argument("--space", help=f"shipped space name or YAML file (default {d['space']})")
    p.add_argument("--num-samples", type=int, help=f"trials (default {d['num_samples']})")
    p.add_argument("--time-budget", type=float, help="stop the search after this many seconds")
    p.add_argument("--max-concurrent", type=int, help="default: what the cluster fits")
    p.add_argument("--workers", type=int, help="Ray Train workers per trial (default 2; 1 on GPU)")
    p.add_argument("--cpus-per-worker", type=float, help="default 0.4 (4 with GPUs)")
    p.add_argument("--gpus-per-worker", type=float, help="default 0; 1 on GPU clusters")
    p.add_argument("--trial-cpus", type=float, help=f"trial driver CPU (default {d['trial_cpus']})")
    p.add_argument("--scheduler", choices=["asha", "fifo"], help="default asha (fifo: 2 metrics)")
    p.add_argument("--searcher", choices=["tpe", "random"], help="Optuna sampler (default tpe)")
    p.add_argument("--seed", type=int, help=f"sampler seed (default {d['seed']})")
    p.add_argument("--objective", choices=list(OBJECTIVES), help="acc, or a Pareto front")
    p.add_argument(
        "--max-failures", type=int,
        help=f"restarts of a failed trial from its checkpoint (default {d['max_failures']})",
    )  # fmt: skip
    p.add_argument("--name", help="search name (default: space-dataset-datahash)")
    p.add_argument("--run-dir", help="default runs/<name>")
    p.add_argument(
        "--storage", help=f"Ray results: path or URI (default ${STORAGE_ENV}, else RUN_DIR/ray)"
    )
    p.add_argument("--mlflow-uri", help="default $MLFLOW_TRACKING_URI, else sqlite in the run dir")
    p.add_argument("--experiment", help=f"MLflow experiment (default {d['experiment']})")
    p.add_argument("--resume", action="store_true", help="continue the search in --run-dir")
    p.add_argument("--smoke-test", action="store_true", help="2 trials of the smoke space")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.resume:
        settings, prepared = resumed_settings(args)
    else:
        settings, prepared = new_settings(args)
    code = run(settings, prepared, resume=args.resume)
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
