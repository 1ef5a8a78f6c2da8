"""Model registry: the CRNN of the cross-corpus study, speech foundation-model encoders
(wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper; frozen probe, full, LoRA, QLoRA) and an
MLP on openSMILE functionals.

Every model is an `SERModel`: `embed` maps an input batch to pooled features
[B, feature_dim], `classify` maps features to emotion logits, and the optional
`domain_head` (DANN) maps gradient-reversed features to domain logits. The
trainer only sees this interface; architectures differ in `embed`.

Models are built on the CPU; the trainer moves them (accelerate).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from ser.config import ModelParams
from ser.models.base import SERModel
from ser.models.crnn import CRNN
from ser.models.mlp import FunctionalsMLP

__all__ = ["SERModel", "MODELS", "build_model", "encoder_from_probe"]

def _build_crnn(mp: ModelParams, n_classes: int, *, with_domain_head: bool, n_mels: int,
                cache_dir: Optional[Path], preprocessor: Optional[dict] = None,
                n_features: Optional[int] = None) -> SERModel:
    return CRNN(mp.crnn, n_classes, n_mels=n_mels, with_domain_head=with_domain_head)


def _build_mlp(mp: ModelParams, n_classes: int, *, with_domain_head: bool, n_mels: int,
               cache_dir: Optional[Path], preprocessor: Optional[dict] = None,
               n_features: Optional[int] = None) -> SERModel:
    if n_features is None:
        raise ValueError("arch 'mlp' needs n_features (the width of its openSMILE store)")
    return FunctionalsMLP(mp.mlp, n_classes, n_features=n_features, with_domain_head=with_domain_head)


def _build_encoder(mp: ModelParams, n_classes: int, *, with_domain_head: bool, n_mels: int,
                   cache_dir: Optional[Path], preprocessor: Optional[dict] = None,
                   n_features: Optional[int] = None) -> SERModel:
    # lazy: transformers / peft / bitsandbytes take seconds to import and the CRNN stages do not need them
    from ser.models.encoders import EncoderSER, ProbeSER
    if mp.input == "embeddings":  # a frozen encoder's probe on cached hidden-state means
        return ProbeSER(mp.encoder, n_classes, with_domain_head=with_domain_head, cache_dir=cache_dir)
    return EncoderSER(mp.encoder, n_classes, with_domain_head=with_domain_head, cache_dir=cache_dir,
                      preprocessor=preprocessor)


# torch arch -> (builder, the ModelParams section it needs). Arch "classical" (the
# openSMILE baseline) is another family of ser.models.base.Learner: ser.models.linear.
MODELS: dict[str, tuple[Callable[..., SERModel], str]] = {
    "crnn": (_build_crnn, "crnn"),
    "encoder": (_build_encoder, "encoder"),
    "mlp": (_build_mlp, "mlp"),
}


def build_model(mp: ModelParams, n_classes: int, *, with_domain_head: bool = False, n_mels: int = 128,
                cache_dir: Optional[Path] = None, name: Optional[str] = None,
                preprocessor: Optional[dict] = None, n_features: Optional[int] = None) -> SERModel:
    """Build `mp.arch` on the CPU for `n_classes` emotions.

    n_mels: mel bands of the input (CRNN only). n_features: width of the functionals (MLP only). cache_dir: where `random:<preset>`
    encoder backbones are materialised (default: $SER_CACHE_DIR or ~/.cache/ser).
    preprocessor: the feature-extractor config a checkpoint was trained with (encoders; default:
    the backbone's own).
    name: the model's key under `models:` in params.yaml, for error messages.
    """
    if mp.arch not in MODELS:
        raise KeyError(f"arch {mp.arch!r} is not a torch network; torch archs: {sorted(MODELS)}")
    builder, section = MODELS[mp.arch]
    if getattr(mp, section) is None:
        raise ValueError(f"models.{name or '<name>'}.{section}: arch {mp.arch!r} needs a '{section}:' section "
                         f"in params.yaml (see the demo profile for an example)")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    model = builder(mp, n_classes, with_domain_head=with_domain_head, n_mels=n_mels, cache_dir=cache_dir,
                    preprocessor=preprocessor, n_features=n_features)
    model.params = mp
    model.build_kwargs = {"n_classes": n_classes, "with_domain_head": with_domain_head, "n_mels": n_mels,
                          **({"n_features": n_features} if n_features is not None else {})}
    return model


def encoder_from_probe(probe: SERModel, cache_dir: Optional[Path] = None,
                       preprocessor: Optional[dict[str, Any]] = None) -> SERModel:
    """The on-the-fly model of a probe trained on cached embeddings: its encoder (frozen) + its head,
    so `ser predict` runs the same function on audio files."""
    mp = probe.params
    model = build_model(dataclasses.replace(mp, input="waves"), probe.build_kwargs["n_classes"],
                        with_domain_head=probe.build_kwargs["with_domain_head"], cache_dir=cache_dir,
                        preprocessor=preprocessor)
    missing, unexpected = model.load_state_dict(probe.state_dict(), strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise ValueError(f"probe head does not fit the encoder model: missing {missing}, unexpected {unexpected}")
    return model
