"""Contiguous, memory-mapped feature stores: every clip of a study once, one index per fold and split.

Layout of a store directory (one per study and feature kind)::

    <study>/meta.json         feature params, label list, folds, content fingerprint
                              (mels, mel_norm speaker: per-speaker statistics)
    <study>/clips.npy         mels: float32 [N, n_mels, frames] (log-mels, not normalised)
                              waves: float32 [total_samples] (ragged, see offsets)
                              egemaps / compare: float32 [N, n_features] (openSMILE)
    <study>/clips.csv         index of every clip: utt_id, corpus, speaker, emotion, domain, offset, length
    <study>/f<k>/meta.json    fold k: split sizes; mels: the fold's train statistics (mean, std)
    <study>/f<k>/<split>.csv  fold k's train / val / test / adapt rows (offsets into clips.npy)

A fold folder is what training and evaluation open (`FeatureStore(<study>/f<k>, split)`);
mels are normalised on reading with the fold's statistics, so folds share one array.

For mels `offset` is the row and `length` the number of valid (unpadded)
frames; for openSMILE stores `offset` is the row and `length` the clip's
samples; for waves `offset`/`length` are sample positions in the flat array.
Reading never decodes audio: training and evaluation only slice these arrays.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ser.errors import SerError
from ser.fsutil import write_json_atomic

INDEX_FIELDS = ("utt_id", "corpus", "speaker", "emotion", "domain", "offset", "length")
CLIPS = "clips"  # the study-level array and index


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


def speaker_key(corpus: str, speaker: str) -> str:
    """Key of a speaker's statistics in a store's meta (speaker ids are per corpus)."""
    return f"{corpus}/{speaker}"


def store_fingerprint(root: str | Path) -> str:
    """sha256 over every file of a store except its top-level meta.json (and work files): what the store holds."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != root / "meta.json"
                       and not p.name.endswith((".partial", ".tmp"))):  # work files of a running precompute
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def write_split(root: str | Path, split: str, array: np.ndarray, index: Sequence[IndexRow]) -> None:
    """Write an array (.npy, memory-mappable) and its index atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{split}.npy.tmp"
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))
    tmp.replace(root / f"{split}.npy")
    write_index(root, split, index)


def write_store(study_root: str | Path, splits: Mapping[str, tuple[np.ndarray, Sequence[IndexRow]]],
                meta: dict[str, Any], fold: int = 1, fold_meta: Optional[dict[str, Any]] = None) -> Path:
    """Write a one-fold store from per-split arrays (rows of [N, ...] items, or a flat wave array
    with the index's offsets into it): every split's items go into clips.npy, the index rows are
    re-pointed at them. For features made outside the precompute stages (and tests); returns the
    fold folder to open with FeatureStore.
    """
    study_root = Path(study_root)
    arrays, clip_rows, fold_rows = [], [], {}
    position = 0
    for split, (array, rows) in splits.items():
        fold_rows[split] = []
        for r in rows:
            if array.ndim > 1:
                item, offset = array[r.offset][None], position
                position += 1
            else:
                item, offset = array[r.offset: r.offset + r.length], position
                position += r.length
            arrays.append(item)
            moved = IndexRow(r.utt_id, r.corpus, r.speaker, r.emotion, r.domain, offset, r.length)
            clip_rows.append(moved)
            fold_rows[split].append(moved)
    write_split(study_root, CLIPS, np.concatenate(arrays), clip_rows)
    fold_dir = study_root / f"f{fold}"
    for split, rows in fold_rows.items():
        write_index(fold_dir, split, rows)
    write_meta(fold_dir, {"fold": fold, "splits": {s: len(r) for s, r in fold_rows.items()}, **(fold_meta or {})})
    write_meta(study_root, {"folds": [fold], **meta})
    return fold_dir


def write_index(root: str | Path, split: str, index: Sequence[IndexRow]) -> None:
    """Write <root>/<split>.csv atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
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
    """Read-only view of one split of one fold of a store (mels, waves or openSMILE functionals).

    `root` is a fold folder (<study>/f<k>). `kind` is read from meta.json: for
    "mels" item i is a [n_mels, frames] array, normalised with the fold's train
    statistics (or, mel_norm speaker, its speaker's for the valid frames); for
    "waves" it is a 1-D float32 waveform at meta["sample_rate"]; for "egemaps" /
    "compare" it is a raw [n_features] row. `meta` is the study meta updated
    with the fold's. `rows` optionally restricts the view to a subset, `corpus`
    to one corpus.
    """

    def __init__(self, root: str | Path, split: str, rows: Optional[Iterable[int]] = None,
                 corpus: Optional[str] = None) -> None:
        self.root = Path(root)
        self.split = split
        study = self.root.parent
        arr_path, idx_path = study / f"{CLIPS}.npy", self.root / f"{split}.csv"
        if not all(p.is_file() for p in (study / "meta.json", self.root / "meta.json", arr_path, idx_path)):
            raise StoreError(f"{self.root}: no '{split}' split (expected {study}/meta.json, {arr_path.name} and "
                             f"{self.root.name}/meta.json, {split}.csv); run `dvc repro` for the precompute stages")
        self.meta: dict[str, Any] = {**json.loads((study / "meta.json").read_text()),
                                     **json.loads((self.root / "meta.json").read_text())}
        self.kind: str = self.meta["kind"]
        self.array = np.load(arr_path, mmap_mode="r")
        index = read_index(idx_path)
        keep = range(len(index)) if rows is None else list(rows)
        self.index = [index[i] for i in keep]
        if corpus is not None:
            self.index = [r for r in self.index if r.corpus == corpus]
        self._norm: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._speakers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.kind == "mels" and "mean" in self.meta:  # a store of already normalised mels has none
            self._norm = (np.asarray(self.meta["mean"], dtype=np.float32)[:, None],
                          np.asarray(self.meta["std"], dtype=np.float32)[:, None])
            for key, st in (self.meta.get("speaker_stats") or {}).items():
                self._speakers[key] = (np.asarray(st["mean"], dtype=np.float32)[:, None],
                                       np.asarray(st["std"], dtype=np.float32)[:, None])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        row = self.index[i]
        if self.array.ndim == 1:  # waves: ragged
            return np.asarray(self.array[row.offset: row.offset + row.length])
        item = np.asarray(self.array[row.offset])  # one row per item (mels, openSMILE functionals)
        if self._norm is None:
            return item
        mean, std = self._norm
        if not self._speakers:
            return (item - mean) / std
        # mel_norm speaker: valid frames with the speaker's statistics, padding with the train ones
        s_mean, s_std = self._speakers[speaker_key(row.corpus, row.speaker)]
        out = (item - s_mean) / s_std
        out[:, row.length:] = (item[:, row.length:] - mean) / std
        return out

    def stack(self) -> np.ndarray:
        """The view's items as one [N, ...] array, in index order (fixed-size kinds; mels normalised)."""
        if self.array.ndim == 1:
            raise StoreError(f"{self.root}: a {self.kind} store holds variable-length items; read them one by one")
        if self._norm is None:
            return np.asarray(self.array[[r.offset for r in self.index]], dtype=np.float32)
        return np.stack([self[i] for i in range(len(self))])

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


__all__ = ["IndexRow", "FeatureStore", "StoreError", "write_split", "write_index", "write_meta", "read_index",
           "INDEX_FIELDS", "CLIPS", "speaker_key", "store_fingerprint", "fold_root", "write_store"]


def fold_root(features_root: str | Path, kind: str, study: str, fold: int, key: Optional[str] = None) -> Path:
    """data/features/<kind>/<study>[/<key>]/f<fold>: the store folder one run reads (`key`: the
    encoder's sub-store of an embeddings store, see EncoderParams.store_key)."""
    root = Path(features_root) / kind / study
    return (root / key if key else root) / f"f{fold}"
