"""Datasets, collation and batch sampling over the feature stores.

Every random choice (batch order, waveform crops) is a pure function of
(seed, epoch[, item]) so that a run resumed at epoch e sees exactly the
batches an uninterrupted run would have seen, whatever process or worker
draws them.
"""
from __future__ import annotations

import logging
from typing import Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ser.config import FUNCTIONALS
from ser.features.scaling import Standardiser, speaker_keys
from ser.features.stores import FeatureStore, StoreError

log = logging.getLogger(__name__)

UNLABELED = -1  # label of items whose emotion must never be used (DANN target data)
# Stores of one fixed-size row per clip: cached encoder embeddings [hidden states, hidden size]
# and the utterance-level vectors [n_features] (openSMILE functionals, GE2E layer means).
VECTOR_KINDS = ("embeddings", *FUNCTIONALS)

__all__ = ["UNLABELED", "FeatureDataset", "collate_batch", "EpochBatchSampler", "class_balanced_weights",
           "padding_waste", "make_loader", "epoch_seed", "max_samples_for"]


def epoch_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from (seed, *keys): independent streams per epoch/item/process.

    32 bits because numpy's legacy global seeding (used by accelerate's set_seed) accepts no more.
    """
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint32)[0])


def max_samples_for(store: FeatureStore, max_seconds: Optional[float]) -> Optional[int]:
    """Crop length in samples for a waveform store, None for mels or no limit."""
    if store.kind != "waves" or max_seconds is None:
        return None
    if "sample_rate" not in store.meta:
        raise StoreError(f"{store.root}/meta.json: no 'sample_rate' for a waveform store; "
                         "re-run the precompute-waves stage")
    return int(round(max_seconds * int(store.meta["sample_rate"])))


class FeatureDataset(Dataset):
    """Items of one store split: {"x": features, "y": label, "domain": 0/1, "index": i, "length": n}.

    `length` is what the model may pool over: for mels the store index
    `length` (valid frames; padding excluded), for waves the samples after cropping.

    label_names=None marks the data as unlabeled (y = UNLABELED), as for the
    DANN target corpus, whose emotion column is never read.
    Waveforms longer than `max_samples` are cropped: `crop="random"` draws the
    offset from (seed, epoch, item) (training), `"center"` is fixed (evaluation).
    `standardiser` (utterance-level vectors): rows standardised once, over the whole split
    (per speaker: each speaker's statistics over its rows in this split).
    """

    def __init__(self, store: FeatureStore, label_names: Optional[Sequence[str]], *,
                 max_samples: Optional[int] = None, crop: Literal["random", "center"] = "center",
                 seed: int = 0, standardiser: Optional[Standardiser] = None) -> None:
        self.store = store
        self.rows: Optional[np.ndarray] = None
        if standardiser is not None:
            if store.kind not in FUNCTIONALS:
                raise StoreError(f"{store.root}: a {store.kind} store has no functionals to standardise")
            self.rows = (standardiser.apply(store.stack(), speaker_keys(store)).astype(np.float32)
                         if len(store) else np.zeros((0, store.array.shape[1]), dtype=np.float32))
        self.labels = (store.labels(label_names) if label_names is not None
                       else np.full(len(store), UNLABELED, dtype=np.int64))
        self.domains = np.array([r.domain for r in store.index], dtype=np.int64)
        self.max_samples = max_samples
        self.crop = crop
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store)

    @property
    def lengths(self) -> np.ndarray:
        """Lengths after cropping (samples for waves, valid frames for mels)."""
        lengths = self.store.lengths
        return lengths if self.max_samples is None else np.minimum(lengths, self.max_samples)

    def __getitem__(self, i: int) -> dict:
        x = self.store[i] if self.rows is None else self.rows[i]
        if self.max_samples is not None and x.shape[-1] > self.max_samples:
            excess = x.shape[-1] - self.max_samples
            if self.crop == "random":
                start = int(np.random.default_rng(epoch_seed(self.seed, self.epoch, i)).integers(0, excess + 1))
            else:
                start = excess // 2
            x = x[..., start:start + self.max_samples]
        item = {"x": x, "y": int(self.labels[i]), "domain": int(self.domains[i]), "index": i}
        if self.store.kind in VECTOR_KINDS:  # one fixed-size vector per clip
            return {**item, "length": 1, "vector": True}
        length = int(self.store.index[i].length) if x.ndim == 2 else int(x.shape[-1])
        return {**item, "length": min(length, int(x.shape[-1]))}


def collate_batch(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Mels -> x [B, 1, n_mels, frames]; waves -> right-padded x [B, T_max]; both with lengths [B];
    embeddings -> x [B, hidden states, hidden size], functionals -> x [B, n_features] (lengths 1).

    Mel lengths are the items' valid frame counts (`length`; all frames when
    an item has none), wave lengths their sample counts; models pool over them.
    """
    batch = {k: torch.tensor([it[k] for it in items], dtype=torch.long) for k in ("y", "domain", "index")}
    first = items[0]["x"]
    if items[0].get("vector"):  # embeddings [B, hidden states, hidden size], functionals [B, n_features]
        batch["x"] = torch.from_numpy(np.stack([it["x"] for it in items]).astype(np.float32))
        batch["lengths"] = torch.ones(len(items), dtype=torch.long)
        return batch
    if first.ndim == 2:
        batch["x"] = torch.from_numpy(np.stack([it["x"] for it in items]).astype(np.float32)).unsqueeze(1)
        batch["lengths"] = torch.tensor([it.get("length", it["x"].shape[-1]) for it in items], dtype=torch.long)
        return batch
    lengths = [len(it["x"]) for it in items]
    x = np.zeros((len(items), max(lengths)), dtype=np.float32)
    for row, it in enumerate(items):
        x[row, :len(it["x"])] = it["x"]
    batch["x"] = torch.from_numpy(x)
    batch["lengths"] = torch.tensor(lengths, dtype=torch.long)
    return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of indices, reshuffled per epoch from a torch.Generator seeded by (seed, epoch).

    bucket=True (waveform models): the epoch's permutation is cut into buckets of
    `bucket_factor * batch_size` items, each bucket is sorted by length and cut
    into batches, and the batches are shuffled, so clips of similar length share
    a batch (less padding) while batch composition still changes every epoch.
    shuffle=False keeps dataset order (evaluation). A trailing batch of one item
    is merged into its neighbour: a batch of one breaks batch-norm in training.

    balance_labels (class-balanced sampling, shuffle=True only): instead of a
    permutation, each epoch draws len(lengths) items with replacement, every
    class present equally likely, from the same (seed, epoch) generator.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, bucket: bool = False, bucket_factor: int = 50,
                 balance_labels: Optional[Sequence[int] | np.ndarray] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.weights: Optional[torch.Tensor] = None
        if balance_labels is not None:
            if not shuffle:
                raise ValueError("class-balanced sampling needs shuffle=True")
            self.weights = class_balanced_weights(balance_labels)
            if len(self.weights) != len(self.lengths):
                raise ValueError(f"{len(self.weights)} labels for {len(self.lengths)} items")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.bucket = bucket
        self.bucket_size = max(1, bucket_factor) * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cut(self, order: Sequence[int]) -> list[list[int]]:
        batches = [list(order[i:i + self.batch_size]) for i in range(0, len(order), self.batch_size)]
        if self.shuffle and len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2].extend(batches.pop())
        return batches

    def batches(self) -> list[list[int]]:
        """This epoch's batches (a pure function of seed, epoch and lengths)."""
        n = len(self.lengths)
        if not self.shuffle:
            return self._cut(list(range(n)))
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.weights is not None and n:
            perm = torch.multinomial(self.weights, n, replacement=True, generator=gen).tolist()
        else:
            perm = torch.randperm(n, generator=gen).tolist()
        if not self.bucket:
            return self._cut(perm)
        batches: list[list[int]] = []
        for start in range(0, n, self.bucket_size):
            chunk = perm[start:start + self.bucket_size]
            # stable sort: ties keep the random order, so equal lengths still mix
            chunk.sort(key=lambda i: self.lengths[i])
            batches.extend(self._cut(chunk))
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches()) if self.shuffle else -(-len(self.lengths) // self.batch_size)


def class_balanced_weights(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Per-item sampling weights 1 / (count of its class): each class present is drawn equally often."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError("class-balanced sampling needs labeled items (got UNLABELED ones)")
    counts = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(1.0 / counts[labels]).to(torch.float64)


def padding_waste(lengths: Sequence[int] | np.ndarray, batches: Sequence[Sequence[int]]) -> float:
    """Fraction of a padded batch's cells that are padding, over all batches."""
    lengths = np.asarray(lengths)
    padded = sum(int(lengths[list(b)].max()) * len(b) for b in batches if len(b))
    real = sum(int(lengths[list(b)].sum()) for b in batches if len(b))
    return 0.0 if padded == 0 else 1.0 - real / padded


def make_loader(dataset: FeatureDataset, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                bucket: bool = False, num_workers: int = 0, balance: bool = False) -> DataLoader:
    """A DataLoader over `dataset` driven by an EpochBatchSampler (`loader.batch_sampler`).

    balance: class-balanced batches drawn with replacement (see EpochBatchSampler).
    """
    sampler = EpochBatchSampler(dataset.lengths, batch_size, seed=seed, shuffle=shuffle, bucket=bucket,
                                balance_labels=dataset.labels if balance else None)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch, num_workers=num_workers,
                      persistent_workers=False)
