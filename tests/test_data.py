"""Datasets, collation and the epoch-seeded (bucketed) batch sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ser.features.dataset import (UNLABELED, EpochBatchSampler, FeatureDataset, collate_batch, make_loader, max_samples_for,
                      padding_waste)
from ser.features.stores import FeatureStore, IndexRow, StoreError, write_store

LABELS = ["angry", "happy", "neutral", "sad"]


def mel_store(root, n=10, n_mels=16, frames=20, emotions=None, lengths=None):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(n, n_mels, frames)).astype(np.float32)
    emotions = emotions or [LABELS[i % 4] for i in range(n)]
    lengths = lengths or [frames] * n
    rows = [IndexRow(f"u{i}", "iemocap", "s1", emotions[i], i % 2, i, lengths[i]) for i in range(n)]
    write_store(root, {"train": (arr, rows)}, {"kind": "mels", "sample_rate": 16000, "labels": LABELS})
    return arr


def wave_store(root, lengths, sample_rate=100):
    waves = [np.arange(n, dtype=np.float32) + 1 for n in lengths]  # +1: padding zeros are distinguishable
    offsets = np.cumsum([0] + list(lengths))[:-1]
    rows = [IndexRow(f"w{i}", "ravdess", "a1", LABELS[i % 4], 1, int(o), int(n))
            for i, (o, n) in enumerate(zip(offsets, lengths))]
    write_store(root, {"train": (np.concatenate(waves), rows)},
                {"kind": "waves", "sample_rate": sample_rate, "labels": LABELS})
    return waves


def test_mel_items_collate_to_b1ft(tmp_path):
    arr = mel_store(tmp_path)
    ds = FeatureDataset(FeatureStore(tmp_path / "f1", "train"), LABELS)
    batch = collate_batch([ds[i] for i in (3, 0, 5)])
    assert batch["x"].shape == (3, 1, 16, 20) and batch["x"].dtype == torch.float32
    assert torch.equal(batch["x"][0, 0], torch.from_numpy(arr[3]))
    assert batch["y"].tolist() == [3, 0, 1]
    assert batch["domain"].tolist() == [1, 0, 1]
    assert batch["index"].tolist() == [3, 0, 5]
    assert batch["lengths"].tolist() == [20, 20, 20]


def test_mel_batches_carry_the_valid_frame_counts(tmp_path):
    """The index `length` (valid frames, padding excluded) reaches the model as batch["lengths"]."""
    mel_store(tmp_path, n=4, lengths=[20, 7, 13, 1])
    ds = FeatureDataset(FeatureStore(tmp_path / "f1", "train"), LABELS)
    assert [ds[i]["length"] for i in range(4)] == [20, 7, 13, 1]
    batch = collate_batch([ds[i] for i in (1, 3, 0)])
    assert batch["lengths"].dtype == torch.long and batch["lengths"].tolist() == [7, 1, 20]
    loader = make_loader(ds, batch_size=4)
    assert next(iter(loader))["lengths"].tolist() == [20, 7, 13, 1]


def test_waves_pad_right_and_report_lengths(tmp_path):
    wave_store(tmp_path, [5, 3, 7])
    ds = FeatureDataset(FeatureStore(tmp_path / "f1", "train"), LABELS)
    batch = collate_batch([ds[0], ds[1], ds[2]])
    assert batch["x"].shape == (3, 7)
    assert batch["lengths"].tolist() == [5, 3, 7]
    assert batch["x"][1].tolist() == [1, 2, 3, 0, 0, 0, 0]
    assert batch["x"][2].tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_long_waves_are_cropped_center_or_seeded_random(tmp_path):
    wave_store(tmp_path, [100, 4])
    store = FeatureStore(tmp_path / "f1", "train")
    assert max_samples_for(store, 0.1) == 10  # 0.1 s at the store's 100 Hz
    center = FeatureDataset(store, LABELS, max_samples=10, crop="center")
    assert center[0]["x"].tolist() == list(range(46, 56))  # samples 45..54 (values are index + 1)
    assert len(center[1]["x"]) == 4  # short clips are left alone
    assert center.lengths.tolist() == [10, 4]
    assert [center[i]["length"] for i in (0, 1)] == [10, 4]  # wave item lengths: after cropping

    def crops(seed, epoch):
        ds = FeatureDataset(store, LABELS, max_samples=10, crop="random", seed=seed)
        ds.set_epoch(epoch)
        return [tuple(ds[0]["x"]) for _ in range(3)]

    first = crops(1, 0)
    assert len(set(first)) == 1, "a crop is a function of (seed, epoch, item), not of call order"
    assert first == crops(1, 0)
    others = {crops(1, e)[0] for e in range(1, 8)}
    assert len(others | {first[0]}) > 1, "crops should move between epochs"
    assert all(len(c) == 10 and c == tuple(range(int(c[0]), int(c[0]) + 10)) for c in others)


def test_unlabeled_items_and_unknown_emotion(tmp_path):
    mel_store(tmp_path, emotions=["angry"] * 9 + ["calm"])
    store = FeatureStore(tmp_path / "f1", "train")
    assert {it["y"] for it in FeatureDataset(store, None)} == {UNLABELED}
    with pytest.raises(StoreError, match=r"train\.csv: emotion 'calm' is not in the label list"):
        FeatureDataset(store, LABELS)


def test_sampler_is_a_function_of_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(10, 1000, size=203)
    a = EpochBatchSampler(lengths, 8, seed=5, bucket=True)
    b = EpochBatchSampler(lengths, 8, seed=5, bucket=True)  # a "resumed" run: a fresh sampler
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    epoch3 = list(a)
    a.set_epoch(4)
    assert list(a) != epoch3
    for bucket in (False, True):
        s = EpochBatchSampler(lengths, 8, seed=5, bucket=bucket)
        for epoch in range(3):
            s.set_epoch(epoch)
            batches = list(s)
            assert sorted(i for b_ in batches for i in b_) == list(range(203)), "each item once per epoch"
            assert min(len(b_) for b_ in batches) >= 2, "no batch of one (batch norm)"
            assert len(s) == len(batches)
    other_seed = EpochBatchSampler(lengths, 8, seed=6, bucket=True)
    other_seed.set_epoch(3)
    assert list(other_seed) != epoch3


def test_unshuffled_sampler_keeps_order():
    s = EpochBatchSampler(np.ones(7), 3, shuffle=False)
    assert list(s) == [[0, 1, 2], [3, 4, 5], [6]]
    assert len(s) == 3


def test_padding_waste_by_hand_and_bucketing_reduces_it():
    assert padding_waste([1, 2, 3, 4], [[0, 1], [2, 3]]) == pytest.approx(1 - 10 / 12)
    assert padding_waste([5, 5], [[0, 1]]) == 0.0
    lengths = np.random.default_rng(1).integers(16_000, 96_000, size=2000)
    plain = EpochBatchSampler(lengths, 8, seed=0, bucket=False)
    bucketed = EpochBatchSampler(lengths, 8, seed=0, bucket=True)
    waste_plain = padding_waste(lengths, list(plain))
    waste_bucketed = padding_waste(lengths, list(bucketed))
    assert waste_plain > 0.2
    assert waste_bucketed < waste_plain / 5


def test_loader_iterates_every_item_once_per_epoch(tmp_path):
    wave_store(tmp_path, list(range(3, 40)))
    ds = FeatureDataset(FeatureStore(tmp_path / "f1", "train"), LABELS, max_samples=20, crop="random")
    loader = make_loader(ds, 4, seed=0, shuffle=True, bucket=True)
    seen = []
    for batch in loader:
        assert batch["x"].shape[1] == int(batch["lengths"].max()) <= 20
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(ds)))
