"""The two interfaces of the model layer.

`Learner` / `Fitted`: every family of models (the torch networks, the linear
classifiers on openSMILE functionals) is fitted, saved, loaded and used to
predict through these; the family is chosen once, from the arch (fitting:
ser.train.learners) or from the checkpoint's format (loading:
ser.models.learner.load_fitted). Training, evaluation and `ser predict` see
only this.

`SERModel`: what every torch network implements (embed, classify, optional
domain head, optimizer parameter groups). The torch trainer sees only this.
"""
from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import numpy as np
from torch import Tensor, nn

from ser.config import ModelParams, OptimParams, Params
from ser.errors import CheckpointError
from ser.features.stores import FeatureStore, fold_root

__all__ = ["SERModel", "Fitted", "Learner", "read_meta", "EpochCallback", "META", "WEIGHTS"]

EpochCallback = Callable[[int, dict[str, float]], None]
META = "meta.json"             # every model folder: what it is and how it was trained
WEIGHTS = "model.safetensors"  # and its tensors (torch state dict, or a classical head's arrays)


def read_meta(model_dir: Path) -> dict[str, Any]:
    """The meta.json of a model directory, or CheckpointError naming what is wrong with it."""
    path = Path(model_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a model directory; run the model's train stage "
                              "(`dvc repro`)")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:  # truncated or edited by hand
        raise CheckpointError(f"{path}: not valid JSON ({exc}); restore it or re-run training") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


class Fitted(ABC):
    """A trained model loaded from its directory: the same calls for every family.

    `scores` maps a batch of model inputs (what the feature stores hold: log-mels,
    waveforms, embeddings or functionals) to [n, n_classes] class scores.
    `windowed`: the model scores fixed-length windows of a recording (`ser predict`
    slides them); False: it summarises a whole recording (openSMILE functionals).
    """

    FORMATS: ClassVar[tuple[str, ...]]  # the meta.json "format" values this family reads
    windowed: ClassVar[bool] = True

    def __init__(self, model_dir: Path, meta: dict[str, Any]) -> None:
        self.model_dir = Path(model_dir)
        self.meta = meta

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def input(self) -> str:
        return str(self.meta["model_params"]["input"])

    @property
    def feature_meta(self) -> dict[str, Any]:
        return self.meta["features"]

    @classmethod
    @abstractmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> "Fitted":
        """The model saved in `model_dir` (CheckpointError when it is not one, or is damaged)."""

    @abstractmethod
    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        """Write the model and `meta` to `out_dir` (a new directory appears by one rename)."""

    @abstractmethod
    def scores(self, x: np.ndarray, lengths: Optional[np.ndarray] = None,
               speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        """[n, n_classes] scores (probabilities, or a linear SVM's decision values) of a batch of inputs.

        lengths: valid frames/samples per row (torch models pool over those);
        speakers: one key per row, for models that standardise per speaker."""

    @abstractmethod
    def predict_split(self, features_root: Path, split: str = "test", corpus: Optional[str] = None, *,
                      batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y_true, y_pred, scores) of one split (optionally one corpus) of the feature store the model
        was trained on, in store order; scores [n, n_classes] as `scores` gives them (y_pred is their argmax)."""

    store_key: Optional[str] = None  # the store folder below <input>/ (cached encoder embeddings)

    def open_store(self, features_root: Path, split: str, corpus: Optional[str] = None) -> FeatureStore:
        """The split of the store this model was trained on; ValueError when that store has changed
        since (other feature parameters) or has no rows."""
        root = fold_root(Path(features_root), self.input, self.meta["study"], int(self.meta.get("fold", 1)),
                         self.store_key)
        store = FeatureStore(root, split, corpus=corpus)
        if store.meta != self.feature_meta:
            raise ValueError(f"{root}/meta.json differs from the feature meta {self.model_dir} was trained on; "
                             "re-run training (`dvc repro`) after changing feature parameters")
        if len(store) == 0:
            raise ValueError(f"{root}/{split}.csv has no rows" + (f" for corpus {corpus!r}" if corpus else ""))
        return store

    def for_audio(self) -> "Fitted":
        """The model that runs on audio files: itself, or (a probe trained on cached embeddings)
        its encoder and the same head."""
        return self

    def file_caveat(self) -> Optional[str]:
        """Why scores of a lone file may differ from the model's evaluation (None: they do not)."""
        return None

    def describe(self) -> str:
        """A few words for logs: the family and what its scores are."""
        return str(self.meta["model_params"]["arch"])


class Learner(ABC):
    """One family of models: how a run is fitted; `fitted` saves, loads and predicts with what it wrote."""

    fitted: ClassVar[type[Fitted]]

    @abstractmethod
    def fit(self, params: Params, name: str, features_root: Path, out_dir: Path, resume_dir: Path,
            live_dir: Path, *, on_epoch_end: Optional[EpochCallback] = None,
            timing_path: Optional[Path] = None) -> dict[str, Any]:
        """Fit model `name` of params.models on its feature store; save the chosen model to out_dir.

        Returns {model, best_epoch, val, epochs, epochs_run, resumed_from_epoch, train_seconds,
        parameters, history, ...}. resume_dir: per-epoch state of a resumable family;
        on_epoch_end(epoch, logs): after each epoch; timing_path: wall-clock JSON outside out_dir."""

    def load(self, model_dir: Path, device: str = "cpu") -> Fitted:
        return self.fitted.load(model_dir, device)

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
