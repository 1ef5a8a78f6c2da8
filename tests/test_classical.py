"""The classical baseline: openSMILE stores, linear SVM / logistic regression, checkpoints, predict.

openSMILE runs for real (its wheel bundles the library) on tiny synthetic tones;
the classifier tests use small synthetic functional stores written directly.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import soundfile as sf
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from ser.config import (ClassicalParams, FeatureParams, ModelParams, OptimParams, ParamsError, SelfTrainParams,
                        load_params, parse_params)
from ser.data.manifest import Utterance, write_manifest
from ser.errors import CheckpointError
from ser.eval.evaluate import evaluate_model
from ser.features import precompute as features
from ser.features import stores
from ser.features.scaling import fit_stats, rank_gauss, speaker_standardise, standardise
from ser.features.smile import functionals, smile_meta
from ser.features.stores import FeatureStore, IndexRow
from ser.models.learner import load_fitted
from ser.models.linear import ClassicalFitted, _choose, _pseudo_rows, _weights, load_linear
from ser.train.learners import train_model

REPO = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]
SR = 16000
PITCH = {"angry": 330.0, "happy": 440.0, "neutral": 165.0, "sad": 110.0}  # one pitch per class


def tone(seconds: float, freq: float, amp: float = 0.3, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, SR, subtype="PCM_16")
    return path


def linear(classifier: str = "logreg", C: tuple[float, ...] = (0.01, 1.0), standardise: str = "global",
           input: str = "egemaps", study: str = "cross_corpus", gamma: tuple[float, ...] | None = None,
           calibrate: str = "none", self_train: SelfTrainParams | None = None) -> ModelParams:
    return ModelParams(study=study, arch="classical", objective="ce", input=input, epochs=1, batch_size=1,
                       optim=OptimParams(), classical=ClassicalParams(classifier, C, standardise, gamma=gamma,
                                                                      calibrate=calibrate, self_train=self_train))


@pytest.fixture(scope="module")
def base_params():
    return dataclasses.replace(load_params(REPO / "params.yaml"), seed=3, folds=(1,), seeds=(3,), fusions={})


def train(params, name: str, features_root: Path, out: Path):
    """One run (fold 1, params.seed) in the pipeline's layout: <out>/models/<name>/f1-s<seed>."""
    run = f"f1-s{params.seed}"
    result = train_model(params, name, features_root, out / "models" / name / run, out / "checkpoints" / name / run,
                         out / "dvclive" / name / run, timing_path=out / "dvclive" / name / run / "timing.json")
    return result, out / "models" / name / run, out / "dvclive" / name / run


# --------------------------------------------------------------------------- openSMILE
def test_egemaps_of_a_tone_has_88_finite_features() -> None:
    meta = smile_meta("egemaps")
    assert meta["feature_set"] == "eGeMAPSv02" and meta["n_features"] == len(meta["feature_names"]) == 88
    feats = functionals(tone(1.0, 220.0), SR, "egemaps")
    assert feats.shape == (88,) and feats.dtype == np.float32 and np.isfinite(feats).all()
    # F0 in semitones above 27.5 Hz: 220 Hz is exactly three octaves up, 36 semitones.
    f0 = feats[meta["feature_names"].index("F0semitoneFrom27.5Hz_sma3nz_amean")]
    assert abs(f0 - 36.0) < 0.5


def test_full_scale_samples_are_not_wrapped() -> None:
    """opensmile casts x * 32768 to int16: +1.0 would wrap to -32768 unless clipped first."""
    full = np.sin(2 * np.pi * 250 * np.arange(SR) / SR).astype(np.float32)  # hits +1.0 exactly
    assert full.max() == 1.0
    names = smile_meta("egemaps")["feature_names"]
    loud = names.index("loudness_sma3_amean")
    a, b = functionals(full, SR, "egemaps")[loud], functionals(full * np.float32(0.999), SR, "egemaps")[loud]
    assert abs(a - b) < 0.01 * b


