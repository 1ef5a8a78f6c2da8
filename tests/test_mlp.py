"""The MLP on openSMILE functionals (arch mlp): the one trainer, CE or DANN, standardisation kept
with the weights, the selection rule, evaluation and `ser predict` like every model."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from test_classical import LABELS, PITCH, SR, tone, tone_corpus, train, write_store, write_wav  # noqa: F401

from ser.config import MlpParams, ModelParams, OptimParams, ParamsError, load_params, parse_params
from ser.eval.evaluate import evaluate_model
from ser.features import precompute as features
from ser.features import stores
from ser.features.scaling import Standardiser, fit_stats, speaker_standardise
from ser.features.stores import FeatureStore, IndexRow
from ser.models.learner import TorchFitted, load_fitted

REPO = Path(__file__).resolve().parents[1]


def mlp(standardise: str = "global", objective: str = "ce", epochs: int = 25, select: str = "val",
        hidden: tuple[int, ...] = (16, 8)) -> ModelParams:
    return ModelParams(study="cross_corpus", arch="mlp", objective=objective, input="egemaps", epochs=epochs,
                       batch_size=8, optim=OptimParams(lr=1e-2), select=select,
                       mlp=MlpParams(hidden=hidden, dropout=0.1, standardise=standardise, domain_hidden=8))


@pytest.fixture(scope="module")
def base_params():
    return dataclasses.replace(load_params(REPO / "params.yaml"), seed=3, folds=(1,), seeds=(3,), fusions={})


def _test_rows(feats: Path, split: str = "test") -> tuple[np.ndarray, list[str]]:
    store = FeatureStore(feats / "egemaps" / "cross_corpus" / "f1", split)
    return store.stack(), [f"{r.corpus}/{r.speaker}" for r in store.index]


@pytest.mark.parametrize("standardise", ["global", "speaker"])
def test_mlp_learns_keeps_its_statistics_and_is_a_model_like_the_others(base_params, tmp_path, standardise):
    feats = write_store(tmp_path / "features", speaker_shift=0.5)
    params = dataclasses.replace(base_params, models={"mlp": mlp(standardise)})
    result, model_dir, live_dir = train(params, "mlp", feats, tmp_path)
    assert result["val"]["uar"] > 0.6 and 1 <= result["best_epoch"] <= 25
    fitted = load_fitted(model_dir)
    assert isinstance(fitted, TorchFitted) and not fitted.windowed
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["build"]["n_features"] == 12 and meta["model_params"]["mlp"]["standardise"] == standardise
    # the train split's raw statistics travel with the weights
    x_tr, _ = _test_rows(feats, "train")
    mean, std = fit_stats(x_tr)
    np.testing.assert_allclose(fitted.standardiser.mean, mean)
    np.testing.assert_allclose(fitted.standardiser.std, std)
    metrics, y_true, y_pred = evaluate_model(model_dir, feats, "test")
    assert metrics["n"] == 24 and metrics["uar"] > 0.6  # chance: 0.25
    # evaluation standardises exactly as `scores` does given the speakers
    x_te, speakers = _test_rows(feats)
    np.testing.assert_array_equal(fitted.scores(x_te, speakers=speakers).argmax(1), y_pred)
    if standardise == "speaker":
        z = torch.as_tensor(speaker_standardise(x_te, speakers), dtype=torch.float32)
        np.testing.assert_array_equal(fitted.model(z).argmax(1).numpy(), y_pred)
    # deterministic: a second run writes identical bytes
    _, again, _ = train(params, "mlp", feats, tmp_path / "again")
    for name in ("meta.json", "model.safetensors"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes()


def test_speaker_standardisation_places_unseen_speakers(base_params, tmp_path):
    feats = write_store(tmp_path / "features", speaker_shift=6.0)
    uar = {}
    for mode in ("global", "speaker"):
        params = dataclasses.replace(base_params, models={mode: mlp(mode)})
        _, model_dir, _ = train(params, mode, feats, tmp_path)
        uar[mode] = evaluate_model(model_dir, feats, "test")[0]["uar"]
    assert uar["speaker"] > 0.6 and uar["speaker"] > uar["global"] + 0.2, uar


def _dann_store(root: Path, seed: int = 0, n_features: int = 12) -> Path:
    """Labeled source (train/val) and a target corpus (adapt, test) shifted by a corpus offset."""
    rng = np.random.default_rng(seed)
    out = root / "egemaps" / "cross_corpus"
    shift = 3.0 * rng.normal(size=n_features)
    plan = {"train": ("iemocap", ["s1", "s2"], 0), "val": ("iemocap", ["s3"], 0),
            "adapt": ("ravdess", ["r1", "r2"], 1), "test": ("ravdess", ["r3", "r4"], 1)}
    splits = {}
    for split, (corpus, spks, domain) in plan.items():
        arrays, rows = [], []
        for spk in spks:
            for i in range(16):
                k = i % 4
                x = rng.normal(size=n_features)
                x[2 * k:2 * k + 2] += 2.5
                arrays.append((x + (shift if domain else 0.0)).astype(np.float32))
                emotion = "" if split == "adapt" else LABELS[k]
                rows.append(IndexRow(f"{split}_{spk}_{i}", corpus, spk, emotion, domain, len(rows), SR))
        splits[split] = (np.stack(arrays), rows)
    stores.write_store(out, splits, {"kind": "egemaps", "sample_rate": SR, "labels": LABELS, "target": "ravdess",
                                     "features": {k: getattr(features.FeatureParams(), k)
                                                  for k in features._WAVE_KEYS},
                                     "feature_set": "eGeMAPSv02", "feature_names": [f"f{j}" for j in range(n_features)],
                                     "n_features": n_features, "opensmile_version": "test"})
    return root


def test_dann_on_functionals_trains_through_the_one_loop_and_keeps_the_last_epoch(base_params, tmp_path):
    feats = _dann_store(tmp_path / "features")
    params = dataclasses.replace(base_params, models={"dann": mlp("global", "dann", epochs=6, select="last")})
    result, model_dir, live_dir = train(params, "dann", feats, tmp_path)
    assert result["best_epoch"] == 6 and result["epochs_run"] == 6  # select last: the final epoch
    history = result["history"]
    assert all("val/domain_accuracy" in h and "train/domain_loss" in h for h in history)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["best_epoch"] == 6 and meta["build"]["with_domain_head"] and meta["lambda_domain"] == 0.5
    # the domain-accuracy curve is a DVCLive plot like the others
    curve = live_dir / "plots" / "metrics" / "val" / "domain_accuracy.tsv"
    assert curve.is_file() and len(curve.read_text().splitlines()) == 7
    metrics, _, _ = evaluate_model(model_dir, feats, "test")
    assert metrics["n"] == 32


def test_params_reject_what_cannot_train() -> None:
    raw = __import__("yaml").safe_load((REPO / "params.yaml").read_text())
    entry = {"study": "cross_corpus", "arch": "mlp", "objective": "ce", "input": "egemaps", "epochs": 3,
             "batch_size": 8, "optim": {}, "mlp": {"hidden": [8]}}
    parse_params({**raw, "models": {"m": entry}, "fusions": {}})  # valid
    bad = {
        "go with arch 'classical' or 'mlp'": {"input": "mels"},
        "needs a 'mlp:' section": {"mlp": None},
        "patience .* contradicts": {"select": "last", "patience": 2},
        "hidden must be a non-empty list": {"mlp": {"hidden": []}},
        "use objective: ce, or arch: mlp": {"arch": "classical", "objective": "dann",
                                             "classical": {"classifier": "svm", "C": [1.0], "standardise": "global"}},
    }
    for message, change in bad.items():
        with pytest.raises(ParamsError, match=message):
            parse_params({**raw, "models": {"m": {**entry, **change}}, "fusions": {}})


def test_predict_scores_a_whole_file_with_the_training_standardisation(base_params, tone_corpus, tmp_path, caplog):
    from ser.infer.predict import Predictor

    params = dataclasses.replace(load_params(tone_corpus["params"]), seed=3,
                                 models={"g": mlp("global", epochs=40), "s": mlp("speaker", epochs=5)})
    _, model_dir, _ = train(params, "g", tone_corpus["features"], tmp_path)
    wav = write_wav(tmp_path / "new.wav", tone(0.6, PITCH["happy"] * 1.01, 0.15, seed=123))
    predictor = Predictor(model_dir)
    assert predictor.window_s is None
    (result,) = predictor.predict_files([wav])
    assert result.ok and len(result.windows) == 1 and abs(sum(result.probabilities) - 1) < 1e-6
    meta = json.loads((model_dir / "meta.json").read_text())
    wave, _ = features._decode(str(wav), features.feature_params_from_meta(meta["features"]))
    row = features.functionals_for_inference(wave, meta["features"])[None]
    fitted = load_fitted(model_dir)
    z = Standardiser("global", fitted.standardiser.mean, fitted.standardiser.std).apply(row)
    expected = torch.softmax(fitted.model(torch.as_tensor(z, dtype=torch.float32)), -1)[0].detach().numpy()
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not apply"):
        Predictor(model_dir, window_s=1.0)
    _, spk_dir, _ = train(params, "s", tone_corpus["features"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="ser.infer.predict"):
        (result,) = Predictor(spk_dir).predict_files([wav])
    assert result.ok and "global train statistics" in caplog.text
