"""Label maps as data: each corpus's own codes -> canonical emotion names.

A study then keeps the canonical names in its label set (params.yaml) and
drops the rest; `CorpusParams.label_map` overrides entries per corpus.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional

log = logging.getLogger(__name__)

RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise"}

CREMA_D_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear",
                    "HAP": "happy", "NEU": "neutral", "SAD": "sad"}

# Keys are lower-cased with spaces/hyphens as underscores; real copies of TESS
# spell folders and files inconsistently (OAF_Fear, YAF_pleasant_surprised).
TESS_EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
                 "neutral": "neutral", "sad": "sad", "ps": "surprise",
                 "pleasant_surprise": "surprise", "pleasant_surprised": "surprise",
                 "surprise": "surprise", "surprised": "surprise"}

# IEMOCAP: `exc` merged into happy (the usual 4-class protocol); `oth`/`xxx`
# (no agreement) map to nothing and are excluded.
IEMOCAP_EMOTIONS = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad",
                    "ang": "angry", "fru": "frustrated", "fea": "fear", "sur": "surprise",
                    "dis": "disgust", "oth": "", "xxx": ""}

TABLES: dict[str, Mapping[str, str]] = {
    "ravdess": RAVDESS_EMOTIONS,
    "crema_d": CREMA_D_EMOTIONS,
    "tess": TESS_EMOTIONS,
    "iemocap": IEMOCAP_EMOTIONS,
}


def label_table(adapter: str, override: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The raw-code -> canonical-name table of an adapter, with params overrides.

    The generic CSV adapter has no table: its emotion column is already
    canonical unless `override` maps it.
    """
    table = dict(TABLES.get(adapter, {}))
    table.update(override or {})
    return table


def to_canonical(raw: str, table: Mapping[str, str]) -> str:
    """Canonical name for `raw`; identity when the table is empty (generic corpora)."""
    if not table:
        return raw.strip().lower()
    return table.get(raw, "")