# --------------------------------------------------------------------------- the store
def _utt(path: Path, split: str, emotion: str, speaker: str, n: int, corpus: str = "iemocap") -> Utterance:
    return Utterance(utt_id=f"{corpus}_{split}_{n:03d}", corpus=corpus, speaker=speaker, path=str(path),
                     duration_s=1.0, sample_rate=SR, raw_label=emotion, emotion=emotion, split=split)


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory) -> dict:
    """A cross-corpus manifest of 0.6 s tones, pitch by class, 2 train speakers, plus a corrupt file."""
    root = tmp_path_factory.mktemp("smile")
    rows, n = [], 0
    for split, speakers, reps in (("train", ("s1", "s2"), 2), ("val", ("s3",), 1), ("test", ("s4",), 1)):
        for spk in speakers:
            for label, freq in PITCH.items():
                for r in range(reps):
                    amp = 0.1 + 0.1 * r + (0.05 if spk == "s2" else 0.0)
                    path = write_wav(root / "audio" / f"{split}{n}.wav", tone(0.6, freq * (1 + 0.02 * r), amp, seed=n))
                    rows.append(_utt(path, split, label, spk, n))
                    n += 1
    rows.append(_utt(write_wav(root / "audio" / "adapt.wav", tone(0.6, 200.0, seed=99)), "adapt", "", "r1", 98,
                     corpus="ravdess"))
    corrupt = root / "audio" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40))
    rows.insert(3, _utt(corrupt, "train", "sad", "s1", 99))
    manifests = root / "manifests"
    write_manifest(rows, manifests / "cross_corpus" / "f1.csv")
    write_manifest([r for r in rows if r.split != "adapt"], manifests / "multi_corpus" / "f1.csv")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["runtime"] = {"workers": 2, "num_workers": 0}
    raw["studies"]["multi_corpus"]["labels"] = LABELS
    raw["studies"].pop("corpus_matrix")
    raw["splits"].pop("corpus_matrix")
    raw["models"].pop("matrix_logreg")
    raw["fusions"] = {}  # tests swap the models
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    report = root / "egemaps.json"
    done = subprocess.run([sys.executable, str(REPO / "stages" / "precompute.py"), "--kind", "egemaps",
                           "--params", str(root / "params.yaml"), "--manifests", str(manifests),
                           "--out-dir", str(root / "features" / "egemaps"), "--report", str(report)],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "rows": rows, "report": json.loads(report.read_text()), "params": root / "params.yaml",
            "features": root / "features"}


def test_precompute_egemaps_stage_writes_a_store(tone_corpus: dict) -> None:
    report = tone_corpus["report"]["cross_corpus"]
    assert report["kind"] == "egemaps" and report["skipped"] == {"unreadable": 1}
    assert report["folds"] == {"1": {"train": 16, "val": 4, "test": 4, "adapt": 1}}
    root = tone_corpus["features"] / "egemaps" / "cross_corpus"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["kind"] == "egemaps" and meta["feature_set"] == "eGeMAPSv02" and len(meta["feature_names"]) == 88
    assert meta["opensmile_version"] and meta["labels"] == LABELS and meta["target"] == "ravdess"
    assert set(meta["features"]) == set(features._WAVE_KEYS)  # the front end's keys, not the mel ones
    fp = features.feature_params_from_meta(meta)
    train = FeatureStore(root / "f1", "train")
    assert train.stack().shape == (16, 88) and train.array.dtype == np.float32
    by_id = {r.utt_id: r for r in tone_corpus["rows"]}
    for i in (0, 5):
        wave, skipped = features._decode(by_id[train.index[i].utt_id].path, fp)
        assert skipped is None and train.index[i].length == wave.shape[0]
        # the pool's row is exactly what inference computes from the same decoded clip
        np.testing.assert_array_equal(train[i], features.functionals_for_inference(wave, meta))
    adapt = FeatureStore(root / "f1", "adapt")
    assert [r.domain for r in adapt.index] == [1]
    assert (tone_corpus["features"] / "egemaps" / "multi_corpus" / "f1" / "test.csv").is_file()


# --------------------------------------------------------------------------- training
def write_store(root: Path, speaker_shift: float = 0.0, n_features: int = 12, seed: int = 0,
                kind: str = "egemaps", target_shift: Optional[np.ndarray] = None) -> Path:
    """Separable functionals: class k adds 2.5 to features 2k and 2k+1; each speaker
    adds its own random offset of scale `speaker_shift` to every feature. With `target_shift`,
    the test speakers and an adapt split (4 more speakers, corpus ravdess) add it to every clip."""
    rng = np.random.default_rng(seed)
    out = root / kind / "cross_corpus"
    speakers = {"train": ["s1", "s2", "s3", "s4"], "val": ["s5", "s6"], "test": ["s7", "s8"]}
    if target_shift is not None:
        speakers["adapt"] = ["t1", "t2", "t3", "t4"]
    splits = {}
    for split, spks in speakers.items():
        arrays, rows = [], []
        target = target_shift is not None and split in ("test", "adapt")
        for spk in spks:
            offset = speaker_shift * rng.normal(size=n_features) + (target_shift if target else 0.0)
            scale = rng.uniform(0.5, 2.0, size=n_features) if speaker_shift else 1.0
            for i in range(12):
                k = i % 4
                x = rng.normal(size=n_features)
                x[2 * k:2 * k + 2] += 2.5
                arrays.append(((x * scale) + offset).astype(np.float32))
                rows.append(IndexRow(f"{split}_{spk}_{i}", "ravdess" if target else "iemocap", spk, LABELS[k],
                                     int(target), len(rows), SR))
        splits[split] = (np.stack(arrays), rows)
    names = [f"f{j}" for j in range(n_features)]
    stores.write_store(out, splits, {"kind": kind, "sample_rate": SR, "labels": LABELS, "target": None,
                     "features": {k: getattr(FeatureParams(), k) for k in features._WAVE_KEYS},
                     "feature_set": "eGeMAPSv02", "feature_names": names, "n_features": n_features,
                     "opensmile_version": "test"})
    return root


