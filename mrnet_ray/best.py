"""Take the winner of a search: rank its trials, and export the best one (``export.py``).

    python -m mrnet_ray.best --run-dir DIR [--metric valid_track_acc] [--top N]
        [--export [OUT_DIR]] [--register-name NAME] [--alias champion] [--mlflow-uri URI]

The search is the one ``python -m mrnet_ray.tune`` ran in ``DIR`` (its ``search.json``). Trials
come from the search's MLflow runs (the trial runs nested under its search run); when the
store cannot be read they come from Tune's results in the run directory instead, and a note
says so. Each trial scores the best value of ``--metric`` over its epochs (lower is better for
losses, ``params`` and ``flops``); ties go to the smaller model.

``--export`` (default ``DIR/best``) writes the winner as a bundle, evaluated once on the test
split, and registers it in MLflow; see :mod:`mrnet_ray.export` for the checkpoint it takes
and the rule that moves the ``--alias``.

>>> c = Candidate("a1", "finished", {1: 0.5, 2: 0.75, 3: 0.75}, {"model.arch": "mrnet"}, {})
>>> c.best("valid_track_acc"), c.best("valid_loss")
((2, 0.75), (1, 0.5))
>>> human(1714464), human(18219), human(512)
('1.71M', '18.2k', '512')
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrnet_ray.errors import UserError, cli

SEARCH_JSON = "search.json"
REQUIRED = ("name", "data", "tracking_uri", "experiment", "experiment_path", "train_storage")
COLUMNS = {  # table header -> flat TrialConfig key (as MLflow params name them)
    "arch": "model.arch",
    "channels": "model.channels",
    "dilations": "model.dilations",
    "route depths": "model.route_depths",
    "res2": "model.res2_scale",
    "lr": "train.lr",
}


def lower_is_better(metric: str) -> bool:
    return metric.endswith("_loss") or metric in ("params", "flops")


@dataclass(frozen=True)
class Candidate:
    """One trial of the search, as ranked."""

    trial_id: str
    status: str
    history: dict[int, float]
    """Epoch -> value of the ranking metric."""
    params: dict[str, str]
    """The flat TrialConfig (``model.channels`` -> "24"), else the drawn parameters."""
    size: dict[str, float]
    """``params`` and ``flops``, when reported."""
    run_id: str | None = None
    """The trial's MLflow run, when ranked from MLflow."""

    def best(self, metric: str) -> tuple[int, float] | None:
        """``(epoch, value)`` of the best finite value (the earliest epoch reaching it)."""
        finite = {e: v for e, v in self.history.items() if math.isfinite(v)}
        if not finite:
            return None
        value = (min if lower_is_better(metric) else max)(finite.values())
        return min(e for e, v in finite.items() if v == value), value


def rank(candidates: Sequence[Candidate], metric: str) -> list[Candidate]:
    """Best first; trials without a value last; ties to the smaller model."""
    sign = -1.0 if lower_is_better(metric) else 1.0

    def key(c: Candidate) -> tuple[bool, float, float]:
        best = c.best(metric)
        return best is not None, sign * best[1] if best else 0.0, -c.size.get("params", math.inf)

    return sorted(candidates, key=key, reverse=True)


def load_search(run_dir: Path) -> dict[str, Any]:
    """``DIR/search.json``; UserError if it is missing or not a search's record."""
    path = run_dir / SEARCH_JSON
    if not path.is_file():
        raise UserError(
            f"{path}: no such file; --run-dir must be the run directory of a search "
            "(python -m mrnet_ray.tune ... --run-dir DIR)"
        )
    try:
        search = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); it is written by mrnet_ray.tune") from None
    missing = [k for k in REQUIRED if not isinstance(search, dict) or k not in search]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(missing)}; it is written by mrnet_ray.tune")
    return search


class StoreUnavailable(Exception):
    """The MLflow store cannot list the search's trials; the message says why."""


def from_mlflow(search: dict[str, Any], uri: str, metric: str) -> list[Candidate]:
    """The search's trial runs with each one's history of ``metric``."""
    from mlflow.exceptions import MlflowException

    from mrnet_ray import tracking

    missing = tracking.missing_local_store(uri)
    if missing:
        raise StoreUnavailable(f"no store file {missing}")
    parent = search.get("parent_run_id")
    if not parent:
        raise StoreUnavailable(f"{SEARCH_JSON} names no search run")
    try:
        tracking.check_reachable(uri)
        runs = tracking.list_trial_runs(uri, search["experiment"], parent)
        histories = tracking.metric_histories(uri, [r.run_id for r in runs], metric)
    except (UserError, MlflowException, OSError) as e:
        raise StoreUnavailable(" ".join(str(e).split())[:300]) from None
    if not runs:
        raise StoreUnavailable(f"no trial runs under search run {parent}")
    return [
        Candidate(
            r.trial_id,
            r.status.lower(),
            histories[r.run_id],
            dict(r.params),
            {k: r.metrics[k] for k in ("params", "flops") if k in r.metrics},
            r.run_id,
        )
        for r in runs
    ]


