"""The training loop: both objectives, class balance, SpecAugment, early stopping,
resume == uninterrupted, fingerprints (params and code), reproducible artifacts, fail-fast params.

Tiny stores (16 mel bands x 20 frames; 0.25-0.5 s waveforms) in tmp_path, a
(4, 8, 8)-channel CRNN and the random wav2vec2 encoder preset (random:wav2vec2-tiny).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ser.config import (CrnnParams, EncoderParams, ModelParams, OptimParams, ParamsError, SpecAugmentParams,
                        TrainParams, load_params, parse_params)
from ser.eval.evaluate import evaluate_model
from ser.features.stores import IndexRow, StoreError, fold_root, write_meta, write_store
from ser.models.checkpoint import load_checkpoint
from ser.stats import read_predictions_csv
from ser.train.learners import train_model
from ser.train.loop import TrainingInterrupted
from ser.train.objectives import class_weights
import ser.train.loop

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]
SPLITS = {"train": [("iemocap", 32)], "val": [("iemocap", 12)], "adapt": [("ravdess", 16)],
          "test": [("iemocap", 12), ("ravdess", 12)]}
CELL = "f1-s3"  # the run folder of fold 1, seed 3 (base_params)


def _rows(split, n_mels=None):
    """(corpus, domain, label index) per utterance of a split; labels cycle through the classes."""
    out = []
    for corpus, n in SPLITS[split]:
        out += [(corpus, int(corpus == "ravdess"), i % len(LABELS)) for i in range(n)]
    return out


def write_mels(root: Path, adapt_emotion: str | None = None, train_emotion: str | None = None) -> Path:
    """A learnable mel store (one fold): each class lights up its own band of mel bins."""
    rng = np.random.default_rng(0)
    splits = {}
    for split in SPLITS:
        rows, arrays = [], []
        for i, (corpus, domain, k) in enumerate(_rows(split)):
            x = rng.normal(size=(16, 20)).astype(np.float32) + domain * 0.5
            x[4 * k:4 * k + 4] += 3.0
            arrays.append(x)
            emotion = LABELS[k]
            if split == "adapt" and adapt_emotion:
                emotion = adapt_emotion
            if split == "train" and train_emotion and i == 0:
                emotion = train_emotion
            rows.append(IndexRow(f"{split}{i}", corpus, f"spk{i % 3}", emotion, domain, i, 20))
        splits[split] = (np.stack(arrays), rows)
    return write_store(root / "mels" / "cross_corpus", splits,
                       {"kind": "mels", "sample_rate": 16000, "labels": LABELS, "target": "ravdess",
                        "features": {"n_mels": 16, "frames": 20}})


def write_waves(root: Path) -> Path:
    """Waveforms of 0.25-0.5 s (one fold): a class-dependent tone in noise."""
    rng = np.random.default_rng(1)
    splits = {}
    for split in SPLITS:
        rows, chunks, offset = [], [], 0
        for i, (corpus, domain, k) in enumerate(_rows(split)):
            n = int(rng.integers(4000, 8000))
            t = np.arange(n) / 16000
            chunks.append((0.3 * np.sin(2 * np.pi * 200 * (k + 1) * t) + 0.05 * rng.normal(size=n)).astype(np.float32))
            rows.append(IndexRow(f"{split}{i}", corpus, f"spk{i % 3}", LABELS[k], domain, offset, n))
            offset += n
        splits[split] = (np.concatenate(chunks), rows)
    return write_store(root / "waves" / "cross_corpus", splits,
                       {"kind": "waves", "sample_rate": 16000, "labels": LABELS, "target": "ravdess",
                        "features": {"sample_rate": 16000}})


CRNN = CrnnParams(channels=(4, 8, 8), lstm_hidden=8, fc_hidden=8, dropout=0.2, domain_hidden=8)
MODELS = {
    "crnn_ce": ModelParams(study="cross_corpus", arch="crnn", objective="ce", input="mels", epochs=2,
                           batch_size=8, optim=OptimParams(lr=1e-2), crnn=CRNN),
    "crnn_dann": ModelParams(study="cross_corpus", arch="crnn", objective="dann", input="mels", epochs=2,
                             batch_size=8, optim=OptimParams(lr=1e-2), crnn=CRNN),
    "w2v_dann": ModelParams(study="cross_corpus", arch="encoder", objective="dann", input="waves", epochs=2,
                            batch_size=8,
                            optim=OptimParams(optimizer="adamw", lr=1e-3, lr_encoder=5e-4, weight_decay=0.01,
                                              grad_clip=1.0, scheduler="plateau", plateau_patience=0),
                            encoder=EncoderParams(backbone="random:wav2vec2-tiny", head_hidden=16, domain_hidden=8,
                                                  max_seconds=0.4)),
    # a frozen HuBERT probe on cached embeddings, adapted with DANN (HuBERT-tiny sees zero padding)
    "probe_dann": ModelParams(study="cross_corpus", arch="encoder", objective="dann", input="embeddings", epochs=3,
                              batch_size=8, optim=OptimParams(optimizer="adamw", lr=1e-2),
                              encoder=EncoderParams(backbone="random:hubert-tiny", regime="frozen", layers="weighted",
                                                    projection=8, head_hidden=8, domain_hidden=8)),
}


@pytest.fixture(scope="module")
def base_params():
    params = load_params(ROOT / "params.yaml")
    # One run per model (fold 1, seed 3): the run the tests train is the whole folds x seeds matrix.
    return dataclasses.replace(params, models=MODELS, fusions={}, lambda_domain=0.5, max_alpha=0.7, folds=(1,), seeds=(3,),
                               fold=1, seed=3,
                               train=TrainParams(device="cpu", mixed_precision="auto",
                                                 bucket_by_length=True, deterministic=True))


@pytest.fixture()
def features(tmp_path):
    write_mels(tmp_path / "features")
    write_waves(tmp_path / "features")
    return tmp_path / "features"


def run(params, name, features, tmp_path, tag="run", **kw):
    """Train one run into the layout of the train@<model>-<fold>-<seed> stages: <dir>/<name>/f<fold>-s<seed>."""
    cell = f"f{params.fold}-s{params.seed}"
    dirs = {k: tmp_path / tag / k / name / cell for k in ("models", "checkpoints", "dvclive")}
    result = train_model(params, name, features, dirs["models"], dirs["checkpoints"], dirs["dvclive"], **kw)
    return result, dirs


def stop_after(epoch):
    def callback(done, logs):
        if done == epoch:
            raise TrainingInterrupted(f"simulated kill after epoch {done}")
    return callback


def test_cross_entropy_run_writes_checkpoint_live_metrics_and_evaluates(base_params, features, tmp_path):
    params = dataclasses.replace(base_params, models={"crnn_ce": dataclasses.replace(MODELS["crnn_ce"], epochs=4)})
    result, d = run(params, "crnn_ce", features, tmp_path)
    assert result["resumed_from_epoch"] == 0 and len(result["history"]) == 4
    assert 1 <= result["best_epoch"] <= 4
    assert not d["checkpoints"].exists(), "resume state is removed after a successful run"

    model, meta = load_checkpoint(d["models"])
    assert meta["labels"] == LABELS and meta["study"] == "cross_corpus" and meta["model"] == "crnn_ce"
    assert meta["features"]["kind"] == "mels" and meta["best_epoch"] == result["best_epoch"]
    assert meta["fold"] == 1 and meta["seed"] == 3 and d["models"].name == CELL
    assert meta["val"]["uar"] == max(h["val/uar"] for h in result["history"])
    assert meta["parameters"]["total"] == meta["parameters"]["trainable"] == sum(p.numel() for p in model.parameters())
    assert "train_seconds" not in meta and meta["epochs_run"] == 4 and meta["stopped_early"] is False
    assert result["epochs_run"] == 4 and result["stopped_early"] is False and result["train_seconds"] > 0
    assert model.domain_head is None

    live = json.loads((d["dvclive"] / "metrics.json").read_text())
    assert live["step"] == 3 and {"loss", "ce"} <= set(live["train"]) and {"uar", "accuracy", "loss"} <= set(live["val"])
    assert not (d["dvclive"] / "dvc.yaml").exists(), "dvc.yaml declares the live outputs; dvclive must not"
    uar_tsv = (d["dvclive"] / "plots" / "metrics" / "val" / "uar.tsv").read_text().splitlines()
    assert uar_tsv[0].split("\t") == ["step", "uar"] and len(uar_tsv) == 5
    # The class bands are easy: four epochs must beat chance (0.25) on validation by far.
    assert result["val"]["uar"] > 0.6

    metrics, y_true, y_pred = evaluate_model(d["models"], features, "test", "iemocap", device="cpu")
    assert metrics["n"] == 12 and len(y_pred) == 12 and y_true.tolist() == [i % 4 for i in range(12)]
    store = features / "mels" / "cross_corpus"
    changed = {**json.loads((store / "meta.json").read_text()), "features": {"n_mels": 16, "frames": 40}}
    write_meta(store, changed)  # features recomputed with other params after training
    with pytest.raises(ValueError, match="differs from the feature meta"):
        evaluate_model(d["models"], features, "test", "iemocap", device="cpu")


def test_evaluate_scopes_and_summary(base_params, features, tmp_path):
    from ser.eval.evaluate import evaluate_model_scopes
    from ser.eval.summary import prune_stale_outputs, write_summary

    params = dataclasses.replace(base_params, models={k: dataclasses.replace(MODELS[k], epochs=1)
                                                      for k in ("crnn_ce", "crnn_dann")})
    for name in params.models:
        run(params, name, features, tmp_path)
    models_dir, metrics, plots = tmp_path / "run" / "models", tmp_path / "metrics" / "models", tmp_path / "plots"
    cell = CELL
    for name in params.models:
        records = evaluate_model_scopes(params, name, models_dir / name / cell, features, metrics / name / cell,
                                        plots / name / cell)
        assert set(records) == {"in_domain", "target"}
        for scope, rec in records.items():
            assert rec["n"] == 12 and rec["test_set"].endswith("[iemocap]" if scope == "in_domain" else "[ravdess]")
            assert rec["corpus"] == ("iemocap" if scope == "in_domain" else "ravdess") and rec["scope"] == scope
            assert (rec["fold"], rec["seed"]) == (1, 3), "fold and seed come from the model's meta.json"
            assert abs(sum(rec["prediction_share"].values()) - 1) < 1e-9 and rec["top_class_share"] >= 0.25
            assert (metrics / name / cell / f"{scope}.json").is_file()
            assert (plots / name / cell / f"{scope}.png").is_file()
            assert len((plots / name / cell / f"{scope}.csv").read_text().splitlines()) == 13
    text = write_summary(params, metrics, models_dir, tmp_path / "summary.md", plots_dir=plots,
                         comparisons_out=tmp_path / "comparisons.json", aggregate_out=tmp_path / "aggregate.json")
    assert (tmp_path / "summary.md").read_text() == text
    # The two models share the test clips of each test set: one paired comparison per test set.
    (cmp_in, cmp_target) = json.loads((tmp_path / "comparisons.json").read_text())["comparisons"]
    assert {cmp_in["corpus"], cmp_target["corpus"]} == {"iemocap", "ravdess"}
    assert (cmp_in["a"], cmp_in["b"], cmp_in["n_clips"]) == ("crnn_ce", "crnn_dann", 12)  # one run: 12 rows
    # 3 test speakers: too few to resample speakers, so clips are resampled and the row says so
    assert 0 <= cmp_in["uar_p_holm"] <= 1 and cmp_in["cluster"] is None and cmp_in["test_speakers"] == 3
    assert "## Paired comparisons" in text and "| crnn_ce | crnn_dann |" in text
    with open(plots / "crnn_ce" / cell / "target.csv") as fh:
        assert fh.readline().strip() == ("utt_id,speaker,actual,predicted,"
                                         "score_angry,score_happy,score_neutral,score_sad")
    # The scores are the model's softmax; the predicted class is their argmax.
    target = read_predictions_csv(plots / "crnn_ce" / cell / "target.csv", LABELS)
    assert np.allclose(target.scores.sum(axis=1), 1.0) and (target.scores.argmax(axis=1) == target.y_pred).all()
    # One row per (model, test set), numbers in percent without a % sign; a single run has no ± std.
    rows = [line for line in text.splitlines() if line.startswith("| crnn") and "fold(s) x" in line]
    assert [row.split(" | ")[:3] for row in rows] == [
        ["| crnn_ce", "cross_corpus/test [iemocap]", "1 fold(s) x 1 seed(s)"],
        ["| crnn_ce", "cross_corpus/test [ravdess]", "1 fold(s) x 1 seed(s)"],
        ["| crnn_dann", "cross_corpus/test [iemocap]", "1 fold(s) x 1 seed(s)"],
        ["| crnn_dann", "cross_corpus/test [ravdess]", "1 fold(s) x 1 seed(s)"]]
    # the test set's " [corpus]" and the 2 pooled CIs (UAR, WA); no %, no ± with one run
    assert all(row.count(" [") == 3 and "%" not in row and "±" not in row for row in rows)
    in_domain = json.loads((metrics / "crnn_ce" / cell / "in_domain.json").read_text())
    assert (in_domain["fold"], in_domain["seed"]) == (1, 3)
    cells = rows[0].split(" | ")
    uar_cell, flag = cells[3].partition(" (")[::2]
    assert uar_cell == f"{100 * in_domain['uar']:.1f}" and cells[4] == f"{100 * in_domain['accuracy']:.1f}"
    # a run that gave every clip one class is named in the UAR cell
    assert (flag == f"single class in {CELL})") == bool(in_domain["single_class"]), cells[3]
    aggregate = json.loads((tmp_path / "aggregate.json").read_text())
    agg = aggregate["models"]["crnn_ce"]["in_domain"]
    assert agg["mean_over_runs"]["uar"] == in_domain["uar"] and agg["std_over_runs"]["uar"] is None
    assert agg["folds"] == [1] and agg["seeds"] == [3] and agg["n_runs"] == 1
    assert agg["pooled"]["uar"] == pytest.approx(in_domain["uar"]), "one run: pooled is that run"
    lo, hi = agg["pooled"]["uar_ci95"]
    assert lo <= agg["pooled"]["uar"] <= hi
    assert cells[7] == f"{100 * agg['pooled']['uar']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert set(aggregate["models"]) == {"crnn_ce", "crnn_dann"}
    assert set(aggregate["models"]["crnn_dann"]) == {"in_domain", "target"}

    # Metrics of another version of a model are refused, never summarised as current.
    meta_path = models_dir / "crnn_ce" / cell / "meta.json"
    meta_path.write_text(meta_path.read_text() + " ")
    with pytest.raises(ValueError, match="another version"):
        write_summary(params, metrics, models_dir, tmp_path / "summary.md", plots_dir=plots)

    # A model removed from params: its per-model outputs go, the others stay;
    # so do run folders of folds or seeds params no longer lists.
    (metrics / "old_model" / cell).mkdir(parents=True)
    (plots / "old_model").mkdir()
    (metrics / "crnn_ce" / "f2-s3").mkdir()
    (plots / "crnn_ce" / "f1-s4").mkdir()
    removed = prune_stale_outputs(params, [metrics, plots])
    assert sorted(str(p.relative_to(tmp_path)) for p in removed) == sorted([
        "metrics/models/old_model", "plots/old_model", "metrics/models/crnn_ce/f2-s3", "plots/crnn_ce/f1-s4"])
    assert (metrics / "crnn_ce" / cell).is_dir() and (plots / "crnn_dann" / cell).is_dir()
    assert not (metrics / "old_model").exists() and not (metrics / "crnn_ce" / "f2-s3").exists()


def test_evaluation_skips_and_says_what_has_no_test_data(base_params, features, tmp_path):
    """A source corpus without test speakers: in-domain is skipped and recorded, the target is evaluated."""
    from ser.eval.evaluate import evaluate_model_scopes
    from ser.features.stores import read_index, write_index

    params = dataclasses.replace(base_params, models={"crnn_ce": dataclasses.replace(MODELS["crnn_ce"], epochs=1)})
    run(params, "crnn_ce", features, tmp_path)
    store_root = fold_root(features, "mels", "cross_corpus", 1)
    # The fold's test index without its iemocap rows (the offsets still point into ../clips.npy).
    write_index(store_root, "test", [r for r in read_index(store_root / "test.csv") if r.corpus != "iemocap"])
    assert {r.corpus for r in read_index(store_root / "test.csv")} == {"ravdess"}
    records = evaluate_model_scopes(params, "crnn_ce", tmp_path / "run" / "models" / "crnn_ce" / CELL, features,
                                    tmp_path / "m", tmp_path / "p")
    assert "no test clips of iemocap" in records["in_domain"]["skipped"]
    assert json.loads((tmp_path / "m" / "in_domain.json").read_text())["skipped"]
    assert records["target"]["n"] == 12 and not (tmp_path / "p" / "in_domain.png").exists()


def test_dann_logs_domain_terms_and_never_reads_target_labels(base_params, features, tmp_path):
    # Adapt-split emotions outside the label set: reading them would raise StoreError.
    write_mels(features, adapt_emotion="calm")
    result, d = run(base_params, "crnn_dann", features, tmp_path)
    first, last = result["history"]
    for logs in (first, last):
        assert logs["train/domain_loss"] > 0 and 0 <= logs["val/domain_accuracy"] <= 1
        assert 0 <= logs["train/domain_acc"] <= 1
    assert 0 < first["train/alpha"] < last["train/alpha"] < 0.7  # GRL schedule rises towards max_alpha
    live = json.loads((d["dvclive"] / "metrics.json").read_text())
    assert {"domain_loss", "alpha", "domain_acc"} <= set(live["train"]) and "domain_accuracy" in live["val"]
    model, meta = load_checkpoint(d["models"])
    assert model.domain_head is not None and meta["lambda_domain"] == 0.5 and meta["max_alpha"] == 0.7


def test_dann_probe_on_cached_embeddings_trains_evaluates_and_reports_layer_weights(base_params, features, tmp_path):
    from ser.models.embeddings import precompute_embeddings
    from ser.eval.evaluate import evaluate_model_scopes
    ep = MODELS["probe_dann"].encoder
    precompute_embeddings(features / "waves" / "cross_corpus", features / "embeddings" / "cross_corpus", [ep],
                          device="cpu", cache_dir=tmp_path / "enc")
    result, d = run(base_params, "probe_dann", features, tmp_path)
    first, last = result["history"][0], result["history"][-1]
    assert first["train/domain_loss"] > 0 and 0 < first["train/alpha"] < last["train/alpha"]
    model, meta = load_checkpoint(d["models"])
    assert type(model).__name__ == "ProbeSER" and meta["features"]["kind"] == "embeddings"
    assert meta["features"]["encoder"]["family"] == "hubert"
    # only the head trained: layer weights, projection, classifier, domain head
    assert {k.split(".")[0] for k in load_file(str(d["models"] / "model.safetensors"))} == {
        "layer_pool", "projection", "classifier", "domain_head"}
    records = evaluate_model_scopes(base_params, "probe_dann", d["models"], features, tmp_path / "m", tmp_path / "p")
    assert set(records) == {"in_domain", "target"} and records["target"]["n"] == 12
    weights = json.loads((tmp_path / "m" / "layer_weights.json").read_text())["layer_weights"]
    assert len(weights) == model.n_states and abs(sum(weights) - 1) < 1e-6
    assert max(weights) - min(weights) > 1e-4  # the weights learned something from the uniform start
    assert (tmp_path / "p" / "layer_weights.png").is_file()


def _assert_same_run(a, da, b, db):
    assert a["history"] == b["history"] and a["best_epoch"] == b["best_epoch"] and a["val"] == b["val"]
    wa, wb = load_file(str(da["models"] / "model.safetensors")), load_file(str(db["models"] / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["epochs_run"] == b["epochs_run"] and a["stopped_early"] == b["stopped_early"]
    assert (da["models"] / "meta.json").read_bytes() == (db["models"] / "meta.json").read_bytes()
    assert (da["dvclive"] / "metrics.json").read_text() == (db["dvclive"] / "metrics.json").read_text()
    for tsv in (da["dvclive"] / "plots").rglob("*.tsv"):
        assert tsv.read_text() == (db["dvclive"] / tsv.relative_to(da["dvclive"])).read_text()


@pytest.mark.parametrize("name", ["crnn_dann", "w2v_dann"])
def test_resumed_run_equals_uninterrupted(base_params, features, tmp_path, name):
    straight, ds = run(base_params, name, features, tmp_path, "straight")

    with pytest.raises(TrainingInterrupted):
        run(base_params, name, features, tmp_path, "killed", on_epoch_end=stop_after(1))
    state_dir = tmp_path / "killed" / "checkpoints" / name / CELL
    assert (state_dir / "state.pt").is_file() and list(state_dir.glob("model-epoch1.safetensors"))
    assert torch.load(state_dir / "state.pt", weights_only=True)["epoch"] == 1
    # `dvc repro` deletes a stage's outputs before re-running it: resuming must not need them.
    shutil.rmtree(tmp_path / "killed" / "models", ignore_errors=True)
    resumed, dr = run(base_params, name, features, tmp_path, "killed")
    assert resumed["resumed_from_epoch"] == 1
    _assert_same_run(straight, ds, resumed, dr)
    assert not state_dir.exists()


def test_changed_fingerprint_starts_fresh(base_params, features, tmp_path, caplog):
    with pytest.raises(TrainingInterrupted):
        run(base_params, "crnn_dann", features, tmp_path, on_epoch_end=stop_after(1))
    stale = tmp_path / "run" / "models" / "crnn_dann" / CELL / "stale.txt"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("from an older run")
    changed = dataclasses.replace(base_params, lambda_domain=0.25)
    with caplog.at_level("INFO", logger="ser.train"):
        result, d = run(changed, "crnn_dann", features, tmp_path)
    assert result["resumed_from_epoch"] == 0 and len(result["history"]) == 2
    assert "fingerprint differs" in caplog.text
    assert not (d["models"] / "stale.txt").exists(), "a fresh run cleans out_dir"
    assert load_checkpoint(d["models"])[1]["lambda_domain"] == 0.25


def test_bad_params_fail_before_training(base_params, features, tmp_path):
    with pytest.raises(KeyError, match=r"unknown model 'nope'.*crnn_ce"):
        run(base_params, "nope", features, tmp_path)

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    with pytest.raises(ParamsError, match="lambda_domain must be >= 0"):
        parse_params({**raw, "lambda_domain": -0.5})

    study = base_params.studies["cross_corpus"]
    reordered = dataclasses.replace(base_params, studies={
        **base_params.studies, "cross_corpus": dataclasses.replace(study, labels=("sad", "angry", "happy", "neutral"))})
    with pytest.raises(ValueError, match=r"meta\.json: labels .* differ from study 'cross_corpus' labels"):
        run(reordered, "crnn_ce", features, tmp_path)

    write_mels(features, train_emotion="calm")  # a label outside the study's label set
    with pytest.raises(StoreError, match=r"train\.csv: emotion 'calm' is not in the label list"):
        run(base_params, "crnn_ce", features, tmp_path)

    write_mels(features)
    bad_arch = dataclasses.replace(base_params, models={"x": dataclasses.replace(MODELS["crnn_ce"], arch="cnn")})
    with pytest.raises(KeyError, match="unknown arch 'cnn'"):
        run(bad_arch, "x", features, tmp_path)
    assert not (tmp_path / "run" / "dvclive").exists(), "nothing was trained or logged"


# --------------------------------------------------------------------------- real-data features
AUGMENTED = dict(balance="sampler", patience=2,
                 spec_augment=SpecAugmentParams(freq_masks=1, freq_width=4, time_masks=1, time_width=5))


def test_resume_with_sampler_spec_augment_and_early_stopping(base_params, features, tmp_path):
    params = dataclasses.replace(base_params, models={
        "crnn_dann": dataclasses.replace(MODELS["crnn_dann"], epochs=8, **AUGMENTED)})
    straight, ds = run(params, "crnn_dann", features, tmp_path, "straight")
    n = straight["epochs_run"]
    assert straight["stopped_early"] and n < 8 and len(straight["history"]) == n
    uars = [h["val/uar"] for h in straight["history"]]
    best = straight["best_epoch"]
    assert n - best == 2 and max(uars[best:]) <= uars[best - 1] == max(uars), "stops 2 epochs after the best"
    meta = json.loads((ds["models"] / "meta.json").read_text())
    assert meta["stopped_early"] is True and meta["epochs_run"] == n and meta["best_epoch"] == best

    # Killed mid-run, and killed right after the stopping epoch's state was saved.
    for kill_at in (1, n):
        tag = f"killed{kill_at}"
        with pytest.raises(TrainingInterrupted):
            run(params, "crnn_dann", features, tmp_path, tag, on_epoch_end=stop_after(kill_at))
        state = torch.load(tmp_path / tag / "checkpoints" / "crnn_dann" / CELL / "state.pt", weights_only=True)
        assert state["patience"] == 2 and state["stopped_early"] == (kill_at == n)
        shutil.rmtree(tmp_path / tag / "models", ignore_errors=True)
        resumed, dr = run(params, "crnn_dann", features, tmp_path, tag)
        assert resumed["resumed_from_epoch"] == kill_at
        _assert_same_run(straight, ds, resumed, dr)


def test_sampler_and_spec_augment_change_training(base_params, features, tmp_path):
    """Each option reaches the loop: one epoch with it differs from one without it."""
    losses = {}
    for tag, extra in [("plain", {}), ("sampler", {"balance": "sampler"}),
                       ("masks", {"spec_augment": AUGMENTED["spec_augment"]})]:
        mp = dataclasses.replace(MODELS["crnn_dann"], epochs=1, **extra)
        result, _ = run(dataclasses.replace(base_params, models={"crnn_dann": mp}), "crnn_dann", features,
                        tmp_path, tag)
        losses[tag] = result["history"][0]["train/loss"]
    assert losses["sampler"] != losses["plain"] and losses["masks"] != losses["plain"]


def test_patience_never_reached_runs_every_epoch(base_params, features, tmp_path):
    mp = dataclasses.replace(MODELS["crnn_ce"], epochs=3, patience=3)
    result, d = run(dataclasses.replace(base_params, models={"crnn_ce": mp}), "crnn_ce", features, tmp_path)
    assert result["epochs_run"] == 3 and not result["stopped_early"]
    assert json.loads((d["models"] / "meta.json").read_text())["stopped_early"] is False


def test_model_dir_identical_across_identical_runs_timing_outside(base_params, features, tmp_path):
    mp = dataclasses.replace(MODELS["crnn_ce"], spec_augment=AUGMENTED["spec_augment"])
    params = dataclasses.replace(base_params, models={"crnn_ce": mp})
    timing = tmp_path / "reports" / "timing" / "crnn_ce.json"
    a, da = run(params, "crnn_ce", features, tmp_path, "a", timing_path=timing)
    b, db = run(params, "crnn_ce", features, tmp_path, "b")
    assert sorted(p.name for p in da["models"].iterdir()) == ["meta.json", "model.safetensors"]
    assert (da["models"] / "meta.json").read_bytes() == (db["models"] / "meta.json").read_bytes()
    assert b"seconds" not in (da["models"] / "meta.json").read_bytes()
    digest = lambda d: hashlib.sha256((d["models"] / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(da) == digest(db)
    record = json.loads(timing.read_text())
    assert record["model"] == "crnn_ce" and record["train_seconds"] == a["train_seconds"] > 0
    assert record["epochs_run"] == 2 and record["resumed_from_epoch"] == 0
    assert not list((tmp_path / "b").rglob("*timing*")), "no timing file unless asked for"


def test_changed_code_starts_fresh(base_params, features, tmp_path, monkeypatch, caplog):
    with pytest.raises(TrainingInterrupted):
        run(base_params, "crnn_ce", features, tmp_path, on_epoch_end=stop_after(1))
    monkeypatch.setattr(ser.train.loop, "code_fingerprint", lambda: "0" * 64)  # ser/train/loop.py edited
    with caplog.at_level("INFO", logger="ser.train"):
        result, _ = run(base_params, "crnn_ce", features, tmp_path)
    assert result["resumed_from_epoch"] == 0 and len(result["history"]) == 2
    assert "fingerprint differs" in caplog.text


def test_thread_count_is_recorded_and_a_resume_never_mixes_two(base_params, features, tmp_path, caplog):
    """Weights depend on torch's thread count: it is in meta.json, and epochs saved under 1 thread are
    not continued under 2 (the run starts fresh and says why)."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(TrainingInterrupted):
            run(base_params, "crnn_ce", features, tmp_path, on_epoch_end=stop_after(1))
        torch.set_num_threads(2)
        with caplog.at_level("INFO", logger="ser.train"):
            result, dirs = run(base_params, "crnn_ce", features, tmp_path)
    finally:
        torch.set_num_threads(previous)
    assert result["resumed_from_epoch"] == 0 and len(result["history"]) == 2
    assert "starting fresh rather than mixing them" in caplog.text and "'threads': 1" in caplog.text
    runtime = json.loads((dirs["models"] / "meta.json").read_text())["runtime"]
    assert runtime["threads"] == 2 and runtime["device"] == "cpu" and runtime["torch"] == str(torch.__version__)


def test_dataloader_workers_do_not_change_the_weights(base_params, features, tmp_path):
    """runtime.num_workers is a speed knob (no stage depends on it): 0 and 2 loader workers train the
    same weights, because every crop and batch is drawn from (seed, epoch, item)."""
    from ser.config import RuntimeParams

    a, da = run(base_params, "crnn_ce", features, tmp_path, "inline")
    b, db = run(dataclasses.replace(base_params, runtime=RuntimeParams(num_workers=2)), "crnn_ce", features,
                tmp_path, "workers")
    _assert_same_run(a, da, b, db)


def test_class_weights_inverse_frequency_mean_one():
    weight = class_weights(np.array([0, 0, 0, 1, 1, 2]), 3)
    # counts 3, 2, 1 -> 1/3, 1/2, 1 -> divided by their mean 11/18
    assert torch.allclose(weight, torch.tensor([6 / 11, 9 / 11, 18 / 11]))
    assert float(weight.mean()) == pytest.approx(1.0)
    absent = class_weights(np.array([0, 0, 0, 1]), 3)  # class 2 has no training example
    assert torch.allclose(absent, torch.tensor([0.5, 1.5, 0.0]))