@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_linear_model_learns_and_is_a_model_like_the_others(base_params, tmp_path, classifier) -> None:
    feats = write_store(tmp_path / "features")
    params = dataclasses.replace(base_params, models={"lin": linear(classifier, C=(0.001, 0.1, 10.0))})
    result, model_dir, live_dir = train(params, "lin", feats, tmp_path)
    assert result["val"]["uar"] > 0.9 and result["best_epoch"] == 1
    assert set(result["val_uar_by_C"]) == {"0.001", "0.1", "10"}
    assert isinstance(load_fitted(model_dir), ClassicalFitted) and sorted(p.name for p in model_dir.iterdir()) == ["meta.json", "model.safetensors"]
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["C"] == result["C"] and meta["parameters"]["total"] == 4 * 12 + 4
    assert meta["scores"] == ("softmax" if classifier == "logreg" else "decision")
    live = json.loads((live_dir / "metrics.json").read_text())
    assert live["val"]["uar"] == result["val"]["uar"] and live["val_uar_by_C"] == result["val_uar_by_C"]
    assert live["C"] == result["C"]
    assert json.loads((live_dir / "timing.json").read_text())["train_seconds"] > 0
    metrics, y_true, y_pred = evaluate_model(model_dir, feats, "test")
    assert metrics["n"] == 24 and metrics["uar"] > 0.9 and len(y_pred) == len(y_true) == 24
    # the evaluate and summarize stages take it like any model
    from ser.eval.evaluate import evaluate_model_scopes
    from ser.eval.summary import write_summary
    records = evaluate_model_scopes(params, "lin", model_dir, feats, tmp_path / "metrics" / "lin" / "f1-s3",
                                    tmp_path / "plots" / "lin" / "f1-s3")
    assert records["in_domain"]["uar"] == metrics["uar"]
    text = write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                         tmp_path / "dvclive", tmp_path / "plots")
    (row,) = [line for line in text.splitlines() if line.startswith("| lin | cross_corpus/test [iemocap]")]
    assert f"| {100 * metrics['uar']:.1f} |" in row and "| 52 / 52 |" in row and "1 fold(s) x 1 seed(s)" in row

    # deterministic: a second run writes identical bytes
    _, again, _ = train(params, "lin", feats, tmp_path / "again")
    for name in ("meta.json", "model.safetensors"):
        assert (again / name).read_bytes() == (model_dir / name).read_bytes()


def test_c_is_chosen_on_validation_uar_ties_to_the_smaller() -> None:
    assert _choose([(0.01, 0.5), (0.1, 0.8), (1.0, 0.8), (10.0, 0.7)]) == 1
    assert _choose([(0.01, 0.9), (0.1, 0.8)]) == 0
    assert _choose([(0.01, 0.2), (0.1, 0.3), (1.0, 0.6)]) == 2


def test_grid_choice_matches_refits(base_params, tmp_path) -> None:
    """The saved model is the train-only fit at the chosen C (no refit on train + val)."""
    feats = write_store(tmp_path / "features", speaker_shift=0.5)
    grid = (1e-4, 1e-2, 1.0)
    params = dataclasses.replace(base_params, models={"lin": linear("svm", C=grid)})
    result, model_dir, _ = train(params, "lin", feats, tmp_path)
    by_c = result["val_uar_by_C"]
    best = max(by_c.values())
    assert result["C"] == min(float(c) for c, u in by_c.items() if u == best)
    model, _ = load_linear(model_dir)
    x_tr, y_tr = _arrays(feats, "train")
    x_te, _ = _arrays(feats, "test")
    mean, std = fit_stats(x_tr)
    clf = LinearSVC(C=result["C"], class_weight="balanced", max_iter=10000, random_state=3, dual="auto")
    clf.fit(standardise(x_tr, mean, std), y_tr)
    np.testing.assert_array_equal(model.predict(model.prepare(x_te)), clf.predict(standardise(x_te, mean, std)))


