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
from ser.features.stores import FeatureStore, fold_root

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
    full = qlora_memory.model_params_for("full", False, profile, "wav2vec2-tiny")
    lora = qlora_memory.model_params_for("lora", True, profile, "random:wav2vec2-tiny")
    qlora = qlora_memory.model_params_for("qlora", True, profile, "wav2vec2-tiny")
    assert full.encoder.backbone == lora.encoder.backbone == qlora.encoder.backbone == "random:wav2vec2-tiny"
    assert full.arch == qlora.arch == "encoder"
    assert full.encoder.regime == "full" and full.encoder.lora is None
    assert lora.encoder.regime == "lora" and lora.encoder.lora == qlora.encoder.lora is not None
    assert qlora.encoder.regime == "qlora" and qlora.encoder.gradient_checkpointing
    assert not full.encoder.gradient_checkpointing
    assert qlora.optim == load_params(profile).models["qlora"].optim
    # the profile's upper 12 of XLSR's 24 layers -> the upper half of the tiny preset's 2
    assert qlora.encoder.lora.layers == (1,)
    assert qlora_memory.model_params_for("qlora", True, profile).encoder.lora.layers == tuple(range(12, 24))
    with pytest.raises(ValueError, match="unknown configuration 'half'"):
        qlora_memory.model_params_for("half", False, profile)


def test_child_measures_a_qlora_step_and_4bit_weight_bytes(cache):
    import argparse
    args = argparse.Namespace(device="cpu", batch=2, seconds=0.5, steps=2, cache_dir=cache, preset="wav2vec2-tiny",
                              threads=0, profile=REPO / "profiles" / "paper.yaml")
    r = qlora_memory.run_child("qlora", False, args)
    assert r["device"] == "cpu" and r["trainable"] < r["parameters"] and len(r["step_seconds"]) == 2
    assert r["step_peak_rss_bytes"] > 0 and r["optimizer_state_bytes"] > 0
    assert r["quantized_copy"] in ("built", "loaded")
    assert qlora_memory.run_child("qlora", False, args)["quantized_copy"] == "loaded"  # the 4-bit copy, reused
    loaded = qlora_memory.run_child("full", False, argparse.Namespace(**{**vars(args), "steps": 0}))
    assert loaded["quantized_copy"] is None and "step_seconds" not in loaded  # steps 0: load only


def test_4bit_weight_bytes_count_the_quantization_state_once():
    import bitsandbytes as bnb
    weight = bnb.nn.Params4bit(torch.randn(1024, 1024), requires_grad=False, quant_type="nf4",
                               compress_statistics=True).to("cpu")
    assert weight.dtype == torch.uint8 and weight.numel() == 1024 * 1024 // 2   # two 4-bit codes per byte
    per_element = qlora_memory.tensor_bytes([weight]) / (1024 * 1024)
    # NF4 with double quantization: 4 bits + ~0.127 bits of block statistics (Dettmers et al. 2023)
    assert 0.5 < per_element < 0.52
    assert qlora_memory.tensor_bytes([weight, weight]) == qlora_memory.tensor_bytes([weight])


def test_4bit_model_does_not_keep_the_fp32_checkpoint_file_mapped(tmp_path):
    """Once a 4-bit model is built - quantizing (first use) or from the pre-quantized copy - its fp32
    safetensors file is not mapped; an fp32 model keeps it mapped (its weights are views into it),
    which shows the check can fail. (The 4-bit copy may stay mapped: its pages are the packed weights.)"""
    import dataclasses
    from ser.models import build_model

    def mapped() -> list[str]:
        fp32_dir = str(tmp_path / "wav2vec2-tiny")
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if fp32_dir in line]

    qlora = qlora_memory.model_params_for("qlora", False, REPO / "profiles" / "paper.yaml", "wav2vec2-tiny")
    fp32 = build_model(dataclasses.replace(qlora, encoder=dataclasses.replace(qlora.encoder, regime="lora")),
                       7, cache_dir=tmp_path)
    assert any("model.safetensors" in line for line in mapped())
    del fp32
    gc.collect()
    assert mapped() == []
    first = build_model(qlora, 7, cache_dir=tmp_path)  # quantizes, saves the 4-bit copy
    assert first.quantized and mapped() == []
    again = build_model(qlora, 7, cache_dir=tmp_path)  # the 4-bit copy
    assert again.quantized and mapped() == [] and len(list((tmp_path / "quantized").iterdir())) == 1


