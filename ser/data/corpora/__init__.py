"""The corpora: one file each (ser.data.corpora.<name>), collected here.

Each file holds a `CORPUS` (ser.data.corpora.base.Corpus): adapter, label map,
download source, what a complete copy holds and the demo plan. Adding a corpus
is one such file, its entry in `CORPORA` below, and its params (`corpora:`,
`splits:`); `adapter: csv` reads any corpus described by a metadata CSV
without code.

An adapter only *finds* clips: it parses names and label files, reads each
file's header (duration, sample rate) and reports what it skipped and why.
Mapping raw labels to a study's label set and assigning splits happen later
(ser.data.metadata), so one scan serves every study that uses the corpus.
Rows come back with `emotion=""`, `split="unassigned"` and `raw_label` set to
the corpus's own code (RAVDESS "05", CREMA-D "ANG", TESS "ps", IEMOCAP "exc").
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Optional

from ser.config import CorpusParams
from ser.data.corpora import crema_d, csv_corpus, iemocap, ravdess, tess
from ser.data.corpora.base import (AUDIO_SUFFIXES, Corpus, CorpusNotFound, CorpusSource, ScanBuilder, ScanResult,
                                   find_nested, is_audio, is_hidden, iter_files, nested_hint, to_canonical)

log = logging.getLogger(__name__)
MAX_LOGGED = 20  # skipped files listed in the log; the report lists all

__all__ = ["CORPORA", "ADAPTERS", "AUDIO_SUFFIXES", "Corpus", "CorpusSource", "CorpusNotFound", "ScanResult",
           "ScanBuilder", "scan_corpus", "display_name", "label_table", "to_canonical", "is_audio", "is_hidden",
           "iter_files", "find_nested", "nested_hint"]

# adapter key -> the corpus; a corpus's params key defaults to it (`corpora.<key>.adapter`).
CORPORA: dict[str, Corpus] = {c.name: c for c in (iemocap.CORPUS, ravdess.CORPUS, crema_d.CORPUS, tess.CORPUS,
                                                  csv_corpus.CORPUS)}
ADAPTERS = {name: c.scan for name, c in CORPORA.items()}


def display_name(corpus: str) -> str:
    """The name people know a corpus by, for messages ("RAVDESS has no frustrated class")."""
    return CORPORA[corpus].display if corpus in CORPORA and corpus != "csv" else corpus


def label_table(adapter: str, override: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The raw-code -> canonical-name table of an adapter, with params overrides.

    The generic CSV adapter has no table: its emotion column is already
    canonical unless `override` maps it.
    """
    table = dict(CORPORA[adapter].labels) if adapter in CORPORA else {}
    table.update(override or {})
    return table


def scan_corpus(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    """Scan corpus `name` at `root` with its adapter (`cfg.adapter`, default: the name)."""
    adapter = cfg.adapter or name
    if adapter not in CORPORA:
        raise KeyError(f"corpora.{name}: unknown adapter {adapter!r}; known: {sorted(CORPORA)} "
                       f"(use adapter: csv for a corpus described by a metadata CSV)")
    log.info("scanning %s at %s (adapter %s)", display_name(name), root, adapter)
    result = CORPORA[adapter].scan(name, cfg, Path(root))
    if result.skipped:
        shown = "\n  ".join(f"{p}: {why}" for p, why in result.skipped[:MAX_LOGGED])
        more = len(result.skipped) - MAX_LOGGED
        log.warning("%s: skipped %d file(s):\n  %s%s", display_name(name), len(result.skipped),
                    shown, f"\n  ... and {more} more (see the metadata report)" if more > 0 else "")
    log.info("%s: %d usable clip(s), %d skipped, ignored %s", display_name(name),
             len(result.utterances), len(result.skipped), result.ignored or "nothing")
    return result