def _arrays(feats: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    store = FeatureStore(feats / "egemaps" / "cross_corpus" / "f1", split)
    return store.stack(), store.labels(LABELS)


# --------------------------------------------------------------------------- standardisation
def test_speaker_standardise_uses_each_speakers_own_statistics() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 3, size=(6, 4)), rng.normal(-2, 0.5, size=(4, 4)), np.ones((1, 4))])
    speakers = ["a"] * 6 + ["b"] * 4 + ["c"]
    z = speaker_standardise(x, speakers)
    for spk, rows in (("a", slice(0, 6)), ("b", slice(6, 10))):
        np.testing.assert_allclose(z[rows].mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(z[rows].std(axis=0), 1, atol=1e-12)
    np.testing.assert_array_equal(z[10], 0)  # one clip: only centred
    # per speaker, not per split: speaker a's rows do not depend on speaker b's
    np.testing.assert_allclose(speaker_standardise(x[:6], speakers[:6]), z[:6])
    mean, std = fit_stats(np.array([[1.0, 3.0], [1.0, 5.0]]))
    np.testing.assert_array_equal(std, [1.0, 1.0])  # a constant feature is only centred


def test_speaker_standardisation_removes_unseen_speakers_offsets(base_params, tmp_path, caplog) -> None:
    """Strong per-speaker offsets and scales: global statistics cannot place the test
    speakers; each speaker's own statistics can (test speakers included, labels unused)."""
    feats = write_store(tmp_path / "features", speaker_shift=6.0)
    uar = {}
    for mode in ("global", "speaker"):
        params = dataclasses.replace(base_params, models={mode: linear("logreg", C=(0.1, 1.0), standardise=mode)})
        _, model_dir, _ = train(params, mode, feats, tmp_path)
        metrics, _, y_pred = evaluate_model(model_dir, feats, "test")
        uar[mode] = metrics["uar"]
        if mode == "speaker":
            store = FeatureStore(feats / "egemaps" / "cross_corpus" / "f1", "test")
            model, _ = load_linear(model_dir)
            manual = model.predict(speaker_standardise(store.stack(),
                                                       [f"iemocap/{r.speaker}" for r in store.index]))
            np.testing.assert_array_equal(y_pred, manual)
    assert uar["speaker"] > 0.8 and uar["speaker"] > uar["global"] + 0.4, uar


def test_rank_gauss_gives_every_speaker_the_same_distribution() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, size=(8, 3))
    a[0, 0] = 1e6  # one outlier clip
    b = rng.lognormal(3, 2, size=(8, 3))  # another speaker: other location, scale and shape
    x, speakers = np.concatenate([a, b]), ["a"] * 8 + ["b"] * 8
    r = speaker_standardise(x, speakers, "speaker_rank")
    quantiles = np.sort(r[:8, 1])
    for rows in (slice(0, 8), slice(8, 16)):
        for j in range(3):  # per speaker and feature: the same 8 normal quantiles, in the values' order
            np.testing.assert_allclose(np.sort(r[rows, j]), quantiles, atol=1e-12)
            np.testing.assert_array_equal(np.argsort(r[rows, j]), np.argsort(x[rows, j]))
    np.testing.assert_allclose(quantiles, -quantiles[::-1], atol=1e-12)  # symmetric around 0
    # the outlier only takes the top rank: the other clips keep their spread (z-scores squeeze them to ~0)
    assert np.ptp(r[1:8, 0]) > 2.0 and np.ptp(speaker_standardise(x, speakers)[1:8, 0]) < 0.01
    np.testing.assert_array_equal(rank_gauss(np.array([[2.0, 1.0], [2.0, 3.0]]))[:, 0], [0.0, 0.0])  # ties
    np.testing.assert_array_equal(speaker_standardise(x[:1], ["a"], "speaker_rank"), [[0.0, 0.0, 0.0]])


def test_speaker_rank_standardisation_trains_and_predicts(base_params, tmp_path) -> None:
    feats = write_store(tmp_path / "features", speaker_shift=6.0)
    params = dataclasses.replace(base_params, models={"rank": linear("logreg", C=(0.1, 1.0),
                                                                     standardise="speaker_rank")})
    _, model_dir, _ = train(params, "rank", feats, tmp_path)
    metrics, _, y_pred = evaluate_model(model_dir, feats, "test")
    assert metrics["uar"] > 0.8, metrics
    store = FeatureStore(feats / "egemaps" / "cross_corpus" / "f1", "test")
    model, meta = load_linear(model_dir)
    assert meta["standardise"] == "speaker_rank"
    manual = model.predict(speaker_standardise(store.stack(), [f"iemocap/{r.speaker}" for r in store.index],
                                               "speaker_rank"))
    np.testing.assert_array_equal(y_pred, manual)
    assert "speaker_rank" in ClassicalFitted.load(model_dir).file_caveat()


