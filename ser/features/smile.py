"""openSMILE functionals: the feature sets of the classical SER baseline.

One row of utterance-level functionals per clip (Eyben et al. 2016, eGeMAPS:
88 features; Schuller et al. 2016, ComParE: 6373), computed by the `opensmile`
wheel (the SMILE C library is bundled, so it runs offline). ser.features.precompute
stores them (`precompute --kind egemaps|compare`) and ser.infer.predict computes the
same row for a new file, both through `functionals`.

opensmile converts float audio to 16-bit integers as `int16(x * 32768)`,
which wraps a sample of +1.0 round to -32768; `functionals` clips the wave to
the int16 range first so that a full-scale (e.g. peak-normalised) clip is not
corrupted.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

__all__ = ["SMILE_SETS", "functionals", "smile_meta", "n_features"]

log = logging.getLogger(__name__)

# store kind -> opensmile.FeatureSet member name
SMILE_SETS: dict[str, str] = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
_INT16_MAX = np.float32(32767 / 32768)


@functools.lru_cache(maxsize=None)
def _smile(kind: str) -> Any:
    """The opensmile.Smile of a kind, built once per process (pool workers each build their own).

    It holds only configuration; every call runs a fresh SMILE instance, so a
    copy inherited through fork is safe to use.
    """
    if kind not in SMILE_SETS:
        raise KeyError(f"unknown openSMILE feature kind {kind!r}; known: {sorted(SMILE_SETS)}")
    import opensmile  # imports pandas: only the stages that need it pay for it

    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, SMILE_SETS[kind]),
                           feature_level=opensmile.FeatureLevel.Functionals)


def n_features(kind: str) -> int:
    return len(_smile(kind).feature_names)


def functionals(wave: np.ndarray, sample_rate: int, kind: str) -> np.ndarray:
    """float32 [n_features] functionals of a mono float32 wave (NaN where opensmile gives none)."""
    clipped = np.clip(wave, -1.0, _INT16_MAX).astype(np.float32, copy=False)
    frame = _smile(kind).process_signal(clipped, sample_rate)
    return np.asarray(frame.to_numpy(), dtype=np.float32).reshape(-1)


def smile_meta(kind: str) -> dict[str, Any]:
    """What a store of `kind` records about its features (feature set, names, library version)."""
    import opensmile

    smile = _smile(kind)
    return {"feature_set": SMILE_SETS[kind], "feature_level": "Functionals",
            "feature_names": list(smile.feature_names), "n_features": len(smile.feature_names),
            "opensmile_version": opensmile.__version__}
