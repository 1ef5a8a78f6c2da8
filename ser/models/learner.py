"""Loading a trained model of any family, chosen once from its checkpoint format.

`TorchFitted` wraps a torch checkpoint (ser.models.checkpoint); `ClassicalFitted`
(ser.models.linear) a classical one. Both are ser.models.base.Fitted: evaluation
and `ser predict` call `load_fitted` and nothing family-specific.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ser.config import FUNCTIONALS, encoder_store_key
from ser.errors import CheckpointError
from ser.features.dataset import FeatureDataset, make_loader, max_samples_for
from ser.features.scaling import Standardiser
from ser.models import SERModel, encoder_from_probe
from ser.models.base import Fitted, read_meta
from ser.models.checkpoint import BACKBONE_CACHE, FORMAT as TORCH_FORMAT, load_checkpoint, save_checkpoint
from ser.models.linear import ClassicalFitted

__all__ = ["TorchFitted", "ClassicalFitted", "FITTED", "load_fitted"]

log = logging.getLogger(__name__)


class TorchFitted(Fitted):
    """A saved torch network (CRNN, encoder, probe): scores are softmax probabilities."""

    FORMATS = (TORCH_FORMAT,)

    def __init__(self, model_dir: Path, meta: dict[str, Any], model: SERModel,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(model_dir, meta)
        self.model, self.device = model, torch.device(device)
        enc = meta["model_params"].get("encoder") or {}
        if self.input == "embeddings":
            self.store_key = encoder_store_key(enc["backbone"], enc["chunk_seconds"])
        # An MLP on functionals: its inputs are standardised as in training, and it scores whole files.
        make = getattr(model, "standardiser", None)
        self.standardiser: Optional[Standardiser] = make() if make is not None else None
        self.windowed = self.input not in FUNCTIONALS

    @classmethod
    def load(cls, model_dir: Path, device: str | torch.device = "cpu") -> "TorchFitted":
        # Random encoder presets are re-created inside the model directory (BACKBONE_CACHE).
        model, meta = load_checkpoint(model_dir, device=str(device), cache_dir=Path(model_dir) / BACKBONE_CACHE)
        return cls(model_dir, meta, model.eval(), device)

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        save_checkpoint(self.model, out_dir, meta)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(x.to(self.device), None if lengths is None else lengths.to(self.device))

    def scores(self, x: np.ndarray, lengths: Optional[np.ndarray] = None,
               speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        if self.standardiser is not None:
            x = self.standardiser.apply(x, speakers).astype(np.float32)
        logits = self.logits(torch.as_tensor(x), None if lengths is None else torch.as_tensor(lengths))
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def predict_split(self, features_root: Path, split: str = "test", corpus: Optional[str] = None, *,
                      batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        store = self.open_store(features_root, split, corpus)
        mp = self.meta["model_params"]
        max_seconds = (mp.get("encoder") or {}).get("max_seconds")
        dataset = FeatureDataset(store, self.labels, max_samples=max_samples_for(store, max_seconds), crop="center",
                                 standardiser=self.standardiser)
        loader = make_loader(dataset, batch_size or mp["batch_size"])
        log.info("evaluating %s on %s/%s%s (%d utterances) on %s", self.model_dir, store.root, split,
                 f" [{corpus}]" if corpus else "", len(store), self.device)
        logits = torch.cat([self.logits(batch["x"], batch.get("lengths")).float().cpu()
                            for batch in tqdm(loader, desc=f"eval {self.model_dir.name}", leave=False, disable=None)])
        return dataset.labels, logits.argmax(dim=-1).numpy(), torch.softmax(logits, dim=-1).numpy()

    def for_audio(self) -> Fitted:
        """A probe trained on cached embeddings runs its encoder (frozen, with the preprocessor config the
        embeddings were computed with) and the same head on audio: the function it was trained as."""
        if self.input != "embeddings":
            return self
        stored = self.feature_meta.get("encoder") or {}
        model = encoder_from_probe(self.model, preprocessor=stored.get("preprocessor"))
        if stored.get("revision") != model.revision:
            raise ValueError(f"{self.model_dir}: its embeddings were computed with {stored.get('spec')!r} at "
                             f"revision {stored.get('revision')!r}, but that backbone now resolves to revision "
                             f"{model.revision!r}; restore that revision or retrain")
        meta = {**self.meta, "model_params": {**self.meta["model_params"], "input": "waves"}}
        return TorchFitted(self.model_dir, meta, model.to(self.device).eval(), self.device)

    def file_caveat(self) -> Optional[str]:
        if self.standardiser is not None:
            return self.standardiser.file_caveat(self.model_dir)
        if self.input == "mels" and (self.feature_meta.get("features") or {}).get("mel_norm") == "speaker":
            return (f"{self.model_dir} was trained on log-mels normalised per speaker; a file has no speaker "
                    "statistics, so each window is normalised with its own per-bin mean/std instead (expect "
                    "lower accuracy than the model's evaluation, most for short windows)")
        return None


# checkpoint format (meta.json "format") -> the family that reads it
FITTED: dict[str, type[Fitted]] = {fmt: cls for cls in (TorchFitted, ClassicalFitted) for fmt in cls.FORMATS}


def load_fitted(model_dir: Path, device: str | torch.device = "cpu") -> Fitted:
    """The trained model in `model_dir`, whatever its family (CheckpointError when it is none)."""
    fmt = read_meta(model_dir).get("format")
    if fmt not in FITTED:
        raise CheckpointError(f"{Path(model_dir) / 'meta.json'}: format {fmt!r} is not a model this version "
                              f"reads (known: {sorted(FITTED)}); re-run training")
    return FITTED[fmt].load(model_dir, device)
