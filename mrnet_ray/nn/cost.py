"""What a configuration costs: trainable parameters and forward FLOPs per segment.

>>> cost = model_cost(MRNetConfig(arch="ecapa", n_mels=16, channels=16, res2_scale=4), 20)
>>> cost.params > 0 and cost.flops > 0
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mrnet_ray.config import MRNetConfig
from mrnet_ray.nn.models import build_model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of one configuration."""

    params: int
    """Trainable parameters."""
    flops: int
    """FLOPs of one eval-mode forward pass of one ``(1, n_mels, frames)`` segment, as
    ``torch.utils.flop_counter.FlopCounterMode`` counts them (2 per multiply-add of convs and
    matmuls; element-wise ops are not counted)."""


def model_cost(cfg: MRNetConfig, frames: int) -> ModelCost:
    """Parameters and forward FLOPs of ``cfg``'s model on one segment of ``frames`` frames."""
    if frames < 1:
        raise ValueError(f"frames={frames} must be >= 1")
    model = build_model(cfg).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, cfg.n_mels, frames))
    return ModelCost(params=count_parameters(model), flops=counter.get_total_flops())
