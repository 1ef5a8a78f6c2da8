"""Standardisation of openSMILE functionals: global (the train split's statistics) or per speaker.

One implementation for every model on functionals (the classical heads of ser.models.linear and
the torch MLP of ser.models.mlp). "speaker" z-scores each speaker's rows with that speaker's own
mean/std: it reads features only, never labels, so it applies to test speakers too (statistics
over that speaker's clips in the split being scored). A feature that does not vary (or a speaker
with one clip) is only centred. Speaker keys are "<corpus>/<speaker>": ids are unique per corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from ser.features.stores import FeatureStore

__all__ = ["fit_stats", "standardise", "speaker_standardise", "speaker_keys", "Standardiser"]


def fit_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and std of [n, F] rows; a std that is ~0
    (relative to the feature's scale) becomes 1, so that feature is only centred."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return mean, std


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - mean) / std


def speaker_standardise(x: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Each speaker's rows z-scored with that speaker's own statistics (fit_stats)."""
    x = np.asarray(x, dtype=np.float64)
    speakers = np.asarray(speakers)
    if len(speakers) != len(x):
        raise ValueError(f"{len(speakers)} speaker keys for {len(x)} rows")
    out = np.empty_like(x)
    for spk in np.unique(speakers):
        rows = speakers == spk
        out[rows] = standardise(x[rows], *fit_stats(x[rows]))
    return out


def speaker_keys(store: FeatureStore) -> list[str]:
    """One "<corpus>/<speaker>" key per row of a store view, in index order."""
    return [f"{r.corpus}/{r.speaker}" for r in store.index]


@dataclass(frozen=True)
class Standardiser:
    """How a model's functionals are standardised: `mode` "global" uses `mean`/`std` (the train
    split's); "speaker" uses each speaker's own statistics, and falls back to the global ones where
    there are no speakers (a lone file in `ser predict`)."""
    mode: Literal["global", "speaker"]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, mode: Literal["global", "speaker"], x_train: np.ndarray) -> "Standardiser":
        return cls(mode, *fit_stats(x_train))

    def apply(self, x: np.ndarray, speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        """Standardised float64 rows: per speaker for mode "speaker" given speakers, else global."""
        if self.mode == "speaker" and speakers is not None:
            return speaker_standardise(x, speakers)
        return standardise(x, self.mean, self.std)