# --------------------------------------------------------------------------- self-training
def test_pseudo_rows_take_an_equal_quota_of_the_most_confident_per_class() -> None:
    d = np.array([[5.0, 0, 0], [4.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 1.0, 0], [9.0, 0, 0], [1.0, 0, 2.5]])
    rows, labels = _pseudo_rows(d, fraction=6 / 7)  # quota int(6/7 * 7 / 3) = 2 per class
    assert rows.tolist() == [5, 0, 3, 4, 6] and labels.tolist() == [0, 0, 1, 1, 2]
    rows, labels = _pseudo_rows(d, fraction=0.1)  # quota 0: nothing
    assert rows.size == 0 and labels.size == 0


def test_self_training_adapts_to_a_shifted_target(base_params, tmp_path) -> None:
    """The target clips are shifted towards class 0 (angry): the source fit gives it most of them;
    pseudo-labeled adapt clips, an equal quota per class, move the boundaries back."""
    shift = np.zeros(12)
    shift[[0, 1]] = 1.5
    shift[[2, 3, 4, 5, 6, 7]] = -0.5
    feats = write_store(tmp_path / "features", target_shift=shift, seed=4)
    st = SelfTrainParams(rounds=2, fraction=0.5)
    models = {"plain": linear("logreg", C=(0.1, 1.0)), "st": linear("logreg", C=(0.1, 1.0), self_train=st)}
    params = dataclasses.replace(base_params, models=models)
    uar, shares = {}, {}
    for name in models:
        result, model_dir, live_dir = train(params, name, feats, tmp_path)
        metrics, _, y_pred = evaluate_model(model_dir, feats, "test")
        uar[name], shares[name] = metrics["uar"], np.bincount(y_pred, minlength=4) / len(y_pred)
    assert shares["plain"][0] > 0.6 and shares["st"][0] < 0.45 and uar["st"] > uar["plain"] + 0.2, (uar, shares)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert [r["round"] for r in meta["self_train"]] == [1, 2] and "pseudo-labeled" in meta["refit"]
    for r in meta["self_train"]:  # quota int(0.5 * 48 / 4) = 6 per class at most
        assert max(r["pseudo_labels"].values()) <= 6 and sum(r["pseudo_labels"].values()) >= 12
    assert meta["val"]["uar"] == meta["self_train"][-1]["val_uar"]
    live = json.loads((live_dir / "metrics.json").read_text())
    assert live["val"] == meta["val"] and set(live["val_uar_by_C"]) == {"0.1", "1"}
    # the same bytes again (deterministic), and a study with no adapt split refuses it
    _, again, _ = train(params, "st", feats, tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = {"study": "multi_corpus", "arch": "classical", "objective": "ce", "input": "egemaps", "epochs": 1,
             "batch_size": 1, "optim": {}, "classical": {"classifier": "logreg", "C": [1], "standardise": "speaker",
                                                         "self_train": {"rounds": 1}}}
    with pytest.raises(ParamsError, match=r"classical.self_train\) need unlabeled target data"):
        parse_params({**raw, "models": {**raw["models"], "st": entry}, "fusions": {}})
    with pytest.raises(ParamsError, match="fraction must be in"):
        parse_params({**raw, "models": {**raw["models"], "st": {**entry, "study": "cross_corpus", "classical": {
            **entry["classical"], "self_train": {"fraction": 0}}}}, "fusions": {}})


# --------------------------------------------------------------------------- checkpoint
@pytest.mark.parametrize("classifier", ["logreg", "svm"])
def test_safetensors_round_trip_predicts_exactly_like_sklearn(base_params, tmp_path, classifier) -> None:
    feats = write_store(tmp_path / "features", speaker_shift=1.0)
    params = dataclasses.replace(base_params, models={"lin": linear(classifier, C=(0.05,))})
    _, model_dir, _ = train(params, "lin", feats, tmp_path)
    model, meta = load_linear(model_dir)
    x_tr, y_tr = _arrays(feats, "train")
    x_te, _ = _arrays(feats, "test")
    mean, std = fit_stats(x_tr)
    if classifier == "svm":
        clf = LinearSVC(C=0.05, class_weight="balanced", max_iter=10000, random_state=3, dual="auto")
    else:
        clf = LogisticRegression(C=0.05, class_weight="balanced", max_iter=10000, random_state=3)
    clf.fit(standardise(x_tr, mean, std), y_tr)
    xs = model.prepare(x_te)
    np.testing.assert_array_equal(xs, standardise(x_te, mean, std))
    np.testing.assert_array_equal(model.predict(xs), clf.predict(xs))
    if classifier == "svm":
        np.testing.assert_allclose(model.score(xs), clf.decision_function(xs), rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_allclose(model.score(xs), clf.predict_proba(xs), rtol=1e-10, atol=1e-12)
    # a tampered weight file is refused
    (model_dir / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:-8] + bytes(8))
    with pytest.raises(ValueError, match="sha256"):
        load_linear(model_dir)


def test_two_class_fit_expands_to_all_labels() -> None:
    """A train split with two of four classes: one sklearn decision row becomes full W/b."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = np.where(x[:, 0] + 0.3 * x[:, 1] > 0, 3, 1)
    clf = LogisticRegression(random_state=0).fit(x, y)
    W, b = _weights(clf, 4)
    from ser.models.linear import LinearModel
    model = LinearModel(W, b, np.zeros(5), np.ones(5), "global", "softmax")
    np.testing.assert_array_equal(model.predict(x), clf.predict(x))
    probs = model.score(x)
    np.testing.assert_allclose(probs[:, [1, 3]], clf.predict_proba(x), rtol=1e-10, atol=1e-12)
    assert probs[:, [0, 2]].max() == 0.0


def _rbf_store(tmp_path: Path) -> Path:
    """Classes that no linear rule separates: class k lies on a ring of radius 1.5 (k+1) in features 0-1
    (feature 2: noise)."""
    rng = np.random.default_rng(5)
    out = tmp_path / "features" / "egemaps" / "cross_corpus"
    speakers = {"train": ["s1", "s2", "s3", "s4"], "val": ["s5", "s6"], "test": ["s7", "s8"]}
    splits = {}
    for split, spks in speakers.items():
        arrays, rows = [], []
        for spk in spks:
            for i in range(48):
                k = i % 4
                angle = rng.uniform(0, 2 * np.pi)
                x = 0.15 * rng.normal(size=3)
                x[:2] += 1.5 * (k + 1) * np.array([np.cos(angle), np.sin(angle)])
                arrays.append(x.astype(np.float32))
                rows.append(IndexRow(f"{split}_{spk}_{i}", "iemocap", spk, LABELS[k], 0, len(rows), SR))
        splits[split] = (np.stack(arrays), rows)
    stores.write_store(out, splits, {"kind": "egemaps", "sample_rate": SR, "labels": LABELS, "target": None,
                       "features": {k: getattr(FeatureParams(), k) for k in features._WAVE_KEYS},
                       "feature_set": "eGeMAPSv02", "feature_names": [f"f{j}" for j in range(3)], "n_features": 3,
                       "opensmile_version": "test"})
    return tmp_path / "features"


def test_rbf_svm_learns_what_a_linear_head_cannot_and_predicts_like_sklearn(base_params, tmp_path) -> None:
    from sklearn.svm import SVC

    feats = _rbf_store(tmp_path)
    params = dataclasses.replace(base_params, models={
        "rbf": linear("rbf_svm", C=(0.1, 10.0), gamma=(0.05, 0.5, 2.0)), "lin": linear("logreg", C=(0.1, 10.0))})
    result, model_dir, live_dir = train(params, "rbf", feats, tmp_path)
    assert set(result["val_uar_by_C"]) == {f"{c:g}/{g:g}" for c in (0.1, 10.0) for g in (0.05, 0.5, 2.0)}
    best = max(result["val_uar_by_C"].values())
    assert result["val"]["uar"] == best and result["gamma"] in (0.05, 0.5, 2.0)
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["format"] == "ser-rbf/1" and (meta["C"], meta["gamma"]) == (result["C"], result["gamma"])
    rbf_uar = evaluate_model(model_dir, feats, "test")[0]["uar"]
    _, lin_dir, _ = train(params, "lin", feats, tmp_path)
    lin_uar = evaluate_model(lin_dir, feats, "test")[0]["uar"]
    assert rbf_uar > 0.85 and rbf_uar > lin_uar + 0.3, (rbf_uar, lin_uar)

    # the numpy model is sklearn's SVC: decision values and predictions, after the safetensors round trip
    model, _ = load_linear(model_dir)
    x_tr, y_tr = _arrays(feats, "train")
    x_te, _ = _arrays(feats, "test")
    mean, std = fit_stats(x_tr)
    clf = SVC(C=result["C"], gamma=result["gamma"], class_weight="balanced", max_iter=10000, random_state=3,
              break_ties=True).fit(standardise(x_tr, mean, std), y_tr)
    xs = model.prepare(x_te)
    np.testing.assert_allclose(model.score(xs), clf.decision_function(xs), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(model.predict(xs), clf.predict(xs))
    assert isinstance(load_fitted(model_dir), ClassicalFitted)
    _, again, _ = train(params, "rbf", feats, tmp_path / "again")  # deterministic bytes
    assert (again / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_temperature_is_the_log_loss_minimiser() -> None:
    from scipy.special import softmax

    from ser.models.linear import fit_temperature
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(4000, 4))
    for true_t in (0.5, 2.0):  # labels drawn from softmax(z / T): the fit finds T back
        y = np.array([rng.choice(4, p=p) for p in softmax(z / true_t, axis=1)])
        assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.1)
    # a class absent from training (decision -1e30) stays at probability 0 and does not break the fit
    z[:, 3] = -1e30
    y = np.array([rng.choice(3, p=p) for p in softmax(z[:, :3], axis=1)])
    assert fit_temperature(z, y) == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("classifier", ["svm", "rbf_svm"])
def test_calibrated_svm_scores_with_probabilities_and_predicts_the_same(base_params, tmp_path, classifier) -> None:
    from scipy.special import log_softmax

    feats = _rbf_store(tmp_path) if classifier == "rbf_svm" else write_store(tmp_path / "features")
    models = {"plain": linear(classifier, C=(0.1, 10.0)), "cal": linear(classifier, C=(0.1, 10.0), calibrate="temperature")}
    assert (models["plain"].scores, models["cal"].scores) == ("decision", "softmax")
    params = dataclasses.replace(base_params, models=models)
    _, plain_dir, _ = train(params, "plain", feats, tmp_path)
    result, cal_dir, _ = train(params, "cal", feats, tmp_path)
    meta = json.loads((cal_dir / "meta.json").read_text())
    assert meta["scores"] == "softmax" and meta["temperature"] > 0 and "temperature" not in json.loads(
        (plain_dir / "meta.json").read_text())
    assert (cal_dir / "model.safetensors").read_bytes() == (plain_dir / "model.safetensors").read_bytes()
    plain, _ = load_linear(plain_dir)
    cal, _ = load_linear(cal_dir)
    assert cal.temperature == meta["temperature"]
    x_te, _ = _arrays(feats, "test")
    xs = cal.prepare(x_te)
    probs = cal.score(xs)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.log(probs), log_softmax(plain.score(xs) / cal.temperature, axis=1), atol=1e-9)
    np.testing.assert_array_equal(cal.predict(xs), plain.predict(xs))
    assert evaluate_model(cal_dir, feats, "test")[0] == evaluate_model(plain_dir, feats, "test")[0]
    # T minimises the validation log-loss
    x_va, y_va = _arrays(feats, "val")
    d_va = plain.decision(plain.prepare(x_va))

    def loss(t: float) -> float:
        return -log_softmax(d_va / t, axis=1)[np.arange(len(y_va)), y_va].mean()

    assert loss(cal.temperature) <= min(loss(0.8 * cal.temperature), loss(1.25 * cal.temperature)) + 1e-9
    assert loss(cal.temperature) < loss(1.0)
    # a calibrated SVM is a fusion member; an uncalibrated one is not
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = {"study": "cross_corpus", "arch": "classical", "objective": "ce", "input": "egemaps", "epochs": 1,
             "batch_size": 1, "optim": {},
             "classical": {"classifier": classifier, "C": [1.0], "standardise": "global"}}
    cal_entry = {**entry, "classical": {**entry["classical"], "calibrate": "temperature"}}
    logreg = {**entry, "classical": {**entry["classical"], "classifier": "logreg"}}
    fused = parse_params({**raw, "models": {"a": cal_entry, "b": logreg}, "fusions": {"ab": {"members": ["a", "b"]}}})
    assert fused.models["a"].scores == "softmax"
    with pytest.raises(ParamsError, match="decision"):
        parse_params({**raw, "models": {"a": entry, "b": logreg}, "fusions": {"ab": {"members": ["a", "b"]}}})
    # a damaged temperature is refused at load
    (cal_dir / "meta.json").write_text(json.dumps({**meta, "temperature": -1.0}))
    with pytest.raises(CheckpointError, match="temperature must be a number > 0"):
        load_linear(cal_dir)


def test_rbf_svm_with_classes_missing_from_train_never_predicts_them() -> None:
    from sklearn.svm import SVC

    from ser.models.linear import KernelModel, LinearModel, _model_of
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    for classes in ((1, 3), (0, 2, 3)):
        y = np.asarray(classes)[np.argmax(x[:, :len(classes)], axis=1)]
        clf = SVC(gamma=0.7, break_ties=True).fit(x, y)
        proto = LinearModel(np.zeros(0), np.zeros(0), np.zeros(3), np.ones(3), "global", "decision")
        model = _model_of(clf, proto, ClassicalParams("rbf_svm", (1.0,), "global"), 4, 0.7)
        assert isinstance(model, KernelModel)
        np.testing.assert_array_equal(model.predict(x), clf.predict(x))
        absent = [k for k in range(4) if k not in classes]
        assert (model.score(x)[:, absent] < -1e29).all()
        if len(classes) > 2:  # sklearn's two-class decision_function is one column
            np.testing.assert_allclose(model.score(x)[:, list(classes)], clf.decision_function(x), atol=1e-9)


# --------------------------------------------------------------------------- params
def test_params_reject_what_does_not_apply_to_linear(base_params) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    entry = {"study": "cross_corpus", "arch": "classical", "objective": "ce", "input": "egemaps", "epochs": 1,
             "batch_size": 1, "optim": {}, "classical": {"classifier": "svm", "C": [0.01, 1], "standardise": "speaker"}}
    parsed = parse_params({**raw, "models": {"egemaps_svm": entry}, "fusions": {}})
    assert parsed.models["egemaps_svm"].classical.C == (0.01, 1.0)
    bad = {
        "does not apply to arch 'classical'": {"objective": "dann"},
        "needs a 'classical:' section": {"classical": None},
        "go with arch 'classical'": {"arch": "crnn", "crnn": {}},
        "must be a non-empty list": {"classical": {**entry["classical"], "C": [0.0]}},
        "is not one of": {"classical": {**entry["classical"], "standardise": "corpus"}},
        "for classifier rbf_svm only": {"classical": {**entry["classical"], "gamma": [0.1]}},
        "'linear' is now `arch: classical`": {"arch": "linear"},
    }
    for message, change in bad.items():
        with pytest.raises(ParamsError, match=message):
            parse_params({**raw, "models": {"egemaps_svm": {**entry, **change}}, "fusions": {}})


# --------------------------------------------------------------------------- predict
def test_predict_scores_a_file_like_the_store(base_params, tone_corpus, tmp_path, caplog) -> None:
    from ser.infer.predict import Predictor

    params = load_params(tone_corpus["params"])
    params = dataclasses.replace(params, seed=3, models={"lin": linear("logreg", C=(0.1, 1.0, 10.0)),
                                                         "spk": linear("svm", C=(1.0,), standardise="speaker")})
    _, model_dir, _ = train(params, "lin", tone_corpus["features"], tmp_path)
    wav = write_wav(tmp_path / "new.wav", tone(0.6, PITCH["happy"] * 1.01, 0.15, seed=123))
    predictor = Predictor(model_dir)
    assert predictor.window_s is None and isinstance(predictor.fitted, ClassicalFitted)
    (result,) = predictor.predict_files([wav])
    assert result.ok and len(result.windows) == 1 and abs(sum(result.probabilities) - 1) < 1e-9
    # exactly the store's features of that file, standardised with the train statistics
    meta = json.loads((model_dir / "meta.json").read_text())
    fp = features.feature_params_from_meta(meta["features"])
    wave, _ = features._decode(str(wav), fp)
    model, _ = load_linear(model_dir)
    expected = model.score(model.prepare(features.functionals_for_inference(wave, meta["features"])[None]))[0]
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-6, atol=1e-9)
    assert predictor.labels[int(np.argmax(result.probabilities))] == "happy"
    with pytest.raises(ValueError, match="do not apply"):
        Predictor(model_dir, window_s=1.0)

    _, spk_dir, _ = train(params, "spk", tone_corpus["features"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="ser.infer.predict"):
        (result,) = Predictor(spk_dir).predict_files([wav])
    assert result.ok and "global train statistics" in caplog.text

    # the RBF SVM the same way: its decision values for the file, as the numpy model computes them
    params = dataclasses.replace(params, models={"rbf": linear("rbf_svm", C=(1.0, 10.0), gamma=(0.01, 0.1))})
    _, rbf_dir, _ = train(params, "rbf", tone_corpus["features"], tmp_path)
    (result,) = Predictor(rbf_dir).predict_files([wav])
    model, _ = load_linear(rbf_dir)
    expected = model.score(model.prepare(features.functionals_for_inference(wave, meta["features"])[None]))[0]
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-9, atol=1e-9)
    assert result.ok and predictor.labels[int(np.argmax(result.probabilities))] == "happy"
