"""Training checkpoints: one ``state.pt`` of plain types and tensors per directory.

The state dict (written each epoch by the training loop) holds ``model`` (unwrapped state dict),
``optimizer``, ``scheduler``, ``epoch`` (completed epochs), ``trial``
(``TrialConfig.to_dict()``), ``feature`` (``FeatureConfig.to_dict()``), ``labels``,
``metrics`` (the last epoch's), ``history`` (every epoch's metrics) and
``valid_confusion`` (the last epoch's track-level confusion matrix as nested lists). With
``train.ema_decay`` on, ``model`` is the moving average of the weights (what was evaluated and
what is exported), ``trained_model`` the trained weights and ``ema_steps`` the steps averaged.
Only plain types are stored, so :func:`load_checkpoint` can use
``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mrnet_ray.config import FeatureConfig, TrialConfig
from mrnet_ray.errors import UserError

STATE_FILE = "state.pt"


def save_checkpoint(state: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``state`` to ``directory/state.pt`` (atomically: a reader never sees half a file)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (STATE_FILE + ".partial")
    torch.save(state, partial)
    return partial.replace(directory / STATE_FILE)


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """The state dict saved in ``directory``, tensors on the CPU."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UserError(
            f"{directory}: not a training checkpoint (no {STATE_FILE}); "
            "pass a checkpoint directory written by `mrnet-ray train`"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not how pickle failed
        # torch's refusal spans lines and advises weights_only=False; name only what it refused
        refused = re.search(r"WeightsUnpickler error: (.*?)\.?(?:\. |\n|$)", str(e))
        if refused:
            raise UserError(
                f"{path}: refused: holds more than tensors and plain values ({refused.group(1)}); "
                "load only checkpoints written by `mrnet-ray train`"
            ) from None
        detail = " ".join(str(e).split())
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {detail})") from None


def model_from_checkpoint(
    directory: str | os.PathLike,
) -> tuple[nn.Module, TrialConfig, FeatureConfig, tuple[str, ...]]:
    """Rebuild the trained model (eval mode, CPU) with its trial, feature settings and labels."""
    from mrnet_ray.nn import model_from_weights  # the model module is heavy; import on use

    state = load_checkpoint(directory)
    try:
        trial = TrialConfig.from_dict(state["trial"])
        feature = FeatureConfig.from_dict(state["feature"])
        labels = tuple(state["labels"])
        weights = state["model"]
    except (KeyError, ValueError) as e:
        raise UserError(f"{directory}: checkpoint lacks or has a bad entry: {e}") from None
    return model_from_weights(trial.model, weights, str(directory)), trial, feature, labels
