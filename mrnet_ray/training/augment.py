"""Training-time augmentation of log-mel batches, vectorised over the batch.

Everything here maps a ``(batch, n_mels, frames)`` float tensor to a tensor of the same
layout, draws from torch's global RNG (the training loop seeds it per worker and epoch) and
works on whatever device the batch lives on.

- :func:`random_crop`: a random window of ``frames`` per segment (a cheap time-shift
  augmentation; the network pools over time, so it evaluates on whole segments).
- :func:`spec_augment`: frequency and time masking of SpecAugment (Park et al. 2019,
  "SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition").
- :func:`mixup`: convex mixing of segment pairs and their target distributions (Zhang et al.
  2018, "mixup: Beyond Empirical Risk Minimization").

>>> x = torch.randn(4, 16, 40)
>>> random_crop(x, 32).shape
torch.Size([4, 16, 32])
>>> spec_augment(x, freq_mask=4, time_mask=8, n_masks=2).shape
torch.Size([4, 16, 40])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """A random window per segment: ``(batch, n_mels, T) -> (batch, n_mels, frames)``."""
    batch, n_mels, total = mel.shape
    if frames > total:
        raise ValueError(f"crop_frames={frames} is longer than the segments ({total} frames)")
    if frames == total:
        return mel
    start = torch.randint(0, total - frames + 1, (batch, 1), device=mel.device)
    index = start + torch.arange(frames, device=mel.device)  # (batch, frames)
    return mel.gather(2, index.unsqueeze(1).expand(batch, n_mels, frames))


def _band_mask(batch: int, size: int, widest: int, device: torch.device) -> torch.Tensor:
    """``(batch, size)`` bool: one band of width U[0, widest] at a random start per row."""
    width = torch.randint(0, min(widest, size) + 1, (batch, 1), device=device)
    # start is uniform over the positions where the band fits: floor(u * (size - width + 1))
    start = (torch.rand(batch, 1, device=device) * (size - width + 1)).long()
    pos = torch.arange(size, device=device)  # (size,)
    return (pos >= start) & (pos < start + width)


def spec_augment(
    mel: torch.Tensor, *, freq_mask: int, time_mask: int, n_masks: int
) -> torch.Tensor:
    """Mask ``n_masks`` random mel bands and ``n_masks`` random time spans per segment.

    Masked cells take the segment's mean rather than 0: log-mel values are decibels, where
    0 is a loud level, not silence.
    """
    if n_masks == 0 or (freq_mask == 0 and time_mask == 0):
        return mel
    batch, n_mels, frames = mel.shape
    masked = torch.zeros(batch, n_mels, frames, dtype=torch.bool, device=mel.device)
    for _ in range(n_masks):
        if freq_mask > 0:
            masked |= _band_mask(batch, n_mels, freq_mask, mel.device).unsqueeze(2)
        if time_mask > 0:
            masked |= _band_mask(batch, frames, time_mask, mel.device).unsqueeze(1)
    fill = mel.mean(dim=(1, 2), keepdim=True).expand_as(mel)  # (batch, n_mels, frames)
    return torch.where(masked, fill, mel)


def soft_targets(label: torch.Tensor, n_classes: int, smoothing: float) -> torch.Tensor:
    """``(batch,)`` class ids -> ``(batch, n_classes)`` label-smoothed target distributions.

    >>> soft_targets(torch.tensor([1]), 4, 0.2)
    tensor([[0.0500, 0.8500, 0.0500, 0.0500]])
    """
    one_hot = F.one_hot(label, n_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / n_classes


def mixup(
    mel: torch.Tensor, target: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each segment with a random partner: ``lam * a + (1 - lam) * b`` for inputs and targets.

    One ``lam ~ Beta(alpha, alpha)`` per batch, as in the paper. ``target`` is
    ``(batch, n_classes)`` probabilities (see :func:`soft_targets`); rows stay distributions.
    """
    if alpha <= 0 or mel.shape[0] < 2:
        return mel, target
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(mel.shape[0], device=mel.device)
    mixed_mel = lam * mel + (1.0 - lam) * mel[partner]
    mixed_target = lam * target + (1.0 - lam) * target[partner]
    return mixed_mel, mixed_target
