"""Building blocks of the MRNet family: ECAPA-TDNN's 1-D blocks, MRNet's multi-route block and
the 2-D residual block of the short-chunk CNN baseline.

The 1-D blocks follow ECAPA-TDNN (Desplanques et al. 2020, as in speechbrain's
``ECAPA_TDNN.py``): mel bands are channels, time is the convolution axis, and every block
maps ``(batch, channels, frames)`` to the same number of frames ('same' zero padding), so any
input length works. :class:`MultiRouteRes2Block` is our reconstruction of MRNet's
multi-route Res2Block (Heo et al. 2025) from its abstract; see its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class TDNNBlock(nn.Module):
    """Conv1d (odd kernel, dilation, 'same' zero padding) -> ReLU -> BatchNorm1d.

    >>> TDNNBlock(16, 24, kernel_size=3, dilation=2)(torch.randn(2, 16, 37)).shape
    torch.Size([2, 24, 37])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd and >= 1 ('same' padding)")
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, dilation=dilation, padding=padding
        )
        self.relu = nn.ReLU()
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in_channels, frames)`` -> ``(batch, out_channels, frames)``."""
        return self.norm(self.relu(self.conv(x)))


class Res2Conv(nn.Module):
    """Res2Net's hierarchical conv (Gao et al. 2019) with dilation, as in ECAPA-TDNN.

    Channels split into ``scale`` chunks: ``y0 = x0``, ``y1 = f1(x1)``,
    ``yi = fi(xi + y(i-1))``; the concatenation mixes receptive fields of 1 to scale-1 convs.
    ``scale=1`` is one plain :class:`TDNNBlock` over all channels (Res2Net's convention).

    >>> Res2Conv(32, scale=4, kernel_size=3, dilation=3)(torch.randn(2, 32, 41)).shape
    torch.Size([2, 32, 41])
    """

    def __init__(self, channels: int, scale: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        if scale < 1 or channels % scale != 0:
            raise ValueError(f"scale={scale} must be >= 1 and divide channels={channels}")
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(
            TDNNBlock(width, width, kernel_size, dilation) for _ in range(max(1, scale - 1))
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels, frames)`` -> ``(batch, channels, frames)``."""
        if self.scale == 1:
            return self.convs[0](x)
        chunks = torch.chunk(x, self.scale, dim=1)  # scale x (batch, channels/scale, frames)
        y = chunks[0]  # the first chunk passes through untouched
        out = [y]
        for i, conv in enumerate(self.convs):
            y = conv(chunks[1] if i == 0 else chunks[i + 1] + y)
            out.append(y)
        return torch.cat(out, dim=1)  # (batch, channels, frames)


class SEBlock(nn.Module):
    """Squeeze-excitation: time-mean -> 1x1 conv C->se -> ReLU -> 1x1 conv se->C -> sigmoid.

    >>> SEBlock(16, se_channels=4)(torch.randn(2, 16, 37)).shape
    torch.Size([2, 16, 37])
    """

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv1d(channels, se_channels, 1)
        self.relu = nn.ReLU()
        self.excite = nn.Conv1d(se_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels, frames)`` -> same shape, each channel scaled by a gate in (0, 1)."""
        s = x.mean(dim=2, keepdim=True)  # (batch, channels, 1)
        gate = torch.sigmoid(self.excite(self.relu(self.squeeze(s))))  # (batch, channels, 1)
        return x * gate


class MultiRouteRes2Block(nn.Module):
    """MRNet's multi-route Res2Block (our reconstruction from Heo et al. 2025's abstract).

    1x1 TDNN in -> R parallel routes on that shared input, route r being ``route_depths[r]``
    stacked :class:`Res2Conv` layers -> concat of the R route outputs -> 1x1 TDNN merge back
    to C -> :class:`SEBlock` -> plus the input (residual). Routes of depth 1, 2, 3 give low-,
    mid- and high-level features of the same input at once, as the abstract describes.

    With ``route_depths=(1,)`` the merge conv is a C->C 1x1 TDNN and the block is exactly
    ECAPA-TDNN's SE-Res2 block (1x1 TDNN -> Res2 -> 1x1 TDNN -> SE, plus residual), with
    ECAPA's parameter count.

    Routes do not share layers. A prefix-sharing tree (the depth-3 route continuing from the
    depth-2 route's output) would save ``sum(depths) - max(depths)`` Res2 layers, but then the
    block is one deep stack with taps rather than the separate branches the abstract
    describes; separate weights let a shallow route learn features meant to be used directly
    while the first layers of a deep route learn intermediate ones, and a repeated depth such
    as ``(2, 2)`` becomes two distinct branches instead of a duplicate. The saving is modest:
    at C=512, s=8, k=3 one Res2 layer costs a third of a C->C 1x1 conv, and the R*C->C merge
    conv dominates the block either way.

    >>> block = MultiRouteRes2Block(32, (1, 2, 3), kernel_size=3, dilation=2, res2_scale=4,
    ...                             se_channels=8)
    >>> block(torch.randn(2, 32, 37)).shape
    torch.Size([2, 32, 37])
    >>> len(block.routes), [len(route) for route in block.routes]
    (3, [1, 2, 3])
    """

    def __init__(
        self,
        channels: int,
        route_depths: Sequence[int],
        kernel_size: int = 3,
        dilation: int = 1,
        res2_scale: int = 8,
        se_channels: int = 128,
    ) -> None:
        super().__init__()
        if len(route_depths) < 1 or any(d < 1 for d in route_depths):
            raise ValueError(f"route_depths={tuple(route_depths)} must be one or more depths >= 1")
        self.tdnn_in = TDNNBlock(channels, channels, 1)
        self.routes = nn.ModuleList(
            nn.Sequential(
                *(Res2Conv(channels, res2_scale, kernel_size, dilation) for _ in range(depth))
            )
            for depth in route_depths
        )
        # The merge conv is ECAPA's second 1x1 TDNN, widened to read every route.
        self.tdnn_out = TDNNBlock(len(route_depths) * channels, channels, 1)
        self.se = SEBlock(channels, se_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels, frames)`` -> ``(batch, channels, frames)``."""
        h = self.tdnn_in(x)  # (batch, channels, frames)
        routes: list[Tensor] = []
        for route in self.routes:
            routes.append(route(h))
        merged = self.tdnn_out(torch.cat(routes, dim=1))  # (batch, channels, frames)
        return self.se(merged) + x


class AttentiveStatsPool(nn.Module):
    """ECAPA's attentive statistics pooling with global context.

    Attention weights over time come from ``[x, mean(x), std(x)]`` (the utterance-level
    statistics repeated over time), one softmax per channel; the output is the weighted mean
    and weighted standard deviation, concatenated.

    >>> AttentiveStatsPool(16, attention_channels=8)(torch.randn(2, 16, 37)).shape
    torch.Size([2, 32])
    """

    def __init__(self, channels: int, attention_channels: int = 128) -> None:
        super().__init__()
        self.eps = 1e-12  # variance floor before the square root
        self.tdnn = TDNNBlock(3 * channels, attention_channels, 1)
        self.tanh = nn.Tanh()
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def _stats(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted mean and std over time: ``(batch, channels)`` each."""
        mean = (weights * x).sum(dim=2)  # (batch, channels)
        # torch.std's backward is unstable near zero variance; clamp before the sqrt instead.
        var = (weights * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2)  # (batch, channels)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels, frames)`` -> ``(batch, 2 * channels)``."""
        uniform = torch.ones_like(x[:, :1, :]) / x.shape[2]  # (batch, 1, frames)
        mean, std = self._stats(x, uniform)
        context = torch.cat(
            [x, mean.unsqueeze(2).expand_as(x), std.unsqueeze(2).expand_as(x)], dim=1
        )  # (batch, 3 * channels, frames)
        scores = self.conv(self.tanh(self.tdnn(context)))  # (batch, channels, frames)
        weights = torch.softmax(scores, dim=2)
        mean, std = self._stats(x, weights)
        return torch.cat([mean, std], dim=1)  # (batch, 2 * channels)


class ResBlock2d(nn.Module):
    """The short-chunk ResNet's block (Won et al. 2020, ``Res_2d`` in
    minzwon/sota-music-tagging-models): 3x3 conv stride 2 -> BN -> ReLU -> 3x3 conv -> BN,
    plus a strided 3x3 conv + BN shortcut, then ReLU.

    The stride-2 convs halve frequency and time (rounding up), like a 2x2 max pool would, so
    seven blocks shrink 128 mel bands to one and any input size of at least 1 works.

    >>> ResBlock2d(1, 8)(torch.randn(2, 1, 16, 37)).shape
    torch.Size([2, 8, 8, 19])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in_channels, freq, time)`` -> ``(batch, out_channels, ⌈freq/2⌉, ⌈time/2⌉)``."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))
