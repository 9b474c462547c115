"""Frozen configuration dataclasses: the one source of defaults and validation.

One concern, one dataclass:

- :class:`FeatureConfig` (:mod:`~mrnet_ray.config.features`): how audio becomes log-mel
  segments (used by prepare *and* predict);
- :class:`MRNetConfig` (:mod:`~mrnet_ray.config.model`): the network (MRNet and the
  same-harness baselines);
- :class:`TrainConfig`, :class:`TrialConfig` and :class:`ResourcesConfig`
  (:mod:`~mrnet_ray.config.train`): one training run's optimisation and augmentation knobs,
  what a trial trains, and its workers.

This package imports neither torch nor Ray, so the CLI, the search-space checker and the
tests load it in milliseconds. Every check raises :class:`ConfigError` (a ``ValueError``)
that carries the bad field's name in ``.field`` and says it first in its message, so a user
sees ``res2_scale=5 must divide channels=64`` and not a shape error deep inside a forward pass.
"""

from mrnet_ray.config.base import Config, ConfigError
from mrnet_ray.config.features import FeatureConfig, ShortClip
from mrnet_ray.config.model import Arch, MRNetConfig
from mrnet_ray.config.train import ResourcesConfig, Schedule, TrainConfig, TrialConfig

__all__ = [
    "Arch",
    "Config",
    "ConfigError",
    "FeatureConfig",
    "MRNetConfig",
    "ResourcesConfig",
    "Schedule",
    "ShortClip",
    "TrainConfig",
    "TrialConfig",
]
