"""Take the winner of a search: rank its trials, and export the best one (``export.py``).

    python -m mrnet_ray.best --run-dir DIR [--metric valid_track_acc] [--top N]
        [--export [OUT_DIR]] [--confirm K] [--seeds N] [--register-name NAME]
        [--alias champion] [--mlflow-uri URI]

The search is the one ``python -m mrnet_ray.tune`` ran in ``DIR`` (its ``search.json``). Trials
come from its MLflow runs, else from Tune's results (:mod:`mrnet_ray.export.candidates`); each
scores the best value of ``--metric`` over its epochs, in the order of :mod:`mrnet_ray.ranking`.

``--export`` (default ``DIR/best``) first confirms the winner: the top ``--confirm`` (3)
configurations are trained again with ``--seeds`` (3) new seeds each and the best mean wins
(:mod:`mrnet_ray.search.confirm`; ``--confirm 0`` takes the single best trial), and the winner
is trained once more on train + valid for the epochs its runs needed
(:mod:`mrnet_ray.search.refit`; ``--no-final-fit`` exports the chosen run itself). It then
writes the winner as a bundle, evaluated once on the test split, and registers it in MLflow; see
:mod:`mrnet_ray.export.winner` for the checkpoint it takes and :mod:`mrnet_ray.export.champion`
for the rule that moves the ``--alias``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mrnet_ray import ranking
from mrnet_ray.errors import UserError, cli
from mrnet_ray.export.candidates import data_baseline, load_candidates, ranking_table
from mrnet_ray.search.record import read_record


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
    p.add_argument(
        "--confirm", type=int, default=3, metavar="K",
        help="retrain the top K configurations with new seeds before export; 0: no (default 3)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="new seeds each (3)")
    p.add_argument(
        "--no-final-fit", action="store_true",
        help="export the chosen run as it is, not retrained on train + valid",
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
    if args.confirm < 0 or args.seeds < 1:
        raise UserError(f"--confirm {args.confirm} --seeds {args.seeds}: need K >= 0, N >= 1")
    direction = "highest" if ranking.mode(args.metric) == "max" else "lowest"
    run_dir = Path(args.run_dir).expanduser().resolve()
    search = read_record(run_dir)
    uri = args.mlflow_uri or search["tracking_uri"]
    from mrnet_ray.tracking.store import check_credentials  # MLflow loads only here

    check_credentials(uri)  # refused credentials stop here; a store that is down is ranked around
    ranked, source, store = load_candidates(search, uri, args.metric)
    baseline = data_baseline(search["data"])
    print(
        f"search {search['name']}: {len(ranked)} trials by {direction} {args.metric} over "
        f"epochs (from {source})\n{ranking_table(ranked, args.metric, args.top, baseline)}"
    )
    if args.export is None:
        return
    from mrnet_ray.export.winner import choose, export_winner

    refit = not args.no_final_fit
    choice = choose(search, run_dir, ranked, args.metric, args.confirm, args.seeds, refit)
    if choice is None:
        print("interrupted; run the same command again to finish the confirmation")
        raise SystemExit(130)
    out = Path(args.export).expanduser() if args.export else run_dir / "best"
    name = args.register_name or f"mrnet-{search['name']}"
    uri = uri if store else None
    export_winner(search, run_dir, choice, args.metric, out, name, args.alias, uri)


if __name__ == "__main__":
    main()
