"""A small MLP on openSMILE functionals (arch `mlp`), trained by the one loop like every torch model.

functionals [B, n_features], standardised outside the network (ser.features.scaling: the data
path applies the run's Standardiser) -> len(hidden) x (Linear -> ReLU -> dropout) -> features
[B, hidden[-1]] -> Linear -> logits. With objective dann a domain classifier (ser.models.grl)
reads the same features through gradient reversal: the domain-adversarial setting of
Abdelwahab & Busso on functionals.

The train split's raw mean/std are buffers (saved with the weights): the global statistics of a
"global" model, and the fallback of a "speaker" model for a lone file without speaker statistics.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ser.config import MlpParams
from ser.features.scaling import Standardiser
from ser.models.base import SERModel
from ser.models.grl import DomainHead

__all__ = ["FunctionalsMLP"]


class FunctionalsMLP(SERModel):
    def __init__(self, p: MlpParams, n_classes: int, *, n_features: int, with_domain_head: bool = False) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"mlp: n_features must be >= 1, got {n_features}")
        self.standardise = p.standardise
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("std", torch.ones(n_features, dtype=torch.float64))
        layers: list[nn.Module] = []
        width = n_features
        for hidden in p.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(p.dropout)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.classifier = nn.Linear(width, n_classes)
        if with_domain_head:
            self.domain_head = DomainHead(width, p.domain_hidden, 2, p.dropout)

    def set_standardiser(self, standardiser: Standardiser) -> None:
        """Keep the train split's statistics with the weights (see the module docstring)."""
        self.mean.copy_(torch.as_tensor(standardiser.mean, dtype=torch.float64))
        self.std.copy_(torch.as_tensor(standardiser.std, dtype=torch.float64))

    def standardiser(self) -> Standardiser:
        return Standardiser(self.standardise, self.mean.cpu().numpy().copy(), self.std.cpu().numpy().copy())

    def embed(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """x: standardised functionals [B, n_features] (lengths unused: one row per clip)."""
        return self.body(x.to(self.classifier.weight.dtype))
