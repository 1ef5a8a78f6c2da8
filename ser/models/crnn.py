"""The CRNN of the cross-corpus study (baseline and DANN share it).

log-mel [B, 1, n_mels, frames] -> 3 x (Conv2d 3x3, BatchNorm, MaxPool 2, ReLU)
-> frequency folded into channels -> BiLSTM over time -> mean over time
-> 2 * lstm_hidden features -> FC -> ReLU -> dropout -> FC -> logits.

Pooling is the mean of the BiLSTM outputs over the valid time steps, not the
last states: clips are centre-cropped / padded to a fixed frame count, so the
"last" step of a short clip would be padding, and the mean uses every frame.
The valid steps come from `lengths` (valid frames per clip; ser.features.dataset's mel
batches carry the store index `length`): padded frames are zeroed before each
conv block, as the convolution's own zero padding would be at a clip's end,
and kept out of the (packed) BiLSTM and the mean, so in eval mode a padded
clip embeds exactly as the unpadded clip does, whatever the padding holds.
Without `lengths` every frame counts as valid.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ser.config import CrnnParams
from ser.models.base import SERModel
from ser.models.grl import DomainHead

__all__ = ["CRNN"]


class CRNN(SERModel):
    def __init__(self, p: CrnnParams, n_classes: int, *, n_mels: int = 128,
                 with_domain_head: bool = False) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.pool_factor = 2 ** len(p.channels)
        self.freq_out = n_mels // self.pool_factor
        if self.freq_out < 1:
            raise ValueError(f"crnn: n_mels={n_mels} is too small for {len(p.channels)} pooling stages "
                             f"(needs >= {self.pool_factor}); raise features.n_mels or use fewer crnn.channels")
        blocks: list[nn.Module] = []
        in_ch = 1
        for ch in p.channels:
            # ReLU after the pooling: max and ReLU commute (outputs and gradients are the same as
            # ReLU -> MaxPool's), and ReLU then touches a quarter of the activations. Parameter-free
            # layers only swap places, so checkpoints keep their keys.
            blocks += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            in_ch = ch
        self.conv = nn.Sequential(*blocks)
        self.lstm = nn.LSTM(in_ch * self.freq_out, p.lstm_hidden, batch_first=True, bidirectional=True)
        self.feature_dim = 2 * p.lstm_hidden
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, p.fc_hidden), nn.ReLU(), nn.Dropout(p.dropout),
            nn.Linear(p.fc_hidden, n_classes))
        if with_domain_head:
            self.domain_head = DomainHead(self.feature_dim, p.domain_hidden, 2, p.dropout)

    def _masked_conv(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The conv stack with time steps beyond each clip's valid length zeroed before every block.

        Each block's MaxPool floors the time axis, so a clip of n frames has
        n // 2 valid steps after it, none of which read a padded frame.
        """
        steps = lengths.to(device=x.device, dtype=torch.long).clamp(min=1)
        blocks = list(self.conv)
        for i in range(0, len(blocks), 4):   # Conv2d, BatchNorm2d, MaxPool2d, ReLU
            valid = torch.arange(x.shape[3], device=x.device) < steps[:, None]   # [B, T]
            x = x * valid[:, None, None, :].to(x.dtype)
            for layer in blocks[i:i + 4]:
                x = layer(x)
            steps = torch.div(steps, 2, rounding_mode="floor").clamp(min=1)
        return x

    def embed(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """x: [B, 1, n_mels, frames] (or [B, n_mels, frames]); lengths: valid frames per clip."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.n_mels:
            raise ValueError(f"crnn expects [B, 1, {self.n_mels}, frames] log-mels, got {tuple(x.shape)}")
        if x.shape[3] < self.pool_factor:
            raise ValueError(f"crnn needs >= {self.pool_factor} frames, got {x.shape[3]}")
        h = self.conv(x) if lengths is None else self._masked_conv(x, lengths)   # [B, C, F', T']
        b, c, f, t = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, t, c * f)     # frequency folded into channels
        if lengths is None:
            out, _ = self.lstm(h)
            return out.mean(dim=1)
        # Each MaxPool2d floors the time axis: valid steps after pooling.
        steps = torch.div(lengths.to(torch.long).cpu(), self.pool_factor, rounding_mode="floor").clamp(1, t)
        # Packing keeps padding out of the backward direction's state.
        packed = pack_padded_sequence(h, steps, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)   # padding rows are 0
        return out.sum(dim=1) / steps.to(out.device, out.dtype).unsqueeze(1)
