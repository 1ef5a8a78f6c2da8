"""SpecAugment masking of log-mel training batches (Park et al. 2019, without time warping).

Every draw comes from a caller-owned torch.Generator, which the trainer seeds
from (seed, epoch, process): a resumed run masks exactly as an uninterrupted one.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ser.config import SpecAugmentParams

__all__ = ["spec_augment"]


def _spans(n_masks: int, max_width: int, extent: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """[B, size] bool: `n_masks` spans of 0..max_width positions inside [0, extent[b]) per row."""
    positions = torch.arange(size)
    mask = torch.zeros(len(extent), size, dtype=torch.bool)
    for _ in range(n_masks):
        # A fixed number of draws per mask, whatever the widths: the stream never depends on the data.
        width = torch.minimum(torch.randint(0, max_width + 1, (len(extent),), generator=gen), extent)
        start = (torch.rand(len(extent), generator=gen, dtype=torch.float64) * (extent - width + 1)).long()
        mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return mask


def spec_augment(x: Tensor, lengths: Optional[Tensor], p: SpecAugmentParams, gen: torch.Generator) -> Tensor:
    """A masked copy of log-mels x [B, 1, n_mels, T] (or [B, n_mels, T]).

    Masked cells are set to 0, the train mean of a normalised store. Time masks
    fall inside each clip's valid frames (`lengths`; all T frames when None),
    so they never land on padding only.
    """
    n_batch, n_mels, frames = x.shape[0], x.shape[-2], x.shape[-1]
    valid = (torch.full((n_batch,), frames, dtype=torch.long) if lengths is None
             else lengths.detach().to("cpu", torch.long).clamp(0, frames))
    freq = _spans(p.freq_masks, p.freq_width, torch.full((n_batch,), n_mels, dtype=torch.long), n_mels, gen)
    time = _spans(p.time_masks, p.time_width, valid, frames, gen)
    mask = freq[:, :, None] | time[:, None, :]              # [B, n_mels, T]
    if x.dim() == 4:
        mask = mask[:, None]
    return x.masked_fill(mask.to(x.device), 0.0)
