"""The MRNet family: MRNet, its ECAPA-TDNN ablation and the short-chunk CNN baseline.

From the MRNet paper (Heo et al., "MRNet: A multi-route convolutional neural network for
robust music representation learning", J. Acoust. Soc. Korea 44(5):516-523, 2025,
DOI 10.7776/ASK.2025.44.5.516; only the abstract is available to us):

- a stack of convolutional layers with *different dilation rates*, so the network looks at
  several time scales (here: one dilation per block, ``MRNetConfig.dilations``);
- the *multi-route Res2Block*, whose branches process the input to different depths to give
  low-, mid- and high-level features at once (:class:`~mrnet_ray.nn.layers.MultiRouteRes2Block`,
  ``MRNetConfig.route_depths``).

Reconstructed (not in the abstract): everything else follows ECAPA-TDNN (Desplanques et al.
2020), on which the first author's earlier music-genre work (arXiv 2211.01599) builds. Mel
bands are the 1-D convs' channels and time is the conv axis; a TDNN stem, the blocks,
multi-layer feature aggregation (all block outputs concatenated -> 1x1 TDNN to 3C),
attentive statistics pooling, BatchNorm and a linear embedding, then a linear classifier.
A learned per-band BatchNorm on the input stands in for the feature normalisation ECAPA
recipes do outside the model, so an exported model needs no separate statistics.

Every model maps ``(batch, n_mels, frames)`` float32 log-mels to ``(batch, n_classes)``
logits (no softmax), for any ``frames >= 1`` (odd counts included), and compiles with
``torch.jit.script`` and exports to ONNX with dynamic batch and frames.

>>> cfg = MRNetConfig(n_mels=16, channels=16, res2_scale=4, se_channels=8,
...                   attention_channels=8, embedding_dim=8)
>>> build_model(cfg).eval()(torch.randn(2, 16, 37)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mrnet_ray.config import MRNetConfig
from mrnet_ray.errors import UserError
from mrnet_ray.nn.layers import AttentiveStatsPool, MultiRouteRes2Block, ResBlock2d, TDNNBlock


class MRNet(nn.Module):
    """MRNet (and, with single depth-1 routes, ECAPA-TDNN) over log-mel inputs.

    input BN -> TDNN stem (n_mels -> C, ``stem_kernel``) -> one
    :class:`MultiRouteRes2Block` per entry of ``dilations`` (routes ``route_depths[i]``) ->
    concat of all block outputs -> 1x1 TDNN to 3C -> attentive statistics pooling (6C) ->
    BN -> linear embedding -> dropout -> linear logits.

    ``cfg.arch`` is not read here: :func:`build_model` turns 'ecapa' into a config whose
    blocks all have one route of depth 1, so both share this one code path.
    """

    def __init__(self, cfg: MRNetConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.input_norm = nn.BatchNorm1d(cfg.n_mels)
        self.stem = TDNNBlock(cfg.n_mels, c, cfg.stem_kernel)
        self.blocks = nn.ModuleList(
            MultiRouteRes2Block(
                c,
                routes,
                kernel_size=cfg.kernel_size,
                dilation=dilation,
                res2_scale=cfg.res2_scale,
                se_channels=cfg.se_channels,
            )
            for dilation, routes in zip(cfg.dilations, cfg.route_depths, strict=True)
        )
        # ECAPA's aggregation width is 3C (1536 for C=512) whatever the number of blocks.
        self.aggregate = TDNNBlock(cfg.n_blocks * c, 3 * c, 1)
        self.pool = AttentiveStatsPool(3 * c, cfg.attention_channels)
        self.pool_norm = nn.BatchNorm1d(6 * c)
        self.embedding = nn.Linear(6 * c, cfg.embedding_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.embedding_dim, cfg.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, n_mels, frames)`` -> ``(batch, n_classes)`` logits."""
        x = self.stem(self.input_norm(x))  # (batch, C, frames)
        outputs: list[Tensor] = []
        for block in self.blocks:
            x = block(x)  # (batch, C, frames)
            outputs.append(x)
        x = self.aggregate(torch.cat(outputs, dim=1))  # (batch, 3C, frames)
        x = self.pool_norm(self.pool(x))  # (batch, 6C)
        x = self.embedding(x)  # (batch, embedding_dim)
        return self.classifier(self.dropout(x))  # (batch, n_classes)


