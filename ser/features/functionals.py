"""Utterance-level feature vectors: one float32 row per clip, read by the classical and MLP heads.

Kinds (ser.config.FUNCTIONALS): the openSMILE functionals `egemaps` and `compare`
(ser.features.smile) and the GE2E speaker-encoder layer means `ge2e` (ser.features.ge2e).
ser.features.precompute stores them (`precompute --kind <kind>`) and ser.infer.predict computes
the same row for a new file, both through `functionals`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ser.config import FUNCTIONALS
from ser.features import ge2e, smile

__all__ = ["functionals", "functionals_meta", "n_features"]


def _check(kind: str) -> None:
    if kind not in FUNCTIONALS:
        raise KeyError(f"unknown utterance-level feature kind {kind!r}; known: {list(FUNCTIONALS)}")


def functionals(wave: np.ndarray, sample_rate: int, kind: str) -> np.ndarray:
    """float32 [n_features] of a mono float32 wave (openSMILE gives NaN where it has no value)."""
    _check(kind)
    return ge2e.layer_means(wave, sample_rate) if kind == "ge2e" else smile.functionals(wave, sample_rate, kind)


def functionals_meta(kind: str) -> dict[str, Any]:
    """What a store of `kind` records about its features (feature set, names, versions)."""
    _check(kind)
    return ge2e.ge2e_meta() if kind == "ge2e" else smile.smile_meta(kind)


def n_features(kind: str) -> int:
    _check(kind)
    return ge2e.N_FEATURES if kind == "ge2e" else smile.n_features(kind)
