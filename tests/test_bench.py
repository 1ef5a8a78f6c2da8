"""Smoke checks of the benchmark scripts' helpers (tiny random models, seconds)."""
from __future__ import annotations

import gc
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ser.config import load_params
from ser.stores import FeatureStore, fold_root

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


qlora_memory = _load("qlora_memory")
throughput = _load("throughput")
pipeline = _load("pipeline")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backbones")


# --------------------------------------------------------------------------- qlora_memory
def test_peak_rss_tracks_an_allocation_after_reset():
    assert qlora_memory.reset_peak_rss()
    before = qlora_memory.peak_rss_bytes()
    block = np.ones(64 * 2 ** 20 // 8)             # 64 MiB, touched
    grown = qlora_memory.peak_rss_bytes() - before
    del block
    assert 60 * 2 ** 20 <= grown < 200 * 2 ** 20
    assert qlora_memory.current_rss_bytes() > 0


def test_configurations_follow_the_paper_profile():
    profile = REPO / "profiles" / "paper.yaml"
    full = qlora_memory.model_params_for("full", False, profile, "tiny")
    lora = qlora_memory.model_params_for("lora", True, profile, "tiny")
    qlora = qlora_memory.model_params_for("qlora", True, profile, "tiny")
    assert full.wav2vec2.backbone == lora.wav2vec2.backbone == "random:tiny"
    assert full.wav2vec2.quantize == "none" and full.wav2vec2.lora is None
    assert lora.wav2vec2.quantize == "none" and lora.wav2vec2.lora == qlora.wav2vec2.lora is not None
    assert qlora.wav2vec2.quantize == "nf4" and qlora.wav2vec2.gradient_checkpointing
    assert not full.wav2vec2.gradient_checkpointing
    assert qlora.optim == load_params(profile).models["qlora"].optim
    with pytest.raises(ValueError, match="unknown configuration 'half'"):
        qlora_memory.model_params_for("half", False, profile)


def test_child_measures_a_qlora_step_and_4bit_weight_bytes(cache):
    import argparse
    args = argparse.Namespace(device="cpu", batch=2, seconds=0.5, steps=2, cache_dir=cache, preset="tiny",
                              threads=0, profile=REPO / "profiles" / "paper.yaml")
    r = qlora_memory.run_child("qlora", False, args)
    assert r["device"] == "cpu" and r["trainable"] < r["parameters"] and len(r["step_seconds"]) == 2
    assert r["step_peak_rss_bytes"] > 0 and r["optimizer_state_bytes"] > 0


def test_4bit_weight_bytes_count_the_quantization_state_once():
    import bitsandbytes as bnb
    weight = bnb.nn.Params4bit(torch.randn(1024, 1024), requires_grad=False, quant_type="nf4",
                               compress_statistics=True).to("cpu")
    assert weight.dtype == torch.uint8 and weight.numel() == 1024 * 1024 // 2   # two 4-bit codes per byte
    per_element = qlora_memory.tensor_bytes([weight]) / (1024 * 1024)
    # NF4 with double quantization: 4 bits + ~0.127 bits of block statistics (Dettmers et al. 2023)
    assert 0.5 < per_element < 0.52
    assert qlora_memory.tensor_bytes([weight, weight]) == qlora_memory.tensor_bytes([weight])


def test_4bit_model_does_not_keep_the_checkpoint_file_mapped(tmp_path):
    """Once a 4-bit model is built, its fp32 safetensors file is unmapped (ser.models.wav2vec2);
    an fp32 model keeps it mapped (its weights are views into it), which shows the check can fail."""
    import dataclasses
    from ser.models import build_model

    def mapped() -> list[str]:
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(tmp_path) in line]

    qlora = qlora_memory.model_params_for("qlora", False, REPO / "profiles" / "paper.yaml", "tiny")
    fp32 = build_model(dataclasses.replace(qlora, wav2vec2=dataclasses.replace(qlora.wav2vec2, quantize="none")),
                       7, cache_dir=tmp_path)
    assert any("model.safetensors" in line for line in mapped())
    del fp32
    gc.collect()
    assert mapped() == []
    model = build_model(qlora, 7, cache_dir=tmp_path)
    assert model.quantized and mapped() == []


def test_main_runs_each_configuration_in_its_own_process(cache, tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "qlora_memory.py"), "--preset", "tiny",
                           "--configs", "full,qlora", "--checkpointing", "off", "--steps", "1", "--seconds", "0.5",
                           "--threads", "1", "--device", "cpu", "--cache-dir", str(cache), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    by = {r["config"]: r for r in result["results"]}
    assert set(by) == {"full", "qlora"}
    assert by["qlora"]["weight_bytes"] < by["full"]["weight_bytes"]
    assert by["qlora"]["trainable"] < by["full"]["trainable"]
    assert "qlora/full, checkpointing off" in result["ratios"] and "ratios" in proc.stdout


