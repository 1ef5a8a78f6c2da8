"""Training objectives: what one step's loss is. Variants of the one loop are objectives, not trainers.

CrossEntropy (baseline, fine-tune, QLoRA, probes) and DomainAdversarial (DANN: CE on
the labeled source batch + lambda * domain CE on source and unlabeled target features
through gradient reversal). An objective is called as
`objective(model, batch, target_batch, progress) -> (loss, logs)`.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ser.config import ModelParams, Params
from ser.models.grl import dann_alpha, grad_reverse

log = logging.getLogger(__name__)

__all__ = ["Batch", "CrossEntropy", "DomainAdversarial", "make_objective", "class_weights", "embed"]

Batch = dict[str, torch.Tensor]


def embed(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model.embed(batch["x"], batch.get("lengths"))


def _ce(logits: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, weight=None if weight is None else weight.to(logits.device))


class CrossEntropy:
    """Cross-entropy on the labeled batch; `weight` [n_classes] weights the classes (balance: loss)."""

    def __init__(self, weight: Optional[torch.Tensor] = None) -> None:
        self.weight = weight

    def __call__(self, model: nn.Module, batch: Batch, target_batch: Optional[Batch],
                 progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model.classify(embed(model, batch))
        loss = _ce(logits, batch["y"], self.weight)
        return loss, {"loss": loss.detach(), "ce": loss.detach()}


class DomainAdversarial:
    """DANN (Ganin & Lempitsky 2015): CE + lambda * domain CE through gradient reversal.

    The reversal coefficient follows dann_alpha(progress, max_alpha); the
    target batch's emotion labels are never read. `weight` weights the emotion
    classes of the CE term only (the domain term is balanced by construction).
    """

    def __init__(self, lambda_domain: float, max_alpha: float, weight: Optional[torch.Tensor] = None) -> None:
        self.lambda_domain = lambda_domain
        self.max_alpha = max_alpha
        self.weight = weight

    def __call__(self, model: nn.Module, batch: Batch, target_batch: Optional[Batch],
                 progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:

        if target_batch is None:
            raise ValueError("DomainAdversarial needs a target batch every step")
        source = embed(model, batch)
        target = embed(model, target_batch)
        ce = _ce(model.classify(source), batch["y"], self.weight)
        alpha = dann_alpha(progress, self.max_alpha)
        feats = torch.cat([source, target])
        domains = torch.cat([torch.zeros(len(source), dtype=torch.long, device=feats.device),
                             torch.ones(len(target), dtype=torch.long, device=feats.device)])
        domain_logits = model.domain_head(grad_reverse(feats, alpha)).float()
        domain_loss = F.cross_entropy(domain_logits, domains)
        loss = ce + self.lambda_domain * domain_loss
        domain_acc = (domain_logits.argmax(-1) == domains).float().mean()
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "domain_loss": domain_loss.detach(),
                      "domain_acc": domain_acc.detach(), "alpha": torch.tensor(float(alpha))}


def make_objective(params: Params, mp: ModelParams,
                   weight: Optional[torch.Tensor] = None) -> CrossEntropy | DomainAdversarial:
    if mp.objective == "dann":
        return DomainAdversarial(params.lambda_domain, params.max_alpha, weight)
    return CrossEntropy(weight)


def class_weights(labels: Any, n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights of the train labels, mean 1 over the classes present.

    A class absent from train gets weight 0 (nothing to learn it from) and a warning.
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=n_classes).double()
    present = counts > 0
    if not bool(present.all()):
        log.warning("classes %s have no training examples: class weight 0",
                    torch.nonzero(~present).flatten().tolist())
    weight = torch.zeros(n_classes, dtype=torch.float64)
    weight[present] = 1.0 / counts[present]
    weight[present] /= weight[present].mean()
    return weight.float()
