"""The CRNN pools over the valid frames a mel batch carries: padding content cannot leak in."""
from __future__ import annotations

import torch

from ser.config import CrnnParams
from ser.models.crnn import CRNN


def _model() -> CRNN:
    torch.manual_seed(0)
    model = CRNN(CrnnParams(channels=(4, 8, 8), lstm_hidden=8, fc_hidden=8), 4, n_mels=16)
    model.eval()  # batch norm on running statistics: items are independent
    for m in model.modules():  # non-trivial running statistics, so a wrong mask would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@torch.no_grad()
def test_embed_with_lengths_does_not_depend_on_the_padding() -> None:
    model = _model()
    n = 213  # not a multiple of the pooling factor: the floors matter
    clip = torch.randn(1, 1, 16, n)
    silence = torch.cat([clip, torch.full((1, 1, 16, 300 - n), -5.0)], dim=3)
    noise = torch.cat([clip, 3 * torch.randn(1, 1, 16, 300 - n)], dim=3)
    repeat = torch.cat([clip, clip[..., :300 - n]], dim=3)
    lengths = torch.tensor([n])
    unpadded = model.embed(clip)
    for padded in (silence, noise, repeat):
        torch.testing.assert_close(model.embed(padded, lengths), unpadded, atol=1e-5, rtol=1e-5)
    # A batch mixing clips of different lengths gives each clip its own unpadded embedding.
    other = torch.randn(1, 1, 16, 300)
    batch = torch.cat([noise, other])
    out = model.embed(batch, torch.tensor([n, 300]))
    torch.testing.assert_close(out[0:1], unpadded, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2], model.embed(other), atol=1e-5, rtol=1e-5)
    # Without lengths the padding does change the pooled feature (the bug this guards against).
    assert not torch.allclose(model.embed(silence), unpadded, atol=1e-3)
    logits = model(noise, lengths)
    torch.testing.assert_close(logits, model.classify(unpadded), atol=1e-5, rtol=1e-5)