# --------------------------------------------------------------------------- throughput
def test_lognormal_lengths_and_padding_waste():
    seconds = throughput.lognormal_seconds(2000, seed=0)
    assert seconds.min() >= 1.0 and seconds.max() <= 6.0 and 2.0 < np.median(seconds) < 3.0
    lengths = (seconds * 16000).astype(np.int64)
    report = throughput.padding_report(lengths, [4, 8])
    for waste in report.values():
        assert 0 <= waste["bucketed"] < 0.10 < waste["unbucketed"]


def test_synthetic_stores_and_model_throughput(cache, tmp_path):
    params = throughput.bench_params(load_params(REPO / "params.yaml"),
                                     {"wav2vec_dann": "random:tiny"}, wave_batch=2)
    stores = throughput.write_stores(tmp_path, params, n=16)
    # The trainer's layout: the fold folder of the params' run, over one clips array per study.
    assert stores["mels/cross_corpus"] == fold_root(tmp_path, "mels", "cross_corpus", params.fold)
    assert (tmp_path / "waves" / "cross_corpus" / "clips.npy").is_file()
    # --lengths-from takes a study store (its first fold) or a fold folder
    assert throughput.fold_dir(tmp_path / "waves" / "cross_corpus") == stores["waves/cross_corpus"]
    assert throughput.fold_dir(stores["waves/cross_corpus"]) == stores["waves/cross_corpus"]
    mels = FeatureStore(stores["mels/cross_corpus"], "train")
    waves = FeatureStore(stores["waves/cross_corpus"], "adapt")
    assert mels.kind == "mels" and mels[0].shape == (128, 300) and len(mels) == 16
    assert waves.kind == "waves" and {r.domain for r in waves.index} == {1}
    assert 16000 <= waves.lengths.min() and waves.lengths.max() <= 6 * 16000
    assert len(waves[3]) == waves.lengths[3]

    for name in ("baseline", "wav2vec_dann"):
        r = throughput.model_throughput(params, name, tmp_path, steps=2, warmup=1, device="cpu", cache_dir=cache)
        assert r["samples_per_s"] > 0 and r["loader_samples_per_s"] > 0 and r["trainable"] <= r["parameters"]
        assert r["loader_over_model"] == pytest.approx(r["loader_samples_per_s"] / r["samples_per_s"])
    assert r["batch_size"] == 2 and r["objective"] == "dann" and 0 <= r["padding_waste"] < 1
    assert r["audio_seconds_per_s"] > 0
    assert "wav2vec_dann" in throughput.format_models([r])


# --------------------------------------------------------------------------- pipeline
DVC_OUTPUT = """\
Stage 'download-verify' didn't change, skipping
Running stage 'train-dann':
> python stages/train.py --model dann
Running stage 'evaluate-ravdess':
> python stages/evaluate.py
Stage 'train-baseline' didn't change, skipping
"""


def test_stage_parsing():
    assert pipeline.stages_run(DVC_OUTPUT) == ["train-dann", "evaluate-ravdess"]
    assert pipeline.stages_skipped(DVC_OUTPUT) == ["download-verify", "train-baseline"]
    assert pipeline.stages_run("Data and pipelines are up to date.\n") == []


def test_tiny_profile_is_a_valid_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    pipeline.shrink_params(path)
    params = load_params(path)
    assert all(mp.epochs == 1 for mp in params.models.values())
    assert params.demo.clips_per_speaker == pipeline.TINY_CLIPS and params.evaluation.bootstrap == 50


def test_realdata_checks_write_params_the_pipeline_accepts(tmp_path):
    """The real-data checks' params load (the real corpora are not needed for that), and the
    protocols check runs the fold, matrix and cross-corpus studies in one DAG."""
    import yaml

    from ser.config import parse_params

    sys.path.insert(0, str(REPO / "bench"))
    try:
        realdata, protocols = _load("realdata"), _load("realdata_protocols")
    finally:
        sys.path.remove(str(REPO / "bench"))
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    emodb, ravdess = tmp_path / "emodb", tmp_path / "ravdess"
    for name, setup in realdata.setups(emodb, ravdess).items():
        params = parse_params(realdata.make_params(base, setup, 0, False, 2))
        assert params.seeds == (0,) and params.folds == (1,), name
    params = parse_params(protocols.make_params(base, emodb, ravdess, [0, 1], 3))
    assert params.folds == (1, 2, 3) and params.seeds == (0, 1)
    assert params.studies["matrix"].design == "matrix" and params.studies["cross"].target == "ravdess"
    assert params.splits["ravdess_folds"]["ravdess"].k == 3 and params.models["cross_dann"].epochs == 3
    assert {m.study for m in params.models.values()} == set(params.studies)
    # the demo's matrix model is left to the protocols check, not run again as a cross-corpus model
    cross = realdata.make_params(base, realdata.setups(emodb, ravdess)["cross"], 0, False, 2)
    assert "matrix_logreg" not in cross["models"] and "egemaps_logreg" in cross["models"]
