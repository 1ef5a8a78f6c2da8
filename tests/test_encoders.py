"""Foundation-model encoders on tiny random configs of every family: loading, regimes, layers,
the cached-embedding probe, the embeddings store."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ser.config import EncoderParams, LoraParams, ModelParams, OptimParams
from ser.models import build_model
from ser.models import encoder_from_probe
from ser.models.encoders import PRESETS, LayerPool, load_backbone

FAMILIES = ["wav2vec2", "hubert", "wavlm", "data2vec", "whisper"]
LORA = LoraParams(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("encoders")


def enc(family: str, **kw) -> EncoderParams:
    kw.setdefault("projection", 8)
    kw.setdefault("head_hidden", 8)
    if kw.get("regime") in ("lora", "qlora"):
        kw.setdefault("lora", LORA)
    return EncoderParams(backbone=f"random:{family}-tiny", **kw)


def model_params(ep: EncoderParams, input: str = "waves", objective: str = "ce") -> ModelParams:
    return ModelParams(study="s", arch="encoder", objective=objective, input=input, epochs=1, batch_size=2,
                       optim=OptimParams(lr=1e-2), encoder=ep)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12000, generator=gen)
    lengths = torch.tensor([12000, 9000, 5000])
    x[1, 9000:] = 0
    x[2, 5000:] = 0
    return x, lengths


def test_every_family_has_tiny_base_and_large_presets():
    for family in FAMILIES:
        sizes = {name.split("-", 1)[1] for name in PRESETS if name.split("-", 1)[0] == family}
        assert {"tiny", "base"} <= sizes and any(s.startswith("large") for s in sizes), (family, sizes)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_pretrained_round_trip(family, tmp_path, cache):
    """A locally saved model of each architecture loads back through from_pretrained unchanged
    (Whisper: the encoder of a full encoder-decoder checkpoint, the hub layout)."""
    import transformers
    model_type, kwargs, fe = PRESETS[f"{family}-tiny"]
    config_name = {"wav2vec2": "Wav2Vec2", "hubert": "Hubert", "wavlm": "WavLM", "data2vec": "Data2VecAudio",
                   "whisper": "Whisper"}[family]
    config = getattr(transformers, f"{config_name}Config")(**kwargs)
    torch.manual_seed(1)
    if family == "whisper":
        config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id = 64, 0, 1, 2
        config.decoder_start_token_id, config.max_target_positions = 1, 16
        saved = transformers.WhisperForConditionalGeneration(config)
        expected = saved.model.encoder.state_dict()
    else:
        saved = getattr(transformers, f"{config_name}Model")(config)
        expected = saved.state_dict()
    saved.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(fe))
    loaded, preprocessor = load_backbone(EncoderParams(backbone=str(tmp_path)), cache)
    state = loaded.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert preprocessor["feature_extractor_type"] == fe["feature_extractor_type"]


def test_missing_preprocessor_config_names_it(tmp_path, cache):
    src = load_backbone(enc("hubert"), cache)  # materialise the preset
    shutil.copytree(cache / "hubert-tiny", tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        load_backbone(EncoderParams(backbone=str(tmp_path / "m")), cache)
    assert src is not None


def _allowed(name: str, regime: str, family: str, freeze_front: bool) -> bool:
    head = name.split(".")[0] in ("layer_pool", "projection", "classifier", "domain_head")
    if head or regime == "frozen":
        return head
    if regime in ("lora", "qlora"):
        return "lora_" in name
    front = (".conv1." in name or ".conv2." in name) if family == "whisper" else ".feature_extractor." in name
    return not (freeze_front and front)


REGIMES = [("frozen", {}), ("full", {"freeze_feature_encoder": True}), ("full", {"freeze_feature_encoder": False}),
           ("lora", {}), ("qlora", {})]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("regime,extra", REGIMES, ids=["frozen", "full-cnn-frozen", "full", "lora", "qlora"])
def test_regime_trains_only_intended_parameters(family, regime, extra, cache):
    ep = enc(family, regime=regime, layers="weighted", **extra)
    model = build_model(model_params(ep), 4, with_domain_head=True, cache_dir=cache)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.param_groups(OptimParams(lr=1e-2)))
    x, lengths = batch()
    model.train()
    feats = model.embed(x, lengths)
    loss = F.cross_entropy(model.classify(feats), torch.tensor([0, 1, 2])) \
        + F.cross_entropy(model.domain_head(feats), torch.tensor([0, 1, 0]))
    loss.backward()
    assert model.layer_pool.weights.grad is not None and model.layer_pool.weights.grad.abs().sum() > 0
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    wrong = sorted(n for n in changed if not _allowed(n, regime, family, extra.get("freeze_feature_encoder", True)))
    assert not wrong, wrong
    assert "layer_pool.weights" in changed and any(n.startswith("classifier") for n in changed)
    if regime == "full":
        assert any(n.startswith("backbone.") for n in changed)
        front = [n for n in changed if (".conv1." in n or ".conv2." in n or ".feature_extractor." in n)]
        assert bool(front) == (not extra["freeze_feature_encoder"])
    if regime in ("lora", "qlora"):
        assert any("lora_" in n for n in changed)
    if regime == "qlora":
        import bitsandbytes as bnb
        linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert linears and all(m.weight.dtype == torch.uint8 and m.weight.quant_state is not None for m in linears)
        assert not any(type(m) is torch.nn.Linear and "q_proj" in n and "lora" not in n
                       for n, m in model.backbone.named_modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_probe_on_cached_means_equals_on_the_fly(family, cache):
    """weighted sum -> projection -> mean over time -> classifier on per-clip layer means is the same
    function as on frame-level states, chunked clips included."""
    ep = enc(family, regime="frozen", layers="weighted", chunk_seconds=0.4)
    online = build_model(model_params(ep), 4, cache_dir=cache).eval()
    probe = build_model(model_params(ep, input="embeddings"), 4, cache_dir=cache).eval()
    with torch.no_grad():
        online.layer_pool.weights.copy_(torch.randn(online.n_states))
    probe.load_state_dict({k: v for k, v in online.state_dict().items() if not k.startswith("backbone.")})
    x, lengths = batch()  # 0.75 s, 0.56 s and 0.31 s: two clips span two chunks
    with torch.no_grad():
        cached = online.layer_means(x, lengths)
        assert cached.shape == (3, online.n_states, online.hidden_size)
        torch.testing.assert_close(probe(cached), online(x, lengths), rtol=1e-5, atol=1e-5)
    # the head of a probe checkpoint runs on audio through its encoder (ser predict)
    rebuilt = encoder_from_probe(probe, cache).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, lengths), probe(cached), rtol=1e-5, atol=1e-5)


def test_chunking_pools_every_frame_of_a_long_clip(cache):
    """A clip twice the chunk length gives the frame-weighted mean of its chunks' means."""
    ep = enc("wav2vec2", regime="frozen", chunk_seconds=0.5)
    model = build_model(model_params(ep), 4, cache_dir=cache).eval()
    x = torch.randn(1, 16000)
    with torch.no_grad():
        whole = model.layer_means(x)
        halves = model.layer_means(torch.cat([x[:, :8000], x[:, 8000:]]))
    frames = model._frames(torch.tensor([8000, 8000]), 10_000).float()
    torch.testing.assert_close(whole[0], (halves * frames[:, None, None]).sum(0) / frames.sum())


