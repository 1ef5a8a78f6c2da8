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


def test_pooling_before_relu_is_the_same_function_and_gradient_as_relu_before_pooling() -> None:
    """The conv blocks run Conv, BN, MaxPool, ReLU (faster); outputs and gradients equal the textbook order."""
    torch.manual_seed(1)
    model = CRNN(CrnnParams(channels=(4, 8, 8), lstm_hidden=8, fc_hidden=8), 4, n_mels=16)
    model.train()
    kinds = [type(m) for m in model.conv]
    assert kinds[:4] == [torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d, torch.nn.ReLU]
    # Parameter-free layers swapped places: checkpoints of the old order load unchanged.
    assert not any(k.startswith(("conv.2.", "conv.3.", "conv.6.", "conv.7.")) for k in model.state_dict())
    x = torch.randn(3, 1, 16, 40)
    x[0, :, :, :8] = -4.0  # windows whose maxima are all negative: ReLU's zero gradient must agree
    lengths = torch.tensor([40, 33, 17])

    def textbook(inp: torch.Tensor) -> torch.Tensor:
        steps = lengths.clone()
        blocks = list(model.conv)
        for i in range(0, len(blocks), 4):
            conv, bn, pool, _ = blocks[i:i + 4]
            inp = inp * (torch.arange(inp.shape[3]) < steps[:, None])[:, None, None, :].to(inp.dtype)
            inp = pool(torch.relu(bn(conv(inp))))
            steps = torch.div(steps, 2, rounding_mode="floor").clamp(min=1)
        return inp

    grads = []
    for forward in (lambda inp: model._masked_conv(inp, lengths), textbook):
        model.zero_grad()
        inp = x.clone().requires_grad_(True)
        out = forward(inp)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), inp.grad, [p.grad.clone() for p in model.conv.parameters()]))
    (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = grads
    assert torch.equal(out_a, out_b) and torch.equal(gx_a, gx_b)
    assert all(torch.equal(a, b) for a, b in zip(gp_a, gp_b))
