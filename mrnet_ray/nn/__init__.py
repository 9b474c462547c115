"""The MRNet family in PyTorch: blocks (``layers``), networks (``models``), their cost (``cost``).

Every network maps log-mel segments ``(batch, n_mels, frames)`` to logits ``(batch,
n_classes)``; :func:`build_model` picks one by ``MRNetConfig.arch``.
"""

from mrnet_ray.nn.cost import ModelCost, count_parameters, model_cost
from mrnet_ray.nn.models import build_model, model_from_weights

__all__ = ["ModelCost", "build_model", "count_parameters", "model_cost", "model_from_weights"]
