"""``MODEL_CARD.md`` of an exported bundle: data, split, metrics, config, lineage, use, credits.

The card follows the sections of Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019),
trimmed to what a search knows about its model.

>>> card = render_card(CardFacts(
...     title="mrnet-demo", manifest={"dataset": "gtzan", "counts": {}, "labels": ["a", "b"]},
...     prepared="data/gtzan", trial={"model": {"arch": "mrnet"}, "train": {"lr": 0.001}},
...     valid={"valid_track_acc": 0.9}, test={"test_track_acc": 0.8}, per_class={},
...     lineage={"search": "s"}, params=1000, flops=2_000_000))
>>> card.splitlines()[0], "Tzanetakis" in card
('# mrnet-demo', True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PAPERS = (
    'MRNet: Heo et al., "MRNet: A multi-route convolutional neural network for robust music '
    'representation learning", J. Acoust. Soc. Korea 44(5):516-523, 2025, '
    "DOI 10.7776/ASK.2025.44.5.516 (architecture reconstructed from its abstract).",
    'ECAPA-TDNN: B. Desplanques, J. Thienpondt and K. Demuynck, "ECAPA-TDNN: Emphasized Channel '
    'Attention, Propagation and Aggregation in TDNN Based Speaker Verification", Interspeech 2020.',
    'Short-chunk CNN baseline: M. Won et al., "Evaluation of CNN-based automatic music tagging '
    'models", SMC 2020.',
)
DATASETS = {
    "gtzan": 'GTZAN: G. Tzanetakis and P. Cook, "Musical genre classification of audio '
    'signals", IEEE Trans. Speech and Audio Processing 10(5), 2002; fault-filtered split of '
    'C. Kereliuk, B. Sturm and J. Larsen, "Deep learning and music adversaries", IEEE Trans. '
    "Multimedia 17(11), 2015.",
    "fma": 'FMA: M. Defferrard, K. Benzi, P. Vandergheynst and X. Bresson, "FMA: A Dataset for '
    'Music Analysis", ISMIR 2017.',
    "melon": 'Melon Playlist Dataset: A. Ferraro et al., "Melon Playlist Dataset: a public '
    'dataset for audio-based playlist generation and music tagging", ICASSP 2021.',
    "demo": "Demo corpus: scores of the music21 corpus (M. Cuthbert and C. Ariza, ISMIR 2010) "
    "rendered with FluidSynth and a General MIDI soundfont; see the corpus's corpus.json for "
    "the sources and their licences (some are for non-commercial use only).",
    "folder": "Audio folders supplied by the user: credit their sources here.",
}
METRIC_NAMES = {
    "track_acc": "track accuracy (mean segment logits per track)",
    "acc": "segment accuracy",
    "macro_f1": "track macro-F1",
    "loss": "cross-entropy per segment",
}


@dataclass(frozen=True)
class CardFacts:
    """What the card reports; ``best --export`` gathers it."""

    title: str
    manifest: Mapping[str, Any]
    """The prepared directory's manifest.json."""
    prepared: str
    trial: Mapping[str, Mapping[str, Any]]
    """``TrialConfig.to_dict()``."""
    valid: Mapping[str, float]
    """The checkpoint's validation metrics (``valid_*``)."""
    test: Mapping[str, float]
    """``test_*`` metrics of the one evaluation at export."""
    per_class: Mapping[str, Mapping[str, float]]
    """Class -> precision, recall, f1, support on test tracks."""
    lineage: Mapping[str, Any]
    params: int
    flops: int
    chosen_by: str = ""
    """How the exported run was chosen, in words."""
    confirmation: Sequence[Mapping[str, Any]] = ()
    """The confirmation's table (``Confirmed.to_json()`` rows), best mean first."""
    baseline: str = ""
    """How it compares with the data's linear baseline: a sentence."""
    trained_on: str = "train"
    """The splits the exported weights were trained on."""


def _plain(v: Any) -> str:
    """Config values as in config.json: ``[2, 3]``, ``null``, ``true``."""
    return v if isinstance(v, str) else json.dumps(v)


