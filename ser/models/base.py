"""The interface every torch model implements: `SERModel` (embed, classify, optional domain head,
optimizer parameter groups). The trainer, evaluation and `ser predict` see only this."""
from __future__ import annotations

import math
from typing import Optional

from torch import Tensor, nn

from ser.config import ModelParams, OptimParams

__all__ = ["SERModel"]

# Parameters of these modules (and every 0-/1-D parameter: biases, norm gains,
# LSTM biases) get no weight decay: decaying them only shrinks scales.
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


class SERModel(nn.Module):
    """Base class: an encoder (`embed`) plus an emotion head and an optional domain head.

    Subclasses set `feature_dim`, `classifier` (the emotion head) and, when
    built with a domain head, `domain_head`.
    """

    feature_dim: int
    domain_head: Optional[nn.Module]
    # True when the checkpoint stores only trainable tensors and the rest is
    # rebuilt from the backbone spec (LoRA / 4-bit models), see ser.models.checkpoint.
    partial_state: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.domain_head = None
        # Set by build_model: what ser.models.checkpoint needs to rebuild this model.
        self.params: Optional[ModelParams] = None
        self.build_kwargs: dict = {}

    def embed(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """Pooled features [B, feature_dim]."""
        raise NotImplementedError

    def classify(self, feats: Tensor) -> Tensor:
        """Emotion logits [B, n_classes]."""
        return self.classifier(feats)

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.classify(self.embed(x, lengths))

    def head_modules(self) -> list[nn.Module]:
        """The task heads (full precision, trained at `optim.lr`)."""
        return [m for m in (self.classifier, self.domain_head) if m is not None]

    def param_groups(self, optim: OptimParams) -> list[dict]:
        """Optimizer groups: encoder at `lr_encoder` (else `lr`), heads at `lr`;
        only trainable parameters; no weight decay on biases and norms."""
        head_ids = {id(p) for m in self.head_modules() for p in m.parameters()}
        no_decay: set[int] = set()
        for module in self.modules():
            for p in module.parameters(recurse=False):
                if isinstance(module, _NORMS) or p.ndim < 2:
                    no_decay.add(id(p))
        buckets: dict[str, list] = {"encoder": [], "encoder_no_decay": [], "heads": [], "heads_no_decay": []}
        for p in self.parameters():
            if not p.requires_grad:
                continue
            part = "heads" if id(p) in head_ids else "encoder"
            buckets[part + ("_no_decay" if id(p) in no_decay else "")].append(p)
        lr_of = {"encoder": optim.lr_encoder if optim.lr_encoder is not None else optim.lr, "heads": optim.lr}
        return [{"params": ps, "name": name, "lr": lr_of[name.split("_")[0]],
                 "weight_decay": 0.0 if name.endswith("no_decay") else optim.weight_decay}
                for name, ps in buckets.items() if ps]

    def count_parameters(self) -> tuple[int, int]:
        """(total, trainable). A 4-bit bitsandbytes weight counts its logical
        elements (quant_state.shape), not the packed uint8 bytes that hold them."""
        total = trainable = 0
        for p in self.parameters():
            quant_state = getattr(p, "quant_state", None)
            n = math.prod(quant_state.shape) if quant_state is not None else p.numel()
            total += n
            trainable += n if p.requires_grad else 0
        return total, trainable
