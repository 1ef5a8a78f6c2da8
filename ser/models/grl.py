"""Gradient reversal and the domain classifier of DANN (Ganin & Lempitsky, 2015).

The feature extractor is trained to *confuse* a domain classifier: features
pass through `grad_reverse` (identity forward, gradient times -alpha backward)
into `DomainHead`, so minimising the domain loss trains the head to separate
domains while pushing the features towards domain invariance.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["grad_reverse", "DomainHead", "dann_alpha"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.alpha = alpha
        # view_as: a new tensor node, so autograd routes the gradient through backward()
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.alpha * grad, None


def grad_reverse(x: Tensor, alpha: float) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by -alpha."""
    return _GradReverse.apply(x, float(alpha))


class DomainHead(nn.Module):
    """Domain classifier: [B, in_dim] -> [B, n_domains] logits (one hidden ReLU layer)."""

    def __init__(self, in_dim: int, hidden: int, n_domains: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_domains))

    def forward(self, feats: Tensor) -> Tensor:
        return self.net(feats)


def dann_alpha(progress: float, max_alpha: float) -> float:
    """Gradient-reversal coefficient at training progress p in [0, 1].

    Ganin et al.'s schedule 2 / (1 + exp(-10 p)) - 1 rises from 0 to ~1, so the
    domain signal is weak while the features are still random; scaled here by
    `max_alpha` (0.7 in the reference study).
    """
    if math.isnan(progress) or not -1e-6 <= progress <= 1 + 1e-6:
        raise ValueError(f"dann_alpha: progress must be in [0, 1], got {progress}")
    p = min(max(progress, 0.0), 1.0)  # absorb float round-off of step / total_steps
    return max_alpha * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)
