"""The cache of pre-quantized 4-bit backbones (ser.models.quant_cache): hits, keys, 4-bit reloads."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes")

import bitsandbytes as bnb  # noqa: E402
import transformers  # noqa: E402

from ser.config import EncoderParams, LoraParams  # noqa: E402
from ser.models import encoders, quant_cache  # noqa: E402
from ser.models.quant_cache import STAMP, cache_entry, cache_key, count_4bit_layers, load_4bit  # noqa: E402

LORA = LoraParams(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> Path:
    """Random tiny presets, built once for the module."""
    root = tmp_path_factory.mktemp("presets")
    for preset in ("wav2vec2-tiny", "wavlm-tiny", "whisper-tiny"):
        encoders.random_backbone_dir(preset, root)
    return root


@pytest.fixture
def quantizations(monkeypatch) -> list[str]:
    """Every quantization from full-precision weights during the test (the source passed)."""
    calls: list[str] = []
    real = quant_cache._quantize

    def counting(model_cls, source, bnb_config, revision):
        calls.append(source)
        return real(model_cls, source, bnb_config, revision)

    monkeypatch.setattr(quant_cache, "_quantize", counting)
    return calls


def _bnb(**change):
    config = encoders._bnb_config()
    for name, value in change.items():
        setattr(config, name, value)
    return config


def _ready(model: torch.nn.Module) -> torch.nn.Module:
    """What EncoderSER does to a 4-bit backbone before running it (canonical 4-bit layout, eval)."""
    if model.config.model_type == "wavlm":
        encoders._patch_wavlm(model)
    encoders._prepare_4bit(model)
    return model.eval()


def _out(model: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if model.config.model_type == "whisper":
            feats = torch.randn(1, model.config.num_mel_bins, 3000, generator=gen)
            return model(input_features=feats).last_hidden_state
        return model(input_values=torch.randn(2, 8000, generator=gen)).last_hidden_state


def _packed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.data.clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def test_second_load_reads_the_4bit_copy_only(presets, tmp_path, quantizations):
    source = str(presets / "wav2vec2-tiny")
    fresh = _ready(quant_cache._quantize(transformers.Wav2Vec2Model, source, _bnb(), None))
    quantizations.clear()
    first = load_4bit(transformers.Wav2Vec2Model, source, "random:wav2vec2-tiny", _bnb(), tmp_path)
    assert quantizations == [source]
    entries = [p for p in tmp_path.iterdir()]
    assert len(entries) == 1 and entries[0].name.startswith("random_wav2vec2-tiny-")
    stamp = json.loads((entries[0] / STAMP).read_text())
    assert stamp["key"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert stamp["key"]["versions"]["bitsandbytes"] == bnb.__version__

    second = load_4bit(transformers.Wav2Vec2Model, source, "random:wav2vec2-tiny", _bnb(), tmp_path)
    assert quantizations == [source]  # the hit never touched the fp32 weights
    # 4-bit: every Linear outside the full-precision modules packed, with its quantization state
    n_linear = sum(isinstance(m, torch.nn.Linear) for n, m in fresh.named_modules()
                   if not any(s in n for s in encoders.FULL_PRECISION_MODULES))
    for model in (fresh, first, second):
        assert count_4bit_layers(model) == n_linear > 0
    w = second.encoder.layers[0].attention.q_proj.weight
    assert isinstance(w, bnb.nn.Params4bit) and w.dtype == torch.uint8 and w.quant_state.nested
    assert second.config.name_or_path == source
    # the same packed weights and the same outputs as the model quantized on load
    for model in (first, second):
        _ready(model)
        assert all(torch.equal(a, b) for a, b in zip(_packed(fresh).values(), _packed(model).values()))
        assert torch.equal(_out(fresh), _out(model))


def test_changed_quantization_or_source_gives_a_new_key(presets, tmp_path, quantizations):
    source = tmp_path / "src"
    shutil.copytree(presets / "wav2vec2-tiny", source)
    cls, spec, root = transformers.Wav2Vec2Model, "random:wav2vec2-tiny", tmp_path / "q"
    # a random preset is keyed by its stamp (preset, config, seed): the same copy wherever it was built
    key = cache_key(cls, str(source), _bnb())
    assert key == cache_key(cls, str(presets / "wav2vec2-tiny"), _bnb()) and "random_preset" in key["source"]
    (source / "ser_random_backbone.json").unlink()  # from here on: a plain local checkpoint directory
    spec = str(source)
    base = cache_key(cls, str(source), _bnb())
    variants = {
        "double quant": cache_key(cls, str(source), _bnb(bnb_4bit_use_double_quant=False)),
        "fp4": cache_key(cls, str(source), _bnb(bnb_4bit_quant_type="fp4")),
        "compute dtype": cache_key(cls, str(source), _bnb(bnb_4bit_compute_dtype=torch.bfloat16)),
        "skip modules": cache_key(cls, str(source), _bnb(llm_int8_skip_modules=["feature_projection"])),
        "model class": cache_key(transformers.HubertModel, str(source), _bnb()),
    }
    names = {cache_entry(root, spec, k).name for k in [base, *variants.values()]}
    assert len(names) == 1 + len(variants)

    load_4bit(cls, str(source), spec, _bnb(), root)
    load_4bit(cls, str(source), spec, _bnb(bnb_4bit_use_double_quant=False), root)
    assert len(quantizations) == 2 and len(list(root.iterdir())) == 2
    no_nested = load_4bit(cls, str(source), spec, _bnb(bnb_4bit_use_double_quant=False), root)
    assert len(quantizations) == 2 and not no_nested.encoder.layers[0].attention.q_proj.weight.quant_state.nested

    # the source changes (a rebuilt or edited checkpoint: new mtime) -> a new key, quantized again
    weights = source / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10 ** 9))
    assert cache_key(cls, str(source), _bnb()) != base
    load_4bit(cls, str(source), spec, _bnb(), root)
    assert len(quantizations) == 3 and len(list(root.iterdir())) == 3


def test_hub_ids_are_keyed_by_revision():
    cls = transformers.Wav2Vec2Model
    assert cache_key(cls, "facebook/wav2vec2-base", _bnb(), None) is None  # cannot be pinned: no cache
    a = cache_key(cls, "facebook/wav2vec2-base", _bnb(), "a" * 40)
    b = cache_key(cls, "facebook/wav2vec2-base", _bnb(), "b" * 40)
    assert a["source"] == {"hub_id": "facebook/wav2vec2-base", "revision": "a" * 40} and a != b


def test_broken_copy_is_rebuilt(presets, tmp_path, quantizations, caplog):
    source = str(presets / "wav2vec2-tiny")
    load_4bit(transformers.Wav2Vec2Model, source, "random:wav2vec2-tiny", _bnb(), tmp_path)
    (entry,) = tmp_path.iterdir()
    (entry / "model.safetensors").write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.WARNING, logger="ser.models.quant_cache"):
        model = load_4bit(transformers.Wav2Vec2Model, source, "random:wav2vec2-tiny", _bnb(), tmp_path)
    assert "unusable" in caplog.text and len(quantizations) == 2 and count_4bit_layers(model) > 0
    (entry / STAMP).write_text("{}")  # a stamp of another key: not used
    load_4bit(transformers.Wav2Vec2Model, source, "random:wav2vec2-tiny", _bnb(), tmp_path)
    assert len(quantizations) == 3 and [p.name for p in tmp_path.iterdir()] == [entry.name]


@pytest.mark.parametrize("preset", ["wavlm-tiny", "whisper-tiny"])
def test_load_backbone_goes_through_the_cache(presets, preset, quantizations):
    """regime qlora: load_backbone quantizes once into <cache_dir>/quantized, then reads the copy
    (Whisper: WhisperForAudioClassification's copy, its encoder returned)."""
    p = EncoderParams(backbone=f"random:{preset}", regime="qlora", lora=LORA)
    shutil.rmtree(presets / "quantized", ignore_errors=True)
    first, fe1 = encoders.load_backbone(p, presets)
    second, fe2 = encoders.load_backbone(p, presets)
    assert len(quantizations) == 1 and fe1 == fe2
    assert [e.name.split("-")[0] for e in (presets / "quantized").iterdir()] == ["random_" + preset.split("-")[0]]
    if preset == "whisper-tiny":
        assert type(second).__name__ == "WhisperEncoder"
    assert count_4bit_layers(second) == count_4bit_layers(first) > 0
    assert torch.equal(_out(_ready(first)), _out(_ready(second)))


def test_the_default_cache_dir_follows_ser_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path))
    assert quant_cache.default_cache_dir() == tmp_path / "quantized"
