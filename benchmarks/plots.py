"""The benchmark report's figures (``report.py`` renders them beside ``RESULTS.md``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def search_plot(search: dict, path: Path) -> None:
    """Best validation accuracy so far against wall time: one line per search, a colour per
    arm."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for (arm, reps), colour in zip(
        search["arms"].items(), ("tab:blue", "tab:orange"), strict=False
    ):
        for i, r in enumerate(reps):
            if not r["curve"]:
                continue
            t, best = zip(*r["curve"], strict=True)
            ax.step([0, *t, r["wall_s"]], [0, *best, best[-1]], where="post", color=colour,
                    alpha=0.8, label=arm if i == 0 else None)  # fmt: skip
    target = search["summary"]["target"]["best"]
    ax.axhline(target, color="gray", linestyle="--", linewidth=1,
               label="random + FIFO's median best")  # fmt: skip
    ax.set_xlabel("wall time since the search started, s")
    ax.set_ylabel("best validation track accuracy so far")
    ax.set_title(f"Search efficiency, demo corpus, {search['trials']} trials per search")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def quality_plot(quality: dict, path: Path) -> None:
    """Left: test accuracy (mean, seeds as dots) per model and the anchor; right: mean
    validation learning curves."""
    fig = Figure(figsize=(10, 4.0), layout="constrained")
    bars, curves = fig.subplots(1, 2)
    names = list(quality["models"])
    means = [quality["models"][n]["test_track_acc_mean"] for n in names]
    bars.bar(names, means, color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
    for i, name in enumerate(names):
        accs = [r["test_track_acc"] for r in quality["runs"] if r["arch"] == name]
        bars.scatter([i] * len(accs), accs, color="black", zorder=3, s=14)
    anchor = quality["anchor"]["test_track_acc"]
    bars.axhline(anchor, color="gray", linestyle="--", label="log-mel stats + logistic regression")
    bars.axhline(1 / quality["classes"], color="red", linestyle=":", label="chance")
    bars.set_ylim(0, 1)
    bars.set_ylabel("test track accuracy")
    bars.set_title(f"{quality['epochs']} epochs, {quality['seeds']} seeds (dots)")
    bars.legend(loc="lower right", fontsize=8)
    for name in names:
        curve = quality["models"][name]["valid_curve_mean"]
        curves.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation track accuracy (mean over seeds)")
    curves.set_ylim(0, 1)
    curves.grid(alpha=0.3)
    curves.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def recipe_plot(corpora: dict[str, dict], path: Path) -> None:
    """Test track accuracy per recipe (seeds as dots), one panel per corpus, its linear
    baseline dashed."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(corpora), squeeze=False)[0]
    for ax, (corpus, r) in zip(axes, corpora.items(), strict=True):
        names = list(r["variants"])
        means = [r["variants"][n]["test_track_acc_mean"] for n in names]
        ax.barh(names, means, color="tab:blue")
        for i, name in enumerate(names):
            accs = [x["test_track_acc"] for x in r["runs"] if x["variant"] == name]
            ax.scatter(accs, [i] * len(accs), color="black", zorder=3, s=12)
        ax.axvline(r["baseline"]["test_track_acc"], color="gray", linestyle="--",
                   label="log-mel stats + logistic regression")  # fmt: skip
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("test track accuracy")
        ax.set_title(corpus)
        ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110)
