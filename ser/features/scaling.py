"""Standardisation of openSMILE functionals: global (the train split's statistics) or per speaker.

One implementation for every model on functionals (the classical heads of ser.models.linear and
the torch MLP of ser.models.mlp). "speaker" z-scores each speaker's rows with that speaker's own
mean/std: it reads features only, never labels, so it applies to test speakers too (statistics
over that speaker's clips in the split being scored). A feature that does not vary (or a speaker
with one clip) is only centred. "speaker_rank" maps each speaker's values of a feature to normal
quantiles of their ranks (rank-Gauss: Phi^-1((rank - 0.5) / n), ties share their mean rank), so
every speaker's every feature has the same distribution, not only the same mean and std: one
loud outlier clip, or a speaker whose spread is dominated by a few intense clips, no longer
squeezes that speaker's other clips together. Speaker keys are "<corpus>/<speaker>": ids are
unique per corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from ser.features.stores import FeatureStore

__all__ = ["fit_stats", "standardise", "speaker_standardise", "rank_gauss", "speaker_keys", "Standardiser"]

Mode = Literal["global", "speaker", "speaker_rank"]


def fit_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and std of [n, F] rows; a std that is ~0
    (relative to the feature's scale) becomes 1, so that feature is only centred."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return mean, std


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - mean) / std


def rank_gauss(x: np.ndarray) -> np.ndarray:
    """Each column of [n, F] rows replaced by the normal quantiles of its ranks,
    Phi^-1((rank - 0.5) / n); tied values share their mean rank (a constant column becomes 0)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64)
    return ndtri((rankdata(x, axis=0) - 0.5) / len(x)) if len(x) else x.copy()


def speaker_standardise(x: np.ndarray, speakers: Sequence[str], mode: Mode = "speaker") -> np.ndarray:
    """Each speaker's rows standardised with that speaker's own statistics: z-scores (fit_stats,
    mode "speaker") or rank-Gauss values (rank_gauss, mode "speaker_rank")."""
    x = np.asarray(x, dtype=np.float64)
    speakers = np.asarray(speakers)
    if len(speakers) != len(x):
        raise ValueError(f"{len(speakers)} speaker keys for {len(x)} rows")
    out = np.empty_like(x)
    for spk in np.unique(speakers):
        rows = speakers == spk
        out[rows] = rank_gauss(x[rows]) if mode == "speaker_rank" else standardise(x[rows], *fit_stats(x[rows]))
    return out


def speaker_keys(store: FeatureStore) -> list[str]:
    """One "<corpus>/<speaker>" key per row of a store view, in index order."""
    return [f"{r.corpus}/{r.speaker}" for r in store.index]


@dataclass(frozen=True)
class Standardiser:
    """How a model's functionals are standardised: `mode` "global" uses `mean`/`std` (the train
    split's); "speaker" and "speaker_rank" use each speaker's own statistics, and fall back to the
    global ones where there are no speakers (a lone file in `ser predict`)."""
    mode: Mode
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, mode: Mode, x_train: np.ndarray) -> "Standardiser":
        return cls(mode, *fit_stats(x_train))

    def apply(self, x: np.ndarray, speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        """Standardised float64 rows: per speaker for the speaker modes given speakers, else global."""
        if self.mode != "global" and speakers is not None:
            return speaker_standardise(x, speakers, self.mode)
        return standardise(x, self.mean, self.std)

    def file_caveat(self, model_dir: object) -> Optional[str]:
        """What `ser predict` tells about a lone file of a per-speaker model, None for a global one."""
        if self.mode == "global":
            return None
        return (f"{model_dir} was trained with per-speaker standardisation ({self.mode}); a single file has no "
                "speaker statistics, so its features are standardised with the global train statistics instead "
                "(expect lower accuracy than the model's evaluation)")
