"""Model registry: the CRNN of the cross-corpus study and speech foundation-model encoders
(wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper; frozen probe, full, LoRA, QLoRA).

Every model is an `SERModel`: `embed` maps an input batch to pooled features
[B, feature_dim], `classify` maps features to emotion logits, and the optional
`domain_head` (DANN) maps gradient-reversed features to domain logits. The
trainer only sees this interface; architectures differ in `embed`.

Models are built on the CPU; the trainer moves them (accelerate).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from torch import Tensor, nn

from ser.config import ModelParams, OptimParams

__all__ = ["SERModel", "MODELS", "build_model"]

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
    # rebuilt from the backbone spec (LoRA / 4-bit models), see ser.checkpoint.
    partial_state: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.domain_head = None
        # Set by build_model: what ser.checkpoint needs to rebuild this model.
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


def _build_crnn(mp: ModelParams, n_classes: int, *, with_domain_head: bool, n_mels: int,
                cache_dir: Optional[Path], preprocessor: Optional[dict] = None) -> SERModel:
    from ser.models.crnn import CRNN
    return CRNN(mp.crnn, n_classes, n_mels=n_mels, with_domain_head=with_domain_head)


def _build_encoder(mp: ModelParams, n_classes: int, *, with_domain_head: bool, n_mels: int,
                   cache_dir: Optional[Path], preprocessor: Optional[dict] = None) -> SERModel:
    # Imported lazily: transformers / peft / bitsandbytes take seconds to import
    # and the CRNN stages do not need them.
    from ser.models.encoders import EncoderSER, ProbeSER
    if mp.input == "embeddings":  # a frozen encoder's probe on cached hidden-state means
        return ProbeSER(mp.encoder, n_classes, with_domain_head=with_domain_head, cache_dir=cache_dir)
    return EncoderSER(mp.encoder, n_classes, with_domain_head=with_domain_head, cache_dir=cache_dir,
                      preprocessor=preprocessor)


# arch -> (builder, the ModelParams section it needs). Arch "linear" (the classical
# openSMILE baseline) is no torch model: ser.classical fits, saves and loads it.
MODELS: dict[str, tuple[Callable[..., SERModel], str]] = {
    "crnn": (_build_crnn, "crnn"),
    "encoder": (_build_encoder, "encoder"),
}


def build_model(mp: ModelParams, n_classes: int, *, with_domain_head: bool = False, n_mels: int = 128,
                cache_dir: Optional[Path] = None, name: Optional[str] = None,
                preprocessor: Optional[dict] = None) -> SERModel:
    """Build `mp.arch` on the CPU for `n_classes` emotions.

    n_mels: mel bands of the input (CRNN only). cache_dir: where `random:<preset>`
    encoder backbones are materialised (default: $SER_CACHE_DIR or ~/.cache/ser).
    preprocessor: the feature-extractor config a checkpoint was trained with (encoders; default:
    the backbone's own).
    name: the model's key under `models:` in params.yaml, for error messages.
    """
    if mp.arch == "linear":
        raise ValueError("arch 'linear' is the classical baseline (ser.classical), not a torch model")
    if mp.arch not in MODELS:
        raise KeyError(f"unknown model {mp.arch!r}; known: {sorted(MODELS)}")
    builder, section = MODELS[mp.arch]
    if getattr(mp, section) is None:
        raise ValueError(f"models.{name or '<name>'}.{section}: arch {mp.arch!r} needs a '{section}:' section "
                         f"in params.yaml (see the demo profile for an example)")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    model = builder(mp, n_classes, with_domain_head=with_domain_head, n_mels=n_mels, cache_dir=cache_dir,
                    preprocessor=preprocessor)
    model.params = mp
    model.build_kwargs = {"n_classes": n_classes, "with_domain_head": with_domain_head, "n_mels": n_mels}
    return model