def test_whisper_rejects_chunks_beyond_its_window(cache):
    with pytest.raises(ValueError, match="Whisper's input window"):
        build_model(model_params(enc("whisper", regime="frozen", chunk_seconds=31.0)), 4, cache_dir=cache)


def test_wavlm_attention_through_modules_matches_torch(cache):
    from ser.models.encoders import _patch_wavlm
    backbone, _ = load_backbone(enc("wavlm"), cache)
    backbone.eval()
    x, lengths = batch()
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        reference = backbone(x, attention_mask=mask).last_hidden_state
        _patch_wavlm(backbone)
        patched = backbone(x, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(patched, reference, rtol=1e-5, atol=1e-5)


def test_input_normalisation_follows_the_feature_extractor_and_is_stored(tmp_path, cache):
    """hubert-base-style presets do not normalise, wav2vec2 ones do; a checkpoint keeps what training fed."""
    from ser.models.checkpoint import load_checkpoint, save_checkpoint
    hubert = build_model(model_params(enc("hubert", regime="frozen")), 2, cache_dir=cache)
    assert hubert.frontend.normalize is False and hubert.frontend.attention_mask is False
    w2v = build_model(model_params(enc("wav2vec2", regime="frozen")), 2, cache_dir=cache)
    assert w2v.frontend.normalize is True and w2v.frontend.attention_mask is True
    x = torch.randn(2, 4000) * 5 + 3
    values, _mask = w2v.frontend.waveform(x, torch.tensor([4000, 4000]))
    torch.testing.assert_close(values.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
    save_checkpoint(hubert, tmp_path / "ckpt", {"labels": ["a", "b"]})
    # the backbone's config changes after training: the checkpoint still feeds what training fed
    pre = cache / "hubert-tiny" / "preprocessor_config.json"
    original = pre.read_text()
    try:
        pre.write_text(json.dumps({**json.loads(original), "do_normalize": True}))
        loaded, meta = load_checkpoint(tmp_path / "ckpt", cache_dir=cache)
    finally:
        pre.write_text(original)
    assert meta["backbone"]["preprocessor"]["do_normalize"] is False
    assert loaded.frontend.normalize is False


def test_layers_index_and_last(cache):
    pool = LayerPool(3, "1")
    states = torch.arange(3.0)[:, None].expand(3, 2)
    assert torch.equal(pool(states), torch.tensor([1.0, 1.0])) and pool.weights is None
    assert torch.equal(LayerPool(3, "-1")(states), torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match="out of range"):
        LayerPool(3, "3")
    weighted = LayerPool(3, "weighted")
    torch.testing.assert_close(weighted(states), torch.tensor([1.0, 1.0]))  # uniform at init
    model = build_model(model_params(enc("hubert", regime="frozen", layers="0")), 2, cache_dir=cache).eval()
    x, lengths = batch()
    with torch.no_grad():
        means = model.layer_means(x, lengths)
        torch.testing.assert_close(model.embed(x, lengths), model.projection(means[:, 0]), rtol=1e-5, atol=1e-5)


def test_embeddings_input_needs_a_frozen_encoder():
    from ser.config import ParamsError, _build
    with pytest.raises(ValueError, match="regime: frozen"):
        model_params(enc("hubert", regime="full"), input="embeddings")
    with pytest.raises(ValueError, match="needs a lora"):
        EncoderParams(backbone="random:hubert-tiny", regime="lora")
    with pytest.raises(ParamsError, match="layers"):
        _build(EncoderParams, {"backbone": "x", "layers": "middle"}, "encoder")


def test_embedding_store_reuse_and_probe_data(tmp_path, cache, monkeypatch):
    """precompute_embeddings: [N, S, D] means of the waveform store's clips, fold indexes re-pointed,
    reused when up to date, rebuilt when the waves change; the probe reads it through FeatureDataset."""
    from ser.features.dataset import FeatureDataset, collate_batch
    from ser.models.embeddings import frozen_encoder, precompute_embeddings
    from ser.features.stores import FeatureStore, IndexRow, write_store

    rng = np.random.default_rng(0)
    lengths = [4000, 7000, 3000, 9000]
    flat = rng.standard_normal(sum(lengths)).astype(np.float32)
    offsets = np.cumsum([0] + lengths[:-1])
    rows = [IndexRow(f"c/{i}", "c", f"s{i}", ["a", "b"][i % 2], 0, int(o), n)
            for i, (o, n) in enumerate(zip(offsets, lengths))]
    waves = tmp_path / "waves" / "study"
    write_store(waves, {"train": (flat, rows[:3]), "test": (flat, rows[3:])},
                {"kind": "waves", "labels": ["a", "b"], "sample_rate": 16000, "content_sha256": "w1"})
    ep = enc("wavlm", regime="frozen", layers="weighted")
    out = tmp_path / "emb" / "study"
    (out / "stale-key").mkdir(parents=True)
    report = precompute_embeddings(waves, out, [ep], cache_dir=cache)
    assert not (out / "stale-key").exists() and report[ep.store_key]["reused"] is False
    store = FeatureStore(out / ep.store_key / "f1", "test")
    assert store.kind == "embeddings" and len(store) == 1
    model = frozen_encoder(ep, cache)
    with torch.no_grad():
        expected = model.layer_means(torch.from_numpy(flat[offsets[3]:offsets[3] + lengths[3]])[None])[0]
    np.testing.assert_allclose(store[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    items = FeatureDataset(FeatureStore(out / ep.store_key / "f1", "train"), ["a", "b"])
    x = collate_batch([items[i] for i in range(3)])["x"]
    assert x.shape == (3, model.n_states, model.hidden_size)
    assert precompute_embeddings(waves, out, [ep], cache_dir=cache)[ep.store_key]["reused"] is True
    meta = json.loads((waves / "meta.json").read_text())
    (waves / "meta.json").write_text(json.dumps({**meta, "content_sha256": "w2"}))
    assert precompute_embeddings(waves, out, [ep], cache_dir=cache)[ep.store_key]["reused"] is False
    # No wall-clock figures in the store's meta (a probe's model folder copies it): those are in the report.
    store_meta = json.loads((out / ep.store_key / "meta.json").read_text())
    assert "timing" not in store_meta and '"seconds' not in json.dumps(store_meta)
    # A store computed by other embedding code is rebuilt, not reused.
    assert precompute_embeddings(waves, out, [ep], cache_dir=cache)[ep.store_key]["reused"] is True
    import ser.models.embeddings

    monkeypatch.setattr(ser.models.embeddings, "code_fingerprint", lambda *entries: "another version of the code")
    assert precompute_embeddings(waves, out, [ep], cache_dir=cache)[ep.store_key]["reused"] is False


def test_unsupported_family_and_sample_rate_mismatch_fail_clearly(tmp_path, cache):
    from transformers import BertConfig

    from ser.models.embeddings import precompute_embeddings
    from ser.features.stores import IndexRow, StoreError, write_store
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(ValueError, match="encoder family 'bert' is not supported"):
        build_model(model_params(EncoderParams(backbone=str(tmp_path / "bert"))), 2, cache_dir=cache)
    rows = [IndexRow("c/0", "c", "s", "a", 0, 0, 4000)]
    write_store(tmp_path / "waves", {"test": (np.zeros(4000, np.float32), rows)},
                {"kind": "waves", "labels": ["a"], "sample_rate": 8000, "content_sha256": "x"})
    with pytest.raises(StoreError, match="8000 Hz.*expects 16000 Hz"):
        precompute_embeddings(tmp_path / "waves", tmp_path / "emb", [enc("hubert", regime="frozen")], cache_dir=cache)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_clips_output_does_not_depend_on_its_batch_mates(family, cache):
    """Group-norm feature encoders, unmasked attention and stacked positional convs see zero padding;
    such encoders are run one length at a time, so batch = alone for every family (cached embeddings,
    on-the-fly training, evaluation and ser predict agree)."""
    model = build_model(model_params(enc(family, regime="frozen")), 2, cache_dir=cache).eval()
    x, lengths = batch()
    with torch.no_grad():
        together = model.layer_means(x, lengths)
        alone = torch.cat([model.layer_means(x[i:i + 1, :n], lengths[i:i + 1]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    expected = {"hubert": False, "data2vec": False}.get(family, True)  # the tiny presets' configs
    assert model.padding_invariant() is expected


def test_check_backbone_refutes_what_the_local_disk_refutes(tmp_path):
    """check-params catches, naming the key: an unknown preset, a missing or config-less directory, and a
    backbone whose preprocessor expects another audio rate than features.sample_rate; a hub id that is
    not cached is left to the stage that fetches it (no request here)."""
    from ser.config import ParamsError
    from ser.backbones import check_backbone

    key = "models.m.encoder.backbone"
    check_backbone("random:wav2vec2-tiny", 16000, key)
    with pytest.raises(ParamsError, match=r"models.m.encoder.backbone: unknown random encoder preset 'wav2vec2-tinyy'"):
        check_backbone("random:wav2vec2-tinyy", 16000, key)
    with pytest.raises(ParamsError, match=r"models.m.encoder.backbone: .*expects 16000 Hz audio .* features.sample_rate "
                                          r"is 16001; set features.sample_rate: 16000"):
        check_backbone("random:wavlm-tiny", 16001, key)
    with pytest.raises(ParamsError, match=r"backbone directory ./no/such/dir does not exist"):
        check_backbone("./no/such/dir", 16000, key)
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(ParamsError, match="has no config.json"):
        check_backbone(str(model), 16000, key)
    (model / "config.json").write_text("{}")
    check_backbone(str(model), 16000, key)  # no preprocessor config: nothing to compare
    (model / "preprocessor_config.json").write_text('{"sampling_rate": 8000}')
    with pytest.raises(ParamsError, match="expects 8000 Hz audio"):
        check_backbone(str(model), 16000, key)
    check_backbone("nobody/not-cached-model", 16000, key)


def test_check_params_stage_fails_on_a_bad_backbone_naming_the_key(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    bad = tmp_path / "params.yaml"
    bad.write_text((root / "params.yaml").read_text().replace('"random:wavlm-tiny"', '"random:wavlm-tinyy"'))
    proc = subprocess.run([sys.executable, "stages/check_params.py", "--params", str(bad), "--out",
                           str(tmp_path / "check.json")], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "models.wavlm_probe.encoder.backbone: unknown random encoder preset 'wavlm-tinyy'" in proc.stderr
    assert not (tmp_path / "check.json").exists()
