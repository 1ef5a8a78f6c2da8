"""The GE2E store: the pretrained speaker encoder shipped in the resemblyzer wheel, run for real.

The encoder's weights come from the installed package (no hub); the tests run it on short
synthetic tones and check that the store holds exactly what the packaged 3-layer LSTM computes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
import yaml

from ser.config import ParamsError, load_params, parse_params
from ser.data.manifest import write_manifest
from ser.features import ge2e
from ser.features import precompute as features
from ser.features.stores import FeatureStore
from ser.infer.predict import Predictor
from ser.models.linear import load_linear
from tests.test_classical import LABELS, PITCH, SR, _utt, linear, tone, train, write_wav

REPO = Path(__file__).resolve().parents[1]


def test_layer_means_are_the_packaged_encoders_layer_outputs() -> None:
    from resemblyzer import VoiceEncoder, audio

    wave = tone(1.2, 180.0, 0.2, seed=1)
    row = ge2e.layer_means(wave, SR)
    assert row.shape == (ge2e.N_FEATURES,) and row.dtype == np.float32 and np.isfinite(row).all()
    # the whole 3-layer LSTM as resemblyzer builds it: its last layer's outputs are our last 256 values
    encoder = VoiceEncoder(device="cpu", verbose=False)
    mel = audio.wav_to_mel_spectrogram(audio.normalize_volume(wave.astype(np.float64), -30, increase_only=True)
                                       .astype(np.float32))
    with torch.inference_mode():
        out, _ = encoder.lstm(torch.from_numpy(mel)[None])
    np.testing.assert_allclose(row[2 * 256:], out[0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(row[:256], row[256:512])  # three layers, not one repeated


def test_rows_do_not_depend_on_threads_and_the_thread_count_is_restored() -> None:
    wave = tone(0.8, 300.0, seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = ge2e.layer_means(wave, SR)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        np.testing.assert_array_equal(a, ge2e.layer_means(wave, SR))
    finally:
        torch.set_num_threads(before)


def test_other_rates_are_resampled_to_the_encoders_16k() -> None:
    t = np.arange(int(0.8 * 22050)) / 22050
    wave = (0.2 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    np.testing.assert_array_equal(ge2e.layer_means(wave, 22050),
                                  ge2e.layer_means(soxr.resample(wave, 22050, 16000, quality="HQ"), 16000))
    # a quiet clip is raised to the encoder's -30 dBFS, a loud one kept as it is
    quiet = tone(0.8, 200.0, 0.01, noise=0.0)
    np.testing.assert_allclose(ge2e.layer_means(quiet, SR), ge2e.layer_means(quiet * 4, SR), atol=1e-5)
    loud = tone(0.8, 200.0, 0.5, noise=0.0)
    assert not np.allclose(ge2e.layer_means(loud, SR), ge2e.layer_means(loud * 0.5, SR), atol=1e-3)


def test_meta_names_the_packaged_weights() -> None:
    meta = ge2e.ge2e_meta()
    assert meta["n_features"] == len(meta["feature_names"]) == 768
    assert meta["feature_names"][0] == "ge2e_l1_000" and meta["feature_names"][-1] == "ge2e_l3_255"
    assert meta["weights_sha256"] == hashlib.sha256(ge2e._weights_path().read_bytes()).hexdigest()


def test_without_the_package_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(ge2e.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install resemblyzer"):
        ge2e._weights_path()


def test_params_name_the_store_a_ge2e_model_reads() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = {"study": "cross_corpus", "arch": "classical", "objective": "ce", "input": "ge2e", "epochs": 1,
             "batch_size": 1, "optim": {}, "classical": {"classifier": "logreg", "C": [0.1], "standardise": "speaker"}}
    with pytest.raises(ParamsError, match="needs 'ge2e' in features.functionals"):
        parse_params({**raw, "features": {**raw["features"], "functionals": ["egemaps"]},
                      "models": {"g": entry}, "fusions": {}})
    parsed = parse_params({**raw, "features": {**raw["features"], "functionals": ["egemaps", "ge2e"]},
                           "models": {"g": entry}, "fusions": {}})
    assert parsed.store_plan()["ge2e"] == ["cross_corpus"]
    with pytest.raises(ParamsError, match="opensmile_sets: it is now features.functionals"):
        parse_params({**raw, "features": {**raw["features"], "opensmile_sets": ["egemaps"]}})


def test_ge2e_store_trains_a_head_and_predict_computes_the_same_row(tmp_path) -> None:
    """precompute --kind ge2e (the stage script) on pitch-coded tones; a speaker-standardised logistic
    regression learns the classes from the GE2E rows, and `ser predict` scores a file with the store's row."""
    rows, n = [], 0
    for split, speakers in (("train", ("s1", "s2")), ("val", ("s3",)), ("test", ("s4",))):
        for spk in speakers:
            for label, freq in PITCH.items():
                for r in range(2):
                    path = write_wav(tmp_path / "audio" / f"{n}.wav",
                                     tone(0.7, freq * (1 + 0.03 * r), 0.1 + 0.1 * r, seed=n))
                    rows.append(_utt(path, split, label, spk, n))
                    n += 1
    write_manifest(rows, tmp_path / "manifests" / "multi_corpus" / "f1.csv")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["features"]["functionals"] = ["ge2e"]
    raw["runtime"] = {"workers": 2, "num_workers": 0}
    raw["studies"] = {"multi_corpus": {**raw["studies"]["multi_corpus"], "labels": LABELS}}
    raw["splits"] = {"multi_corpus": raw["splits"]["multi_corpus"]}
    raw["models"], raw["fusions"] = {}, {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, str(REPO / "stages" / "precompute.py"), "--kind", "ge2e",
                           "--params", str(tmp_path / "params.yaml"), "--manifests", str(tmp_path / "manifests"),
                           "--out-dir", str(tmp_path / "features" / "ge2e"), "--report", str(tmp_path / "r.json")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "features" / "ge2e" / "multi_corpus"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["kind"] == "ge2e" and meta["n_features"] == 768 and meta["weights_sha256"]
    store = FeatureStore(root / "f1", "train")
    assert store.stack().shape == (16, 768)
    wave, _ = features._decode(rows[0].path, features.feature_params_from_meta(meta))
    np.testing.assert_array_equal(store[0], features.functionals_for_inference(wave, meta))

    params = dataclasses.replace(load_params(tmp_path / "params.yaml"), seed=3, folds=(1,), seeds=(3,),
                                 models={"g": linear("logreg", C=(0.01, 0.1, 1.0), standardise="speaker",
                                                     input="ge2e", study="multi_corpus")})
    result, model_dir, _ = train(params, "g", tmp_path / "features", tmp_path / "run")
    assert result["val"]["uar"] >= 0.75  # pitch-coded tones are easy for a speaker encoder
    wav = write_wav(tmp_path / "new.wav", tone(0.7, PITCH["angry"], 0.15, seed=321))
    (scored,) = Predictor(model_dir).predict_files([wav])
    model, _ = load_linear(model_dir)
    wave, _ = features._decode(str(wav), features.feature_params_from_meta(meta))
    expected = model.score(model.prepare(features.functionals_for_inference(wave, meta)[None]))[0]
    np.testing.assert_allclose(scored.probabilities, expected, rtol=1e-6, atol=1e-9)
