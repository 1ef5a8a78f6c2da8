"""Metrics against hand-computed values, bootstrap intervals, writers and the results table."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ser.config import ParamsError, load_params, parse_params
from ser.eval.evaluate import metrics_record, model_scopes, plot_confusion, write_metrics_json
from ser.stats import Predictions, bootstrap_ci, compute_metrics, write_predictions_csv

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_by_hand_with_a_class_never_predicted():
    labels = ["a", "b", "c", "d"]
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    y_pred = [0, 0, 1, 1, 0, 2, 2, 0, 1, 0]  # "d" is never predicted
    m = compute_metrics(y_true, y_pred, labels)
    assert m["accuracy"] == pytest.approx(5 / 10)
    # recalls a 2/3, b 1/2, c 2/4, d 0/1: the never-predicted class counts as 0
    assert m["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 2 / 4, "d": 0.0})
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 4 + 0) / 4)
    # F1: a (P 2/5, R 2/3) = 1/2; b (P 1/3, R 1/2) = 2/5; c (P 1, R 1/2) = 2/3; d = 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 5 + 2 / 3 + 0) / 4)
    # kappa: p_o = 0.5; p_e = (3*5 + 2*3 + 4*2 + 1*0) / 100 = 0.29
    assert m["cohen_kappa"] == pytest.approx((0.5 - 0.29) / (1 - 0.29))
    assert m["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 1, 2, 0], [1, 0, 0, 0]]
    assert m["support"] == {"a": 3, "b": 2, "c": 4, "d": 1}
    assert m["n"] == 10


def test_uar_ignores_a_class_missing_from_y_true():
    labels = ["a", "b", "c"]
    m = compute_metrics([0, 0, 1, 1], [0, 2, 1, 1], labels)  # "c" predicted once, never true
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["per_class_recall"] == {"a": 0.5, "b": 1.0}
    assert m["uar"] == pytest.approx(0.75)  # not (0.5 + 1 + 0) / 3
    assert m["support"]["c"] == 0
    # F1 over the classes present in either: a 2/3, b 1, c 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_metrics_reject_bad_indices():
    with pytest.raises(ValueError, match="class indices"):
        compute_metrics([0, 3], [0, 1], ["a", "b"])


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, 300))
    m = compute_metrics(y_true, y_pred, list("abcd"))
    for name in ("accuracy", "uar"):
        lo, hi = bootstrap_ci(y_true, y_pred, name, n=400, ci=0.95, seed=1)
        assert lo < m[name] < hi
        assert 0.0 <= lo and hi <= 1.0 and hi - lo < 0.2
        assert (lo, hi) == bootstrap_ci(y_true, y_pred, name, n=400, ci=0.95, seed=1)
        assert (lo, hi) != bootstrap_ci(y_true, y_pred, name, n=400, ci=0.95, seed=2)
        narrow = bootstrap_ci(y_true, y_pred, name, n=400, ci=0.5, seed=1)
        assert lo <= narrow[0] <= narrow[1] <= hi
    assert bootstrap_ci([1, 2, 0, 1], [1, 2, 0, 1], "uar", n=50) == (1.0, 1.0)


def test_writers(tmp_path):
    labels = ["angry", "sad"]
    y_true, y_pred = np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 0, 0])
    m = compute_metrics(y_true, y_pred, labels)
    assert m["cohen_kappa"] == pytest.approx(0.0)  # p_o = p_e = 0.4
    record = metrics_record(m, y_true, y_pred, model="baseline", test_set="cross_corpus/test [iemocap]",
                            n_boot=100, ci=0.95, seed=0)
    write_metrics_json(tmp_path / "m" / "baseline.json", record)
    loaded = json.loads((tmp_path / "m" / "baseline.json").read_text())
    assert loaded["model"] == "baseline" and loaded["test_set"] == "cross_corpus/test [iemocap]"
    assert loaded["accuracy"] == pytest.approx(0.4) and loaded["uar"] == pytest.approx(0.5)
    assert loaded["n"] == 5
    assert len(loaded["accuracy_ci95"]) == 2 and len(loaded["uar_ci95"]) == 2
    assert loaded["per_class_recall"] == {"angry": 1.0, "sad": 0.0}
    assert loaded["support"] == {"angry": 2, "sad": 3}
    assert all(isinstance(loaded[k], float) for k in ("accuracy", "uar", "macro_f1"))

    one_class = compute_metrics([1, 1], [1, 1], labels)
    assert np.isnan(one_class["cohen_kappa"])  # undefined with a single class
    write_metrics_json(tmp_path / "m" / "x.json", metrics_record(one_class, [1, 1], [1, 1], model="x",
                                                                 test_set="t", n_boot=10))
    assert json.loads((tmp_path / "m" / "x.json").read_text())["cohen_kappa"] is None  # DVC cannot parse NaN

    write_predictions_csv(tmp_path / "p" / "baseline.csv",
                          Predictions([f"u{i}" for i in range(5)], ["s1"] * 5, y_true, y_pred, labels))
    with (tmp_path / "p" / "baseline.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0].keys() == {"utt_id", "speaker", "actual", "predicted"} and len(rows) == 5
    assert [r["actual"] for r in rows] == ["angry", "angry", "sad", "sad", "sad"]
    assert {r["predicted"] for r in rows} == {"angry"}

    png = tmp_path / "p" / "baseline.png"
    plot_confusion(png, m["confusion"], labels, "baseline on iemocap test: UAR 0.500")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_model_scopes_follow_the_studies():
    params = load_params(ROOT / "params.yaml")
    scopes = {name: [(s.name, s.corpus) for s in model_scopes(params, name)] for name in params.models}
    cross = [("in_domain", "iemocap"), ("target", "ravdess")]
    # a pooled study of several corpora: all of them, then each alone
    pooled = [("in_domain", None), ("crema_d", "crema_d"), ("ravdess", "ravdess"), ("tess", "tess")]
    assert {name: scopes[name] for name in scopes if params.models[name].study != "multi_corpus"
            and params.models[name].study != "corpus_matrix"} == {name: cross for name in scopes
                                                                   if params.models[name].study == "cross_corpus"}
    assert scopes["qlora"] == scopes["finetune"] == pooled
    # a matrix study: one scope per corpus, named after it
    assert scopes["matrix_logreg"] == [("iemocap", "iemocap"), ("ravdess", "ravdess")]
    # multi-source: each source's own test split, then the target
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["studies"]["cross_corpus"].update(corpora=["iemocap", "crema_d", "ravdess"], source=["iemocap", "crema_d"])
    raw["splits"]["cross_corpus"]["crema_d"] = {"protocol": "speaker_folds", "folds": 6, "seed": 0}
    multi = parse_params(raw)
    assert multi.studies["cross_corpus"].source == ("iemocap", "crema_d")
    assert [(s.name, s.corpus) for s in model_scopes(multi, "dann")] == [
        ("iemocap", "iemocap"), ("crema_d", "crema_d"), ("target", "ravdess")]
    assert params.studies["cross_corpus"].source == ("iemocap",)  # one name is a list of one
    # every non-target corpus is trained on: it must be a source
    raw["studies"]["cross_corpus"]["source"] = "iemocap"
    with pytest.raises(ParamsError, match=r"corpora \['crema_d'\] are neither the source nor the target"):
        parse_params(raw)
    assert model_scopes(params, "dann")[1].test_set == "cross_corpus/test [ravdess]"
    assert model_scopes(params, "matrix_logreg")[1].test_set == "corpus_matrix/test [ravdess]"


def test_single_class_predictor_is_flagged():
    labels = ["angry", "happy", "neutral", "sad"]
    y_true, y_pred = np.array([0, 1, 2, 3] * 5), np.zeros(20, dtype=int)
    record = metrics_record(compute_metrics(y_true, y_pred, labels), y_true, y_pred, model="m", test_set="t",
                            n_boot=50)
    assert record["single_class"] == "angry" and record["top_class_share"] == 1.0
    assert record["uar_ci95"] == [0.25, 0.25]  # a point interval: hence the flag
    y_pred[:3] = 1
    record = metrics_record(compute_metrics(y_true, y_pred, labels), y_true, y_pred, model="m", test_set="t",
                            n_boot=50)
    assert record["single_class"] is None and record["top_class_share"] == 0.85
    assert record["prediction_share"] == {"angry": 0.85, "happy": 0.15, "neutral": 0.0, "sad": 0.0}