class ShortChunkCNN(nn.Module):
    """Short-chunk ResNet baseline (Won et al. 2020, "Evaluation of CNN-based automatic music
    tagging models", ``ShortChunkCNN_Res`` in minzwon/sota-music-tagging-models).

    The log-mel is one 2-D image: BN -> 7 :class:`ResBlock2d` (each halves frequency and time,
    rounding up) -> global max over what is left of both -> dense to ``embedding_dim`` -> BN
    -> ReLU -> dropout -> linear logits. Widths are w, w, 2w, 2w, 2w, 2w, 4w with
    ``w = channels // 4``: the default ``channels=512`` is the original's ``n_channels=128``
    (128 ... 512) and the last block is about C wide. Strided convs round up, so every length works
    (down to 1 frame); 3 s at 22,050 Hz / hop 512 (129 frames) ends with 2 time steps.
    """

    def __init__(self, cfg: MRNetConfig) -> None:
        super().__init__()
        w = cfg.channels // 4
        widths = (w, w, 2 * w, 2 * w, 2 * w, 2 * w, 4 * w)
        self.input_norm = nn.BatchNorm2d(1)
        self.blocks = nn.Sequential(
            *(
                ResBlock2d(c_in, c_out)
                for c_in, c_out in zip((1, *widths[:-1]), widths, strict=True)
            )
        )
        self.dense = nn.Linear(4 * w, cfg.embedding_dim)
        self.dense_norm = nn.BatchNorm1d(cfg.embedding_dim)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.embedding_dim, cfg.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, n_mels, frames)`` -> ``(batch, n_classes)`` logits."""
        x = self.input_norm(x.unsqueeze(1))  # (batch, 1, n_mels, frames)
        x = self.blocks(x)  # (batch, 4w, ceil(n_mels / 128), ceil(frames / 128))
        x = torch.amax(x, dim=[2, 3])  # (batch, 4w)
        x = self.relu(self.dense_norm(self.dense(x)))  # (batch, embedding_dim)
        return self.classifier(self.dropout(x))  # (batch, n_classes)


def _ecapa(cfg: MRNetConfig) -> MRNet:
    """ECAPA-TDNN = MRNet whose every block has a single route of depth 1."""
    return MRNet(cfg.replace(route_depths=((1,),) * cfg.n_blocks))


_BUILDERS: dict[str, Callable[[MRNetConfig], nn.Module]] = {
    "mrnet": MRNet,
    "ecapa": _ecapa,
    "shortchunk": ShortChunkCNN,
}


def build_model(cfg: MRNetConfig) -> nn.Module:
    """The network ``cfg.arch`` names, freshly initialised, in training mode."""
    return _BUILDERS[cfg.arch](cfg)


def model_from_weights(
    cfg: MRNetConfig, weights: Mapping[str, Tensor], where: str, fix: str = ""
) -> nn.Module:
    """``cfg``'s network with ``weights`` loaded (strictly), in eval mode: the one way a
    checkpoint or a bundle becomes a model. UserError naming ``where`` (the file the weights
    came from) and ``fix`` when they do not fit the config."""
    model = build_model(cfg)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        # torch lists every missing/unexpected key and shape; its first lines name the problem
        detail = " ".join(str(e).split())[:400]
        message = f"{where}: the stored weights do not fit the model config: {detail}"
        raise UserError(message + (f"; {fix}" if fix else "")) from None
    return model.eval()