def _number(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _metrics_table(facts: CardFacts) -> list[str]:
    lines = ["| metric | validation | test |", "|---|---|---|"]
    for key, name in METRIC_NAMES.items():
        valid, test = facts.valid.get(f"valid_{key}"), facts.test.get(f"test_{key}")
        if valid is None and test is None:
            continue
        cells = [_number(v) if v is not None else "-" for v in (valid, test)]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines


def _data_section(facts: CardFacts) -> list[str]:
    m = facts.manifest
    counts = m.get("counts", {})
    lines = [
        f"- dataset: `{m.get('dataset', '?')}` from `{m.get('root', '?')}`",
        f"- prepared data: `{facts.prepared}`, content hash `{m.get('content_hash', '?')}`",
        f"- classes ({len(m.get('labels', []))}): {', '.join(m.get('labels', []))}",
        "",
        "| split | tracks | segments |",
        "|---|---|---|",
    ]
    lines += [
        f"| {split} | {c.get('tracks', 0)} | {c.get('segments', 0)} |"
        for split, c in counts.items()
    ]
    skipped = len(m.get("skipped", []))
    if skipped:
        lines += ["", f"{skipped} source file(s) were left out at preparation (manifest.json)."]
    return lines


def _choice_section(facts: CardFacts) -> list[str]:
    if not facts.chosen_by:
        return []
    lines = ["## How it was chosen", "", f"Chosen by {facts.chosen_by}."]
    if facts.confirmation:
        lines += [
            "",
            "| search trial | seeds | valid track acc per seed | mean | sd | params |",
            "|---|---|---|---|---|---|",
        ]
        for row in facts.confirmation:
            scores = ", ".join(f"{v:.4f}" for v in row["valid_track_acc"])
            seeds = ", ".join(str(s) for s in row["seeds"])
            lines.append(
                f"| {row['trial']} | {seeds} | {scores} | {row['mean']:.4f} | {row['sd']:.4f} | "
                f"{int(row['params']):,} |"
            )
    return [*lines, ""]


def render_card(facts: CardFacts) -> str:
    """The card's Markdown text."""
    model, train = facts.trial.get("model", {}), facts.trial.get("train", {})
    dataset = str(facts.manifest.get("dataset", ""))
    test_tracks = facts.manifest.get("counts", {}).get("test", {}).get("tracks", "?")
    lines = [
        f"# {facts.title}",
        "",
        f"A `{model.get('arch', '?')}` music classifier over log-mel segments, chosen by an "
        "architecture search (mrnet_ray), exported with its weights (safetensors), TorchScript "
        "and ONNX forms.",
        "",
        "## Data",
        "",
        *_data_section(facts),
        "",
        "## Split and evaluation",
        "",
        "The trial was chosen and its checkpoint picked on the validation split; the test split "
        f"({test_tracks} tracks) was used once, at export. A track's prediction is the arg-max "
        f"of its segments' mean logits. The exported weights were trained on {facts.trained_on}"
        + (
            "; its validation figure is the selection's (the fit itself trained on valid)."
            if facts.trained_on != "train"
            else "."
        ),
        "",
        *_metrics_table(facts),
        "",
        f"Size: {facts.params:,} parameters, {facts.flops:,} FLOPs per segment forward.",
        "",
        *([facts.baseline, ""] if facts.baseline else []),
        *_choice_section(facts),
    ]
    if facts.per_class:
        lines += ["", "| class | precision | recall | F1 | test tracks |", "|---|---|---|---|---|"]
        lines += [
            f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
            f"{int(r['support'])} |"
            for name, r in facts.per_class.items()
        ]
        lines += ["", "![track-level confusion matrix (test)](confusion_matrix.png)"]
    lines += ["", "## Configuration", "", "| field | value |", "|---|---|"]
    lines += [f"| model.{k} | {_plain(v)} |" for k, v in model.items()]
    lines += [f"| train.{k} | {_plain(v)} |" for k, v in train.items()]
    lines += ["", "## Lineage", ""]
    lines += [f"- {k}: `{v}`" for k, v in facts.lineage.items()]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- Classifies music clips into the classes above, from audio decoded and cut exactly as "
        "at preparation (`python -m mrnet_ray.predict BUNDLE AUDIO...`; `config.json` holds "
        "the feature settings).",
        "- It knows only these classes: any input gets one of them, so out-of-domain audio "
        "(speech, other genres) still gets a confident-looking label.",
        "- Test metrics come from one split of one dataset; small test sets give wide "
        "uncertainty, and accuracy on other recordings, eras or cultures may be far lower.",
        "- Not for decisions about people or for content moderation.",
        "",
        "## Credits",
        "",
        *(f"- {p}" for p in PAPERS),
        f"- {DATASETS.get(dataset, f'Dataset `{dataset}`: credit its authors.')}",
    ]
    return "\n".join(lines) + "\n"