def test_main_runs_each_configuration_in_its_own_process(cache, tmp_path):
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "qlora_memory.py"), "--preset", "wav2vec2-tiny",
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
    assert "process_peak" in result["ratios"]["qlora/full, checkpointing off"]
    # the first-time load quantized into a fresh cache and left the copy the qlora run loaded
    assert result["first_load"]["quantized_copy"] == "built" and by["qlora"]["quantized_copy"] == "loaded"
    assert "checkpointing off" in result["first_load"]["process_peak_over_full"]
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary folders left
    assert len(list((cache / "quantized").iterdir())) == 1


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
                                     {"wav2vec_dann": throughput.TINY, "qlora": throughput.TINY}, wave_batch=2)
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

    rows = {}
    for name in ("baseline", "qlora", "wav2vec_dann"):
        r = throughput.model_throughput(params, name, tmp_path, steps=2, warmup=1, device="cpu", cache_dir=cache)
        assert r["samples_per_s"] > 0 and r["loader_samples_per_s"] > 0 and r["trainable"] <= r["parameters"]
        assert r["loader_over_model"] == pytest.approx(r["loader_samples_per_s"] / r["samples_per_s"])
        rows[name] = r
    assert r["batch_size"] == 2 and r["objective"] == "dann" and 0 <= r["padding_waste"] < 1
    assert r["audio_seconds_per_s"] > 0 and r["regime"] == "full" and rows["qlora"]["regime"] == "qlora"
    assert "wav2vec_dann" in throughput.format_models([r]) and " nf4" in throughput.format_models([rows["qlora"]])


def test_qlora_copy_is_built_in_a_subprocess(cache):
    params = throughput.bench_params(load_params(REPO / "params.yaml"), {"qlora": throughput.TINY}, wave_batch=2)
    assert throughput.prepare_quantized(params.models["wav2vec_dann"], cache) is None  # not a 4-bit model
    assert throughput.prepare_quantized(params.models["qlora"], cache) > 0
    (copy,) = (cache / "quantized").iterdir()
    assert copy.name.startswith("random_wav2vec2-tiny-") and (copy / "ser_quantized.json").is_file()


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


def test_stage_seconds_run_from_one_stage_start_to_the_next(tmp_path):
    per_stage = pipeline.stage_seconds([("build-metadata", 10.0), ("train@a-1-1", 12.5), ("train@b-1-1", 20.0),
                                        ("evaluate@a-1-1", 21.0)], end=30.0)
    assert per_stage == {"build-metadata": 2.5, "train@a-1-1": 7.5, "train@b-1-1": 1.0, "evaluate@a-1-1": 9.0}
    groups = pipeline.stage_groups(per_stage)
    assert list(groups) == ["evaluate@", "train@", "build-metadata"]  # by total time
    assert groups["train@"] == {"stages": 2, "seconds": 8.5, "max": 7.5}
    table = pipeline.format_groups(groups, per_stage)
    assert "train@" in table and "slowest stages: evaluate@a-1-1 9.0 s" in table
    assert pipeline.format_groups(groups, per_stage, title="experiment").startswith("experiment by stage family")
    # the experiment's floor: its train cells, and with their evaluations, as shares of make repro
    assert pipeline.experiment_floor(per_stage, repro=34.0) == {
        "train_cells_s": 8.5, "train_cells_share": 0.25, "train_and_evaluate_cells_s": 17.5,
        "train_and_evaluate_cells_share": 0.515}
    # run() times the stages from the output as it streams
    script = tmp_path / "fake_dvc.py"
    script.write_text("import time\nprint(\"Running stage 'a':\", flush=True)\ntime.sleep(0.3)\n"
                      "print(\"Running stage 'b':\", flush=True)\n")
    import sys
    seconds, out, timed = pipeline.run([sys.executable, str(script)], tmp_path, {}, tmp_path / "log")
    assert pipeline.stages_run(out) == ["a", "b"] and timed["a"] >= 0.25 and timed["b"] < 0.25


