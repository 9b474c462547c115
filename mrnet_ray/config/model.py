"""The network: MRNet and the same-harness baselines read the same fields.

>>> MRNetConfig(channels=64, res2_scale=4).route_depths
((1, 2, 3), (1, 2, 3), (1, 2, 3))
>>> MRNetConfig.from_dict({"dilations": [2, 3], "route_depths": [[1], [1, 2]]}).dilations
(2, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from mrnet_ray.config.base import Config, check

Arch = Literal["mrnet", "ecapa", "shortchunk"]


@dataclass(frozen=True)
class MRNetConfig(Config):
    """The network. ``arch`` picks MRNet or a baseline; all read the same fields.

    Defaults are the full-size (GPU) model, ECAPA-TDNN's C=512 widths with MRNet's routes.
    """

    arch: Arch = "mrnet"
    """'mrnet' (multi-route Res2 blocks), 'ecapa' (one route of depth 1: ECAPA-TDNN's
    SE-Res2 block) or 'shortchunk' (2-D short-chunk ResNet CNN of Won et al. 2020)."""
    n_mels: int = 128
    """Input mel bands, i.e. the 1-D convs' input channels; must match the prepared data."""
    n_classes: int = 10
    """Number of output classes (logits)."""
    channels: int = 512
    """Width C of the stem and of every block."""
    stem_kernel: int = 5
    """Kernel size of the stem conv (odd)."""
    dilations: tuple[int, ...] = (2, 3, 4)
    """Dilation of each block, one per block; sets how far in time each block looks."""
    route_depths: tuple[tuple[int, ...], ...] = ((1, 2, 3), (1, 2, 3), (1, 2, 3))
    """Per block, the depth (stacked Res2 convs) of each route. ((1,), ...) is ECAPA."""
    res2_scale: int = 8
    """Res2 scale s: channels split into s chunks of hierarchical convs; must divide channels."""
    kernel_size: int = 3
    """Kernel size of the Res2 convs (odd)."""
    se_channels: int = 128
    """Bottleneck width of the squeeze-excitation blocks."""
    attention_channels: int = 128
    """Hidden width of attentive statistics pooling."""
    embedding_dim: int = 192
    """Size of the embedding before the classifier."""
    dropout: float = 0.0
    """Dropout before the classifier."""

    def __post_init__(self) -> None:
        check(
            self.arch in get_args(Arch),
            "arch",
            f"arch={self.arch!r} must be one of {get_args(Arch)}",
        )
        check(self.n_mels >= 1, "n_mels", f"n_mels={self.n_mels} must be >= 1")
        check(self.n_classes >= 2, "n_classes", f"n_classes={self.n_classes} must be >= 2")
        check(self.channels >= 4, "channels", f"channels={self.channels} must be >= 4")
        check(
            self.stem_kernel >= 1 and self.stem_kernel % 2 == 1,
            "stem_kernel",
            f"stem_kernel={self.stem_kernel} must be odd and >= 1",
        )
        check(
            self.kernel_size >= 1 and self.kernel_size % 2 == 1,
            "kernel_size",
            f"kernel_size={self.kernel_size} must be odd and >= 1",
        )
        check(len(self.dilations) >= 1, "dilations", "dilations must name at least one block")
        check(
            all(isinstance(d, int) and d >= 1 for d in self.dilations),
            "dilations",
            f"dilations={self.dilations} must be integers >= 1",
        )
        check(
            len(self.route_depths) == len(self.dilations),
            "route_depths",
            f"route_depths has {len(self.route_depths)} blocks but dilations has "
            f"{len(self.dilations)}; give one tuple of route depths per block",
        )
        for i, routes in enumerate(self.route_depths):
            check(
                isinstance(routes, tuple) and len(routes) >= 1,
                "route_depths",
                f"route_depths[{i}]={routes!r} must be a non-empty list of route depths",
            )
            check(
                all(isinstance(d, int) and d >= 1 for d in routes),
                "route_depths",
                f"route_depths[{i}]={routes} must be integers >= 1 (a depth-0 route has no convs)",
            )
        check(self.res2_scale >= 1, "res2_scale", f"res2_scale={self.res2_scale} must be >= 1")
        check(
            self.channels % self.res2_scale == 0,
            "res2_scale",
            f"res2_scale={self.res2_scale} must divide channels={self.channels}",
        )
        check(self.se_channels >= 1, "se_channels", f"se_channels={self.se_channels} must be >= 1")
        check(
            self.attention_channels >= 1,
            "attention_channels",
            f"attention_channels={self.attention_channels} must be >= 1",
        )
        check(
            self.embedding_dim >= 1,
            "embedding_dim",
            f"embedding_dim={self.embedding_dim} must be >= 1",
        )
        check(0.0 <= self.dropout < 1.0, "dropout", f"dropout={self.dropout} must be in [0, 1)")

    @property
    def n_blocks(self) -> int:
        return len(self.dilations)
