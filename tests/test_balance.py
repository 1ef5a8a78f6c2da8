"""Coping with real data, unit by unit: class-balanced batches, weighted objectives, SpecAugment masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ser.config import SpecAugmentParams
from ser.features.dataset import UNLABELED, EpochBatchSampler
from ser.train.augment import spec_augment
from ser.train.objectives import CrossEntropy, DomainAdversarial

LABELS = np.array([0] * 90 + [1] * 10)  # 9:1 imbalance


def _share_of_minority(sampler: EpochBatchSampler, epochs: range) -> float:
    drawn = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        drawn += [i for batch in sampler for i in batch]
    return float(np.mean(LABELS[drawn] == 1))


@pytest.mark.parametrize("bucket", [False, True])
def test_balanced_sampler_draws_classes_equally(bucket):
    lengths = np.arange(100) % 7 + 1
    balanced = EpochBatchSampler(lengths, 8, seed=5, bucket=bucket, bucket_factor=2, balance_labels=LABELS)
    plain = EpochBatchSampler(lengths, 8, seed=5, bucket=bucket, bucket_factor=2)
    assert 0.4 < _share_of_minority(balanced, range(20)) < 0.6
    assert _share_of_minority(plain, range(20)) == pytest.approx(0.1)
    balanced.set_epoch(3)
    assert sum(len(b) for b in balanced) == 100 and len(balanced) == len(balanced.batches())


def test_balanced_sampler_is_a_function_of_seed_and_epoch():
    def batches(seed, epoch):
        sampler = EpochBatchSampler(np.ones(100), 8, seed=seed, balance_labels=LABELS)
        sampler.set_epoch(epoch)
        return sampler.batches()
    assert batches(1, 3) == batches(1, 3)
    assert batches(1, 3) != batches(1, 4) and batches(1, 3) != batches(2, 3)


def test_balanced_sampler_refuses_unlabeled_or_ordered_data():
    with pytest.raises(ValueError, match="labeled"):
        EpochBatchSampler(np.ones(3), 2, balance_labels=[0, UNLABELED, 1])
    with pytest.raises(ValueError, match="shuffle"):
        EpochBatchSampler(np.ones(3), 2, shuffle=False, balance_labels=[0, 1, 1])


class _Identity(nn.Module):
    """A 'model' whose features are its input and whose logits are its features."""

    def __init__(self) -> None:
        super().__init__()
        self.domain_head = nn.Linear(3, 2)

    def embed(self, x, lengths=None):
        return x

    def classify(self, feats):
        return feats


def test_objectives_weight_the_emotion_loss_only():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen)
    batch = {"x": logits, "y": torch.tensor([0, 0, 0, 0, 1, 2])}
    weight = torch.tensor([0.25, 1.0, 1.75])
    expected = F.cross_entropy(logits, batch["y"], weight=weight)
    assert not torch.isclose(expected, F.cross_entropy(logits, batch["y"]))
    loss, _ = CrossEntropy(weight)(_Identity(), batch, None, 0.0)
    assert torch.isclose(loss, expected)
    assert torch.isclose(CrossEntropy()(_Identity(), batch, None, 0.0)[0], F.cross_entropy(logits, batch["y"]))
    target = {"x": torch.randn(4, 3, generator=gen)}
    _, logs = DomainAdversarial(0.5, 1.0, weight)(_Identity(), batch, target, 0.5)
    assert torch.isclose(logs["ce"], expected)
    assert torch.isclose(logs["loss"], expected + 0.5 * logs["domain_loss"])


def _masked(x, lengths, p, seed=0):
    return spec_augment(x, lengths, p, torch.Generator().manual_seed(seed))


def test_spec_augment_masks_only_valid_frames():
    x = torch.ones(4, 1, 16, 30)
    lengths = torch.tensor([30, 12, 5, 1])
    p = SpecAugmentParams(freq_masks=0, freq_width=0, time_masks=3, time_width=10)
    out = _masked(x, lengths, p)
    assert torch.equal(x, torch.ones_like(x)), "the input is not modified in place"
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[b, :, :, n:], x[b, :, :, n:]), "padding frames are never masked"
        masked_frames = (out[b, 0] == 0).all(dim=0)
        assert int(masked_frames.sum()) <= min(n, 3 * 10)
        assert torch.equal((out[b, 0] == 0).any(dim=0), masked_frames), "time masks span every mel bin"
    assert (out == 0).any(), "time_width 10 over 3 masks masks something"


def test_spec_augment_frequency_bands_widths_and_determinism():
    x = torch.randn(8, 16, 20, generator=torch.Generator().manual_seed(1)) + 5  # [B, n_mels, T], no zeros
    p = SpecAugmentParams(freq_masks=1, freq_width=3, time_masks=0, time_width=0)
    out = _masked(x, None, p)
    for b in range(8):
        rows = (out[b] == 0).all(dim=1)
        assert torch.equal((out[b] == 0).any(dim=1), rows), "a band covers every frame"
        idx = torch.nonzero(rows).flatten().tolist()
        assert len(idx) <= 3 and idx == list(range(idx[0], idx[0] + len(idx)) if idx else []), "one contiguous band"
    assert (out == 0).any()
    assert torch.equal(out, _masked(x, None, p)), "same generator seed, same masks"
    assert not torch.equal(out, _masked(x, None, p, seed=1))
    none = SpecAugmentParams(freq_masks=0, freq_width=8, time_masks=2, time_width=0)
    assert torch.equal(_masked(x, None, none), x), "zero-width masks change nothing"