def _flattener(search: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, str]]:
    """Drawn Tune config -> flat TrialConfig, as the MLflow params have it (needs the space
    file and the prepared data; without them, the drawn values as they are)."""
    from mrnet_ray.data import open_prepared
    from mrnet_ray.search_space import SearchSpace, load_space

    try:
        space = load_space(search["space"])
        prepared = open_prepared(search["data"])
    except (UserError, KeyError):
        return lambda config: {k: str(v) for k, v in config.items()}
    n_mels, n_classes = prepared.feature.n_mels, len(prepared.labels)

    def flat(config: dict[str, Any]) -> dict[str, str]:
        try:
            trial = space.to_trial(config, n_mels=n_mels, n_classes=n_classes)
        except (KeyError, ValueError, UserError):
            return {k: str(v) for k, v in config.items()}
        return {k: str(v) for k, v in SearchSpace.flat_params(trial).items()}

    return flat


def from_results(search: dict[str, Any], metric: str) -> list[Candidate]:
    """The trials as Tune's experiment state in the run directory records them."""
    from ray.tune import ExperimentAnalysis

    path = search["experiment_path"]
    try:
        analysis = ExperimentAnalysis(path)
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(
            f"{path}: no readable Tune results ({' '.join(str(e).split())[:200]}); "
            "and the MLflow store is unavailable, so there is nothing to rank"
        ) from None
    flat = _flattener(search)
    out = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        columns = getattr(frame, "columns", ())
        history: dict[int, float] = {}
        if metric in columns and "epoch" in columns:
            pairs = zip(frame["epoch"], frame[metric], strict=True)
            history = {int(e): float(v) for e, v in pairs if v == v}  # v == v drops NaN
        size = {k: float(frame[k].iloc[-1]) for k in ("params", "flops") if k in columns}
        config = {k: v for k, v in trial.config.items() if not k.startswith("_")}
        out.append(Candidate(trial.trial_id, trial.status.lower(), history, flat(config), size))
    return out


def human(n: float) -> str:
    """Compact count: 18.2k, 1.71M, 3.05G."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _cell(value: str | None) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.3g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def ranking_table(ranked: Sequence[Candidate], metric: str, top: int) -> str:
    headers = ["rank", "trial", metric, "epoch", "params", "FLOPs", *COLUMNS, "status"]
    rows = []
    for i, c in enumerate(ranked[:top], start=1):
        best = c.best(metric)
        rows.append(
            [
                str(i),
                c.trial_id,
                f"{best[1]:.4f}" if best else "-",
                str(best[0]) if best else "-",
                human(c.size["params"]) if "params" in c.size else "-",
                human(c.size["flops"]) if "flops" in c.size else "-",
                *(_cell(c.params.get(key)) for key in COLUMNS.values()),
                c.status,
            ]
        )
    return format_table(headers, rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mrnet-ray best", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--run-dir", required=True, help="the search's run directory (search.json)")
    p.add_argument("--metric", default="valid_track_acc", help="rank by (default %(default)s)")
    p.add_argument("--top", type=int, default=10, help="rows to show (default %(default)s)")
    p.add_argument(
        "--export", nargs="?", const="", metavar="OUT_DIR",
        help="export the best trial as a bundle to OUT_DIR (default RUN_DIR/best)",
    )  # fmt: skip
    p.add_argument("--register-name", help="registered model (default mrnet-<search name>)")
    p.add_argument("--alias", default="champion", help="alias to move on an improvement")
    p.add_argument("--mlflow-uri", help="tracking store (default: the search's, in search.json)")
    return p


@cli
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.top < 1:
        raise UserError(f"--top {args.top}: must be >= 1")
    run_dir = Path(args.run_dir).expanduser().resolve()
    search = load_search(run_dir)
    uri = args.mlflow_uri or search["tracking_uri"]
    try:
        candidates = from_mlflow(search, uri, args.metric)
        source, store = f"MLflow {uri}", True
    except StoreUnavailable as e:
        print(
            f"note: MLflow at {uri} is unavailable ({e}); ranking from the Ray results",
            file=sys.stderr,
        )
        candidates = from_results(search, args.metric)
        source, store = f"Ray results {search['experiment_path']}", False
    ranked = rank(candidates, args.metric)
    if not ranked or ranked[0].best(args.metric) is None:
        raise UserError(
            f"--metric {args.metric}: no trial of search {search['name']} reported it; use "
            "valid_track_acc, valid_acc, valid_macro_f1, valid_loss, params or flops"
        )
    direction = "lowest" if lower_is_better(args.metric) else "highest"
    print(
        f"search {search['name']}: {len(ranked)} trials by {direction} {args.metric} over "
        f"epochs (from {source})\n{ranking_table(ranked, args.metric, args.top)}"
    )
    if args.export is None:
        return
    from mrnet_ray.export import export_winner

    out = Path(args.export).expanduser() if args.export else run_dir / "best"
    name = args.register_name or f"mrnet-{search['name']}"
    export_winner(
        search, run_dir, ranked[0], args.metric, out, name, args.alias, uri if store else None
    )


if __name__ == "__main__":
    main()