def test_forced_run_compares_every_cell_result_but_timings():
    def lock(model_md5: str, timing_md5: str, metrics_md5: str = "m1") -> dict:
        return {"stages": {
            "bind": {"outs": [{"path": "bind/a.json", "md5": model_md5 + "x"}]},
            "train@a-1-1": {"outs": [{"path": "models/a/f1", "md5": model_md5},
                                     {"path": "dvclive/a/f1/timing.json", "md5": timing_md5}]},
            "evaluate@a-1-1": {"outs": [{"path": "metrics/models/a/f1", "md5": metrics_md5}]}}}
    assert set(pipeline.cell_outputs(lock("w", "t"))) == {"models/a/f1", "metrics/models/a/f1"}
    # other timings (and other stages' outputs) are not results
    assert pipeline.changed_results(lock("w", "t1"), lock("w", "t2")) == []
    assert pipeline.changed_results(lock("w", "t"), lock("v", "t")) == ["models/a/f1"]
    assert pipeline.changed_results(lock("w", "t"), lock("w", "t", "m2")) == ["metrics/models/a/f1"]
    gone = lock("w", "t")
    del gone["stages"]["evaluate@a-1-1"]
    assert pipeline.changed_results(lock("w", "t"), gone) == ["metrics/models/a/f1"]


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
    assert set(realdata.setups(emodb, ravdess)) == {"cross", "in_domain", *realdata.ON_REQUEST}
    for name, setup in realdata.setups(emodb, ravdess, tmp_path / "tess").items():
        params = parse_params(realdata.make_params(base, setup, 0, False, 2))
        assert params.seeds == (0,) and params.folds == (1,), name
        if name == "multi_source":  # DANN's source is both labeled corpora
            assert params.studies["cross_corpus"].source == ("emodb", "tess") and "dann" in params.models
        if name.startswith("multi_corpus"):  # no target: no DANN model
            assert params.studies["cross_corpus"].target is None and "dann" not in params.models
        if name in realdata.ON_REQUEST:  # one corpus, no target: no DANN model
            assert len(params.studies["cross_corpus"].corpora) == 1 and "dann" not in params.models
        if name == "multi_corpus7":  # the 7 classes; EmoDB's disgust and fear kept, boredom left out
            assert len(params.studies["cross_corpus"].labels) == 7
            assert params.corpora["emodb"].label_map["fear"] == "fear" and params.corpora["emodb"].label_map["boredom"] == ""
    # --params replaces whole sections, --set one value
    over = realdata.overlay(base, {"models": {"m": base["models"]["egemaps_svm"]}}, ["features.vad=trim"])
    assert list(over["models"]) == ["m"] and over["features"]["vad"] == "trim" and base["features"]["vad"] == "none"
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        realdata.overlay(base, {}, ["features.vad"])
    # a DANN model's twin: the model whose params differ only in the objective
    twin = {**base["models"]["dann"], "objective": "ce"}
    assert realdata.twins({"dann": base["models"]["dann"], "twin": twin, "baseline": base["models"]["baseline"]}) \
        == {"dann": "twin"}
    # a self-trained head's twin: the same head without classical.self_train; it needs a target corpus
    svm = base["models"]["egemaps_svm"]
    st = {**svm, "classical": {**svm["classical"], "self_train": {"rounds": 2}}}
    assert realdata.twins({"st": st, "svm": svm, "dann": base["models"]["dann"]}, "self_train") == {"st": "svm"}
    assert realdata.twins({"st": st, "svm": svm}) == {}
    in_domain = realdata.make_params({**base, "models": {"st": st, "svm": svm}},
                                     realdata.setups(emodb, ravdess)["in_domain"], 0, False, 2)
    assert list(in_domain["models"]) == ["svm"]
    params = parse_params(protocols.make_params(base, emodb, ravdess, [0, 1], 3))
    assert params.folds == (1, 2, 3) and params.seeds == (0, 1)
    assert params.studies["matrix"].design == "matrix" and params.studies["cross"].target == "ravdess"
    assert params.splits["ravdess_folds"]["ravdess"].k == 3 and params.models["cross_dann"].epochs == 3
    assert {m.study for m in params.models.values()} == set(params.studies)
    # the demo's matrix model is left to the protocols check, not run again as a cross-corpus model
    cross = realdata.make_params(base, realdata.setups(emodb, ravdess)["cross"], 0, False, 2)
    assert "matrix_logreg" not in cross["models"] and "egemaps_logreg" in cross["models"]
    # random encoders (waveform fine-tunes and the cached-embedding probe) only with --with-waves
    assert not {"wav2vec_dann", "wavlm_probe"} & set(cross["models"])
    with_encoders = realdata.make_params(base, realdata.setups(emodb, ravdess)["cross"], 0, True, 2)
    assert {"wav2vec_dann", "wavlm_probe"} <= set(with_encoders["models"])


