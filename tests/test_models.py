"""Model registry, CRNN, gradient reversal, encoders (wav2vec2 full / LoRA / QLoRA) on tiny random models."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ser.config import CrnnParams, EncoderParams, LoraParams, ModelParams, OptimParams
from ser.models import MODELS, SERModel, build_model
from ser.models.grl import DomainHead, dann_alpha, grad_reverse

REPO = Path(__file__).resolve().parents[1]


def params(arch: str, optim: OptimParams | None = None, **sections) -> ModelParams:
    return ModelParams(study="s", arch=arch, objective="ce", input="waves", epochs=1, batch_size=2,
                       optim=optim or OptimParams(), **sections)


def w2v(cache: Path, n_classes: int = 4, domain: bool = False, optim: OptimParams | None = None,
        **kw) -> SERModel:
    return build_model(params("encoder", optim, encoder=EncoderParams(backbone="random:wav2vec2-tiny", **kw)),
                       n_classes, with_domain_head=domain, cache_dir=cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backbones")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def adam_steps(model: SERModel, x, lengths, n_steps: int = 2, optim: OptimParams | None = None) -> None:
    opt = torch.optim.Adam(model.param_groups(optim or OptimParams(lr=1e-2)))
    model.train()
    for _ in range(n_steps):
        loss = torch.nn.functional.cross_entropy(model(x, lengths), torch.tensor([0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()


# --------------------------------------------------------------------------- registry
def test_registry_errors():
    assert sorted(MODELS) == ["crnn", "encoder", "mlp"]
    with pytest.raises(KeyError, match=r"arch 'transformer' is not a torch network; torch archs: \['crnn', 'encoder', 'mlp'\]"):
        build_model(params("transformer"), 4)
    with pytest.raises(ValueError, match=r"models\.baseline\.crnn"):
        build_model(params("crnn"), 4, name="baseline")
    with pytest.raises(ValueError, match=r"models\.qlora\.encoder"):
        build_model(params("encoder", crnn=CrnnParams()), 4, name="qlora")


# --------------------------------------------------------------------------- CRNN
def test_crnn_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = build_model(params("crnn", crnn=CrnnParams()), 4, with_domain_head=True, n_mels=128)
    x = torch.randn(2, 1, 128, 300)
    with torch.no_grad():
        feats = model.embed(x)
        assert feats.shape == (2, 256) and model.feature_dim == 256
        assert model(x).shape == (2, 4)
        assert model.domain_head(feats).shape == (2, 2)
        assert model.embed(x[:, 0]).shape == (2, 256)        # [B, n_mels, frames] accepted too
    with pytest.raises(ValueError, match="crnn expects"):
        model.embed(torch.randn(2, 1, 64, 300))

    conv = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + 2 * (32 + 64 + 128)
    lstm = 2 * 4 * (128 * (128 * 16) + 128 * 128 + 2 * 128)  # input = 128 channels x 16 mel bins
    head = (256 * 128 + 128) + (128 * 4 + 4)
    domain = (256 * 128 + 128) + (128 * 2 + 2)
    total, trainable = model.count_parameters()
    assert total == trainable == conv + lstm + head + domain
    no_domain = build_model(params("crnn", crnn=CrnnParams()), 4).count_parameters()[0]
    assert no_domain == conv + lstm + head == 2_356_804    # the reference's "~2.2M"


def test_crnn_lengths_pooling():
    torch.manual_seed(0)
    model = build_model(params("crnn", crnn=CrnnParams()), 4).eval()
    x = torch.randn(2, 1, 128, 64)
    with torch.no_grad():
        full = model.embed(x)
        packed_full = model.embed(x, torch.tensor([64, 64]))
        short = model.embed(x, torch.tensor([64, 32]))
    torch.testing.assert_close(packed_full, full)            # full lengths == unmasked mean
    torch.testing.assert_close(short[0], full[0])
    assert not torch.allclose(short[1], full[1])              # padded steps are left out


# --------------------------------------------------------------------------- GRL / DANN
def test_grad_reverse_flips_and_scales_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    w = torch.tensor([0.5, 2.0, -4.0])
    y = grad_reverse(x, 0.25)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.125, -0.5, 1.0]))


def test_dann_alpha_schedule():
    assert dann_alpha(0.0, 0.7) == 0.0
    assert dann_alpha(1.0, 0.7) == pytest.approx(0.7 * (2 / (1 + math.exp(-10)) - 1), abs=1e-15)
    assert dann_alpha(0.5, 0.7) == pytest.approx(0.7 * (2 / (1 + math.exp(-5)) - 1))
    values = [dann_alpha(i / 100, 0.7) for i in range(101)]
    assert all(a < b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="progress"):
        dann_alpha(1.5, 0.7)


def test_domain_head_shape():
    assert DomainHead(16, 8, 2, 0.1)(torch.randn(5, 16)).shape == (5, 2)


# --------------------------------------------------------------------------- encoders (wav2vec2)
def test_wav2vec2_masked_pooling_ignores_padding(cache):
    torch.manual_seed(0)
    model = w2v(cache, domain=True).eval()
    clip, other = torch.randn(9000), torch.randn(16000)
    batch = torch.stack([torch.cat([clip, torch.zeros(7000)]), other])
    with torch.no_grad():
        alone = model.embed(clip[None])
        padded = model.embed(batch, torch.tensor([9000, 16000]))
        unmasked = model.embed(batch)
    # pooled features: the default 256-wide frame projection of the 32-wide hidden states
    assert padded.shape == (2, 256) and model.feature_dim == 256
    assert model(batch, torch.tensor([9000, 16000])).shape == (2, 4)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unmasked[0], alone[0], atol=1e-3)   # padding would change it
    # the waveform is normalised inside embed: scale and offset do not matter
    with torch.no_grad():
        torch.testing.assert_close(model.embed(3 * clip[None] + 0.5), alone, atol=1e-5, rtol=1e-4)


def test_random_preset_is_deterministic_and_keeps_rng(tmp_path, cache):
    from safetensors.torch import load_file
    from ser.models.encoders import random_backbone_dir
    torch.manual_seed(123)
    a = random_backbone_dir("wav2vec2-tiny", tmp_path / "a")
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))           # the caller's RNG stream is untouched
    torch.manual_seed(999)                             # another global seed: the same weights
    b = random_backbone_dir("wav2vec2-tiny", tmp_path / "b")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert random_backbone_dir("wav2vec2-tiny", tmp_path / "a") == a  # reused, not rebuilt
    with pytest.raises(KeyError, match="unknown random encoder preset 'huge'"):
        build_model(params("encoder", encoder=EncoderParams(backbone="random:huge")), 4, cache_dir=cache)
    # the presets of the wav2vec2-only schema were renamed: the error lists the new names
    with pytest.raises(KeyError, match=r"unknown random encoder preset 'tiny'; known: \[.*'wav2vec2-tiny'"):
        build_model(params("encoder", encoder=EncoderParams(backbone="random:tiny")), 4, cache_dir=cache)


def test_freeze_feature_encoder_full_finetune(cache):
    torch.manual_seed(0)
    model = w2v(cache, freeze_feature_encoder=True)
    before = snapshot(model)
    x, lengths = torch.randn(2, 16000), torch.tensor([16000, 12000])
    adam_steps(model, x, lengths)
    conv = [n for n in before if ".feature_extractor." in n]
    rest = [n for n, p in model.named_parameters() if n not in conv]
    assert conv and all(not model.get_parameter(n).requires_grad for n in conv)
    assert all(torch.equal(before[n], model.get_parameter(n)) for n in conv)
    changed = [n for n in rest if not torch.equal(before[n], model.get_parameter(n))]
    assert changed == rest


def test_qlora_step_trains_only_adapters_and_heads(cache):
    import bitsandbytes as bnb
    torch.manual_seed(0)
    model = w2v(cache, regime="qlora", lora=LoraParams(r=4, alpha=8, dropout=0.0))
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 2 * 6                      # q, k, v, out, 2 feed-forward per layer
    assert type(model.base_model.feature_projection.projection) is torch.nn.Linear   # kept full precision
    base4 = {id(m.weight): m.weight.detach().clone() for m in linear4}
    before = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("projection.", "classifier.")) for n in trainable)
    assert any(".q_proj.lora_A" in n for n in trainable) and any(".v_proj.lora_B" in n for n in trainable)
    assert not any(".k_proj.lora" in n for n in trainable)

    assert not model.base_model.feature_extractor._requires_grad   # no backward through the frozen convs
    with torch.no_grad():                             # an eval pass first: must not re-pack the 4-bit weights
        model.eval()(torch.randn(1, 8000))
    adam_steps(model, torch.randn(2, 16000), torch.tensor([16000, 11000]))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == trainable                       # every adapter / head tensor moved, nothing else
    for m in linear4:                                 # the 4-bit base: frozen, still packed, unchanged
        assert isinstance(m, bnb.nn.Linear4bit) and isinstance(m.weight, bnb.nn.Params4bit)
        assert m.weight.dtype == torch.uint8 and not m.weight.requires_grad
        assert torch.equal(m.weight, base4[id(m.weight)])
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False)


def test_lora_layers_and_logical_parameter_counts(cache):
    torch.manual_seed(0)
    lora = LoraParams(r=4, alpha=8, target_modules=("q_proj", "v_proj"), layers=(1,))
    plain = w2v(cache)
    lora_fp = w2v(cache, regime="lora", lora=lora)
    qlora = w2v(cache, regime="qlora", lora=lora)
    adapters = sorted(n for n, p in lora_fp.named_parameters() if "lora_" in n)
    assert adapters and all(".layers.1." in n for n in adapters)
    n_lora = 2 * (4 * 32 + 32 * 4)                    # q and v of one layer, r = 4, hidden 32
    total_plain, trainable_plain = plain.count_parameters()
    assert trainable_plain < total_plain              # feature encoder frozen by default
    for model in (lora_fp, qlora):
        total, trainable = model.count_parameters()
        assert total == total_plain + n_lora          # 4-bit weights counted by logical size
        # the head: projection 32 -> 256, classifier 256 -> 256 -> 4
        assert trainable == n_lora + (32 * 256 + 256) + (256 * 256 + 256 + 256 * 4 + 4)
    with pytest.raises(ValueError, match=r"lora.layers: \[5\] out of range"):
        w2v(cache, regime="lora", lora=LoraParams(layers=(5,)))


def test_param_groups_learning_rates_and_decay(cache):
    torch.manual_seed(0)
    optim = OptimParams(optimizer="adamw", lr=1e-3, lr_encoder=5e-4, weight_decay=0.01)
    model = w2v(cache, domain=True, optim=optim)
    groups = {g["name"]: g for g in model.param_groups(optim)}
    assert set(groups) == {"encoder", "encoder_no_decay", "heads", "heads_no_decay"}
    assert groups["encoder"]["lr"] == groups["encoder_no_decay"]["lr"] == 5e-4
    assert groups["heads"]["lr"] == groups["heads_no_decay"]["lr"] == 1e-3
    assert groups["encoder"]["weight_decay"] == 0.01 and groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for g in ("encoder_no_decay", "heads_no_decay") for p in groups[g]["params"])
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert not list(model.layer_pool.parameters())   # layers: last has no layer weights
    heads = {id(p) for m in (model.projection, model.classifier, model.domain_head) for p in m.parameters()}
    assert {id(p) for g in ("heads", "heads_no_decay") for p in groups[g]["params"]} == heads
    # no lr_encoder: one learning rate for everything
    same = model.param_groups(OptimParams(lr=2e-3))
    assert {g["lr"] for g in same} == {2e-3} and {g["weight_decay"] for g in same} == {0.0}


def test_gradient_checkpointing_keeps_lora_gradients(cache):
    torch.manual_seed(0)
    model = w2v(cache, regime="qlora", lora=LoraParams(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
    base = model.base_model
    assert base.is_activation_checkpointing if hasattr(base, "is_activation_checkpointing") \
        else base.is_gradient_checkpointing
    adam_steps(model, torch.randn(2, 16000), torch.tensor([16000, 8000]), n_steps=1)
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_offline_missing_backbone_fails_fast(tmp_path):
    script = textwrap.dedent("""
        import time
        from ser.config import EncoderParams, ModelParams, OptimParams
        from ser.models import build_model
        mp = ModelParams(study="s", arch="encoder", objective="ce", input="waves", epochs=1, batch_size=1,
                         optim=OptimParams(), encoder=EncoderParams(backbone="no-such-org/no-such-wav2vec2"))
        t = time.monotonic()
        try:
            build_model(mp, 4)
        except OSError as exc:
            print(f"{type(exc).__name__} {time.monotonic() - t:.2f}s :: {exc}")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    line = [l for l in out.stdout.splitlines() if l.startswith("BackboneNotFound")]
    assert line, out.stdout + out.stderr
    seconds = float(line[0].split()[1].rstrip("s"))
    assert seconds < 10
    for needle in ("'no-such-org/no-such-wav2vec2'", "hf download no-such-org/no-such-wav2vec2",
                   "HF_HUB_OFFLINE=1", "HF_HOME", str(tmp_path / "hf")):
        assert needle in line[0]


def test_missing_local_backbone_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(params("encoder", encoder=EncoderParams(backbone=str(tmp_path / "nope"))), 4)
