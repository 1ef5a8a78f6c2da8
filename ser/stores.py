"""Contiguous, memory-mapped feature stores: one array per split plus an index.

Layout of a store directory (one per study and feature kind)::

    <root>/meta.json          feature params, normalisation stats, label list
    <root>/<split>.npy        mels: float32 [N, n_mels, frames]
                              waves: float32 [total_samples] (ragged, see offsets)
                              egemaps / compare: float32 [N, n_features] (openSMILE)
    <root>/<split>.csv        index: utt_id, corpus, speaker, emotion, domain, offset, length

For mels `offset` is the row and `length` the number of valid (unpadded)
frames; for openSMILE stores `offset` is the row and `length` the clip's
samples; for waves `offset`/`length` are sample positions in the flat array.
Reading never decodes audio: training and evaluation only slice these arrays.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ser.errors import SerError
from ser.fsutil import write_json_atomic

INDEX_FIELDS = ("utt_id", "corpus", "speaker", "emotion", "domain", "offset", "length")


class StoreError(FileNotFoundError, SerError):
    """A feature store is missing or inconsistent."""


@dataclass(frozen=True)
class IndexRow:
    utt_id: str
    corpus: str
    speaker: str
    emotion: str
    domain: int  # 0 = source / in-domain, 1 = target domain (cross-corpus study)
    offset: int
    length: int


def write_meta(root: str | Path, meta: dict[str, Any]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "meta.json", meta)


def write_split(root: str | Path, split: str, array: np.ndarray, index: Sequence[IndexRow]) -> None:
    """Write one split's array (.npy, memory-mappable) and its index atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{split}.npy.tmp"
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))
    tmp.replace(root / f"{split}.npy")
    tmp_csv = root / f"{split}.csv.tmp"
    with tmp_csv.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=INDEX_FIELDS)
        writer.writeheader()
        for row in index:
            writer.writerow(asdict(row))
    tmp_csv.replace(root / f"{split}.csv")


def read_index(path: str | Path) -> list[IndexRow]:
    path = Path(path)
    with path.open(newline="") as fh:
        return [IndexRow(r["utt_id"], r["corpus"], r["speaker"], r["emotion"], int(r["domain"]),
                         int(r["offset"]), int(r["length"])) for r in csv.DictReader(fh)]


class FeatureStore:
    """Read-only view of one split of a store (mels, waves or openSMILE functionals).

    `kind` is read from meta.json: for "mels" item i is a [n_mels, frames]
    array; for "waves" it is a 1-D float32 waveform at meta["sample_rate"];
    for "egemaps" / "compare" it is a [n_features] row.
    `rows` optionally restricts the view to a subset (e.g. one corpus).
    """

    def __init__(self, root: str | Path, split: str, rows: Optional[Iterable[int]] = None,
                 corpus: Optional[str] = None) -> None:
        self.root = Path(root)
        self.split = split
        arr_path, idx_path = self.root / f"{split}.npy", self.root / f"{split}.csv"
        if not (self.root / "meta.json").is_file() or not arr_path.is_file() or not idx_path.is_file():
            raise StoreError(f"{self.root}: no '{split}' split (expected meta.json, {split}.npy, {split}.csv); "
                             "run `dvc repro` for the precompute stages")
        self.meta: dict[str, Any] = json.loads((self.root / "meta.json").read_text())
        self.kind: str = self.meta["kind"]
        self.array = np.load(arr_path, mmap_mode="r")
        index = read_index(idx_path)
        keep = range(len(index)) if rows is None else list(rows)
        self.index = [index[i] for i in keep]
        if corpus is not None:
            self.index = [r for r in self.index if r.corpus == corpus]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        row = self.index[i]
        if self.array.ndim > 1:  # one row per item (mels, openSMILE functionals)
            return np.asarray(self.array[row.offset])
        return np.asarray(self.array[row.offset: row.offset + row.length])

    @property
    def lengths(self) -> np.ndarray:
        return np.array([r.length for r in self.index], dtype=np.int64)

    def labels(self, label_names: Sequence[str]) -> np.ndarray:
        """Integer labels in the order of `label_names`."""
        lookup = {name: k for k, name in enumerate(label_names)}
        try:
            return np.array([lookup[r.emotion] for r in self.index], dtype=np.int64)
        except KeyError as exc:
            raise StoreError(f"{self.root}/{self.split}.csv: emotion {exc.args[0]!r} "
                             f"is not in the label list {list(label_names)}") from None

    def corpora(self) -> list[str]:
        return sorted({r.corpus for r in self.index})


__all__ = ["IndexRow", "FeatureStore", "StoreError", "write_split", "write_meta", "read_index",
           "INDEX_FIELDS"]