def test_realdata_runs_the_fusions_whose_members_it_runs_and_refuses_a_bad_fuse(tmp_path, capsys):
    """Fusions are the pipeline's (params `fusions`, computed by summarize): the check keeps those whose
    members all run in a set-up and reads their runs beside the models'; --fuse of an SVM's decision
    values fails before any work, naming the model."""
    import yaml

    from ser.config import parse_params

    sys.path.insert(0, str(REPO / "bench"))
    try:
        realdata = _load("realdata")
    finally:
        sys.path.remove(str(REPO / "bench"))
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["fusions"]["mlp_logreg"] = {"members": ["egemaps_mlp", "egemaps_logreg"]}
    base["fusions"]["with_probe"] = {"members": ["egemaps_mlp", "wavlm_probe"]}
    cross = realdata.make_params(base, realdata.setups(tmp_path / "e", tmp_path / "r")["cross"], 0, False, 2)
    assert set(cross["fusions"]) == {"crnn_egemaps_mlp", "mlp_logreg"}  # wavlm_probe runs only --with-waves
    parse_params(cross)
    dirs = realdata._run_dirs(tmp_path, cross)
    assert dirs["mlp_logreg"] == (tmp_path / "metrics" / "fusions" / "mlp_logreg",
                                  tmp_path / "metrics" / "fusion_predictions" / "mlp_logreg")
    assert dirs["egemaps_mlp"] == (tmp_path / "metrics" / "models" / "egemaps_mlp", tmp_path / "plots" / "egemaps_mlp")
    for name in ("emodb", "ravdess"):
        (tmp_path / name).mkdir()
    (tmp_path / "emodb" / "metadata.csv").write_text("path,speaker,emotion\n")
    with pytest.raises(SystemExit, match=r"\['egemaps_svm'\] score with an SVM's decision values"):
        realdata.main(["--emodb", str(tmp_path / "emodb"), "--ravdess", str(tmp_path / "ravdess"),
                       "--fuse", "egemaps_logreg+egemaps_svm", "--workdir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_gpu_check_without_cuda_exits_at_once_saying_why(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for real")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env={**__import__("os").environ, "PYTHON": sys.executable})
    assert proc.returncode == 2 and "gpu_check: no CUDA device" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step_and_reports_one_that_ran_out_of_time(tmp_path):
    """GPU_CHECK_SMOKE=1: the same three steps on the CPU with tiny backbones; the QLoRA step gets
    1 second, runs out of time, is reported as such, and the other two still run."""
    import os

    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SMOKE": "1", "GPU_CHECK_LIMITS": "120 1 120"}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=400, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    states = {name: step["state"] for name, step in doc["steps"].items()}
    assert states == {"train": "ok", "qlora": "timed out", "embed": "ok"}
    rows = "\n".join(doc["readme_rows"])
    assert "training step, wav2vec_dann (random:wav2vec2-tiny" in rows and "| qlora | timed out" in rows
    assert "embedding precompute (random:wav2vec2-tiny, cpu)" in rows


def test_contrasts_find_the_contrast_two_corpora_mark_differently(tmp_path, capsys):
    """Corpus A and B mark x - y with f0 the same way; y - z with f1 in opposite directions."""
    from ser.features import stores

    contrasts = _load("contrasts")
    rng = np.random.default_rng(0)
    rows, arrays = [], []
    for corpus, flip in (("a", 1.0), ("b", -1.0)):
        for spk in ("s1", "s2"):
            offset = rng.normal(0, 5, size=4)  # speaker offsets: per-speaker z-scores remove them
            for label, f0, f1 in (("x", 2.0, 0.0), ("y", 0.0, 0.0), ("z", 0.0, -2.0 * flip)):
                for i in range(6):
                    arrays.append((offset + np.array([f0, f1, 0.0, 0.0]) + rng.normal(0, 0.3, 4)).astype(np.float32))
                    rows.append(stores.IndexRow(f"{corpus}{spk}{label}{i}", corpus, spk, label, 0, len(rows), 16000))
    store = tmp_path / "egemaps" / "study"
    stores.write_store(store, {"train": (np.stack(arrays), rows)},
                       {"kind": "egemaps", "labels": ["x", "y", "z"], "feature_names": ["f0", "f1", "f2", "f3"]})
    assert contrasts.main([str(store), "--labels", "x", "y", "z", "--top", "2", "--out", str(tmp_path / "c.json")]) == 0
    result = {c["contrast"]: c["pairs"][0] for c in json.loads((tmp_path / "c.json").read_text())["contrasts"]}
    assert result["x - y"]["correlation"] > 0.9 and result["y - z"]["correlation"] < -0.5
    assert result["y - z"]["flipped"][0]["feature"] == "f1" and result["y - z"]["flipped"][0]["a"] > 1.5
    assert "| y - z | a / b |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="clips.npy"):
        contrasts.main([str(tmp_path / "nowhere")])
