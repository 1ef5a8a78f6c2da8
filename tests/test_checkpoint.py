"""Checkpoints round-trip every model kind; broken or mismatched checkpoints are refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ser.config import CrnnParams, EncoderParams, LoraParams, ModelParams, OptimParams
from ser.models import SERModel, build_model
from ser.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

LABELS = ["angry", "happy", "neutral", "sad"]
FEATURES = {"kind": "waves", "sample_rate": 16000}
KINDS = {
    "crnn": dict(arch="crnn", input="mels", crnn=CrnnParams(channels=(8, 16, 32), lstm_hidden=16, fc_hidden=16)),
    "encoder_full": dict(arch="encoder", encoder=EncoderParams(backbone="random:wav2vec2-tiny")),
    "lora": dict(arch="encoder", encoder=EncoderParams(backbone="random:wav2vec2-tiny", regime="lora",
                                                       lora=LoraParams(r=4, alpha=8))),
    "qlora": dict(arch="encoder", encoder=EncoderParams(backbone="random:wav2vec2-tiny", regime="qlora",
                                                        lora=LoraParams(r=4, alpha=8, layers=(1,)))),
}


def model_params(kind: str) -> ModelParams:
    spec = dict(KINDS[kind])
    return ModelParams(study="cross_corpus", objective="dann", epochs=1, batch_size=2,
                       optim=OptimParams(lr=1e-2), **{"input": "waves", **spec})


def inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    if kind == "crnn":
        return torch.randn(3, 1, 32, 40, generator=gen), torch.tensor([40, 40, 24])
    return torch.randn(3, 12000, generator=gen), torch.tensor([12000, 7000, 9000])


def trained(kind: str, cache: Path) -> SERModel:
    """A model after two optimizer steps, so no tensor is still at its initial value
    (LoRA's B starts at zero, BatchNorm statistics at 0 / 1)."""
    torch.manual_seed(0)
    model = build_model(model_params(kind), len(LABELS), with_domain_head=True, n_mels=32, cache_dir=cache)
    x, lengths = inputs(kind)
    opt = torch.optim.Adam(model.param_groups(model.params.optim))
    model.train()
    for _ in range(2):
        feats = model.embed(x, lengths)
        loss = model.classify(feats).logsumexp(1).mean() + model.domain_head(feats).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backbones")


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip_predictions_identical(kind, cache, tmp_path):
    model = trained(kind, cache)
    x, lengths = inputs(kind)
    with torch.no_grad():
        logits, feats = model(x, lengths), model.embed(x, lengths)
        domain = model.domain_head(feats)
    out = tmp_path / "models" / kind
    save_checkpoint(model, out, {"labels": LABELS, "features": FEATURES, "study": "cross_corpus"})
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]

    loaded, meta = load_checkpoint(out, cache_dir=cache)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x, lengths), logits)
        assert torch.equal(loaded.domain_head(loaded.embed(x, lengths)), domain)
    assert meta["labels"] == LABELS and meta["features"] == FEATURES and meta["study"] == "cross_corpus"
    assert meta["model_params"]["arch"] == KINDS[kind]["arch"]
    assert meta["parameters"] == dict(zip(("total", "trainable"), model.count_parameters()))
    assert loaded.params == model.params

    stored = load_file(str(out / "model.safetensors"))
    if kind in ("lora", "qlora"):   # only adapters and heads; the base is rebuilt from the spec
        assert meta["state"] == "partial" and meta["backbone"]["spec"] == "random:wav2vec2-tiny"
        assert set(stored) == {n for n, p in model.named_parameters() if p.requires_grad}
        assert all("lora_" in n or n.startswith(("projection.", "classifier.", "domain_head.")) for n in stored)
    else:
        assert meta["state"] == "full" and set(stored) == set(model.state_dict())
    if kind != "crnn":
        backbone = meta["backbone"]
        assert (backbone["family"], backbone["regime"]) == ("wav2vec2", KINDS[kind]["encoder"].regime)
        assert backbone["preprocessor"] == loaded.preprocessor   # the input normalisation training fed
    if kind == "qlora":
        import bitsandbytes as bnb
        assert meta["backbone"]["quantized"]
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.modules())


def test_existing_dir_keeps_other_files_and_detects_torn_pair(cache, tmp_path):
    model = trained("crnn", cache)
    out = tmp_path / "crnn"
    out.mkdir()
    (out / "train_log.json").write_text("{}")
    save_checkpoint(model, out, {"labels": LABELS})
    save_checkpoint(model, out, {"labels": LABELS})          # overwrite in place
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors", "train_log.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp dirs left
    state = load_file(str(out / "model.safetensors"))
    state["classifier.0.bias"] = state["classifier.0.bias"] + 1
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(out)


def test_meta_must_name_labels_and_not_clash(cache, tmp_path):
    model = trained("crnn", cache)
    with pytest.raises(CheckpointError, match=r"meta\['labels'\] must list the 4 class names"):
        save_checkpoint(model, tmp_path / "a", {"labels": LABELS[:3]})
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(model, tmp_path / "a", {"labels": LABELS, "state": "mine"})
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "a")


def test_meta_params_are_parsed_strictly(cache, tmp_path):
    model = trained("crnn", cache)
    save_checkpoint(model, tmp_path / "c", {"labels": LABELS})
    meta_path = tmp_path / "c" / "meta.json"
    doc = json.loads(meta_path.read_text())
    doc["model_params"]["crnn"]["lstm_hiden"] = 3
    meta_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"unknown key checkpoint\.crnn\.lstm_hiden"):
        load_checkpoint(tmp_path / "c")


def test_lora_checkpoint_refuses_a_different_base(tmp_path):
    cache = tmp_path / "cache"
    model = trained("lora", cache)
    save_checkpoint(model, tmp_path / "lora", {"labels": LABELS})
    # the cached random base changes under the checkpoint (as a new hub revision would)
    weights = cache / "wav2vec2-tiny" / "model.safetensors"
    base = load_file(str(weights))
    base["encoder.layer_norm.weight"] = base["encoder.layer_norm.weight"] * 1.5
    save_file(base, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="different weights"):
        load_checkpoint(tmp_path / "lora", cache_dir=cache)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_models_follow_the_umask(cache, tmp_path, mask):
    """A model folder and its files get the modes a plain mkdir/open would (mkdtemp alone gives 0700, and
    safetensors 0600 files): on a shared server, colleagues can read the models when the umask lets them.
    The classical heads' save_linear and the random-backbone cache share the helper."""
    import os
    import stat

    from ser.fsutil import apply_umask

    model = trained("crnn", cache)
    old = os.umask(mask)
    try:
        out = tmp_path / "models" / "crnn" / "f1-s1"
        save_checkpoint(model, out, {"labels": LABELS, "features": FEATURES})
        loose = tmp_path / "loose"
        loose.mkdir(mode=0o700)
        (loose / "w").write_text("x")
        os.chmod(loose / "w", 0o600)
        apply_umask(loose)
    finally:
        os.umask(old)
    for folder in (out, loose):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask, folder
        for f in folder.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
