"""ser.eval.summary: aggregation over folds and seeds, pooled predictions, paired tests, the corpus matrix,
not-run cells and stale outputs, on hand-made run outputs (no training)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from ser.config import parse_params
from ser.eval.evaluate import metrics_record, model_fingerprint, write_metrics_json
from ser.eval.summary import collect_runs, prune_stale_outputs, write_summary
from ser.runs import mark_not_run, run_name
from ser.stats import Predictions, write_predictions_csv
from ser.stats import compute_metrics

REPO = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]


def params_for(models: dict, folds=(1, 2), seeds=(0,), fusions: dict | None = None):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    base = {"study": "cross_corpus", "arch": "classical", "objective": "ce", "input": "egemaps", "epochs": 1,
            "batch_size": 1, "optim": {}, "classical": {"classifier": "svm", "C": [1.0], "standardise": "global"}}
    raw["models"] = {name: {**base, **extra} for name, extra in models.items()}
    raw.update(folds=list(folds), seeds=list(seeds), fusions=fusions or {})
    params = parse_params(raw)
    return dataclasses.replace(params, evaluation=dataclasses.replace(params.evaluation, bootstrap=200))


def write_run(root: Path, model: str, fold: int, seed: int, scopes: dict[str, tuple], scores: dict | None = None) -> None:
    """One evaluated run: its model meta, a metrics JSON and a predictions CSV per scope
    (scope -> (utt_ids, speakers, y_true, y_pred)), with `scores[scope]` as its score columns if given."""
    run = run_name(fold, seed)
    model_dir = root / "models" / model / run
    model_dir.mkdir(parents=True)
    (model_dir / "meta.json").write_text(json.dumps({"fold": fold, "seed": seed, "parameters": {"total": 10,
                                                                                              "trainable": 4}}))
    for scope, (ids, spk, y_true, y_pred) in scopes.items():
        metrics = compute_metrics(y_true, y_pred, LABELS)
        record = metrics_record(metrics, np.array(y_true), np.array(y_pred), model=model,
                                test_set=f"cross_corpus/test [{scope}]", n_boot=50)
        record.update(scope=scope, corpus={"in_domain": "iemocap", "target": "ravdess"}[scope], fold=fold,
                      seed=seed, model_fingerprint=model_fingerprint(model_dir))
        write_metrics_json(root / "metrics" / model / run / f"{scope}.json", record)
        write_predictions_csv(root / "plots" / model / run / f"{scope}.csv",
                              Predictions(ids, spk, y_true, y_pred, LABELS, (scores or {}).get(scope)))


def clips(prefix: str, n: int, speakers: int) -> tuple[list[str], list[str], list[int]]:
    ids = [f"{prefix}/{i}" for i in range(n)]
    spk = [f"{prefix}_s{i % speakers}" for i in range(n)]
    return ids, spk, [i % 4 for i in range(n)]


def test_aggregate_means_runs_and_pools_disjoint_folds(tmp_path):
    """Two folds testing different clips: mean/std over runs, pooled = the concatenation, each clip once."""
    params = params_for({"good": {}})
    target_ids, target_spk, target_y = clips("rav", 40, 8)
    per_fold = {}
    for fold, wrong in ((1, 2), (2, 6)):  # fold 1: 2 of 20 wrong, fold 2: 6 of 20 wrong
        ids, spk, y = clips(f"iem{fold}", 20, 5)
        pred = [(t + 1) % 4 if i < wrong else t for i, t in enumerate(y)]
        per_fold[fold] = (ids, spk, y, pred)
        write_run(tmp_path, "good", fold, 0, {"in_domain": per_fold[fold],
                                               "target": (target_ids, target_spk, target_y, target_y)})
    write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                  plots_dir=tmp_path / "plots", aggregate_out=tmp_path / "aggregate.json",
                  matrix_out=tmp_path / "matrix.json")
    agg = json.loads((tmp_path / "aggregate.json").read_text())["models"]["good"]
    ind = agg["in_domain"]
    assert ind["n_runs"] == 2 and ind["folds"] == [1, 2] and ind["test_sets"] == "disjoint"
    assert ind["mean_over_runs"]["accuracy"] == pytest.approx((0.9 + 0.7) / 2)
    assert ind["std_over_runs"]["accuracy"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert ind["pooled"]["accuracy"] == pytest.approx(32 / 40) and ind["n_clips"] == 40
    lo, hi = ind["pooled"]["accuracy_ci95"]
    assert lo <= 0.8 <= hi and ind["cluster"] == "speaker"  # 10 test speakers
    # the same RAVDESS clips in both folds: kept apart (80 rows), not concatenated as if distinct
    tgt = agg["target"]
    assert tgt["test_sets"] == "repeated" and tgt["n_clips"] == 80 and tgt["pooled"]["uar"] == 1.0
    text = (tmp_path / "summary.md").read_text()
    assert "| good | cross_corpus/test [iemocap] | 2 fold(s) x 1 seed(s) | 80.0 ± 14.1 | 80.0 ± 14.1 |" in text


def test_paired_comparison_over_all_runs_finds_the_better_model(tmp_path):
    params = params_for({"better": {}, "worse": {}, "twin": {}}, folds=(1, 2), seeds=(0, 1))
    for fold in (1, 2):
        ids, spk, y = clips(f"iem{fold}", 40, 6)
        for seed in (0, 1):
            rng = np.random.default_rng(fold * 10 + seed)
            worse = [t if rng.random() < 0.5 else (t + 1) % 4 for t in y]
            good = [t if rng.random() < 0.95 else (t + 1) % 4 for t in y]
            target = clips("rav", 12, 12)
            for name, pred in (("better", good), ("twin", good), ("worse", worse)):
                write_run(tmp_path, name, fold, seed, {"in_domain": (ids, spk, y, pred),
                                                       "target": target + (target[2],)})
    write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                  plots_dir=tmp_path / "plots", comparisons_out=tmp_path / "cmp.json")
    rows = {(r["a"], r["b"]): r for r in json.loads((tmp_path / "cmp.json").read_text())["comparisons"]
            if r["scope"] == "in_domain"}
    better = rows[("better", "worse")]
    assert better["n_clips"] == 160 and better["n_runs"] == 4 and better["cluster"] == "speaker"
    assert better["uar_diff"] > 0.3 and better["uar_p_holm"] < 0.05 and better["uar_significant"]
    assert better["mcnemar_p_holm"] < 0.05
    twin = rows[("better", "twin")]  # identical predictions in every run
    assert twin["uar_diff"] == 0 and twin["uar_p"] == 1.0 and twin["mcnemar_p"] == 1.0
    assert not twin["uar_significant"]


def test_not_run_cells_are_skipped_and_missing_ones_are_errors(tmp_path):
    params = params_for({"m": {}}, folds=(1, 2, 3))
    for fold in (1, 2):
        ids, spk, y = clips(f"iem{fold}", 8, 2)
        write_run(tmp_path, "m", fold, 0, {"in_domain": (ids, spk, y, y), "target": clips("rav", 8, 4) + (y,)})
    mark_not_run("study cross_corpus has 2 fold(s)", [tmp_path / "models" / "m" / "f3-s0",
                                                      tmp_path / "metrics" / "m" / "f3-s0"])
    runs = collect_runs(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "plots")
    assert [(r.fold, r.seed) for r in runs[("m", "in_domain")]] == [(1, 0), (2, 0)]
    # a run that should exist but was never evaluated is an error, not a silent gap
    (tmp_path / "models" / "m" / "f4-s0").mkdir()
    (tmp_path / "models" / "m" / "f4-s0" / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"metrics/m/f4-s0/in_domain\.json is missing"):
        collect_runs(params_for({"m": {}}, folds=(1, 2, 4)), tmp_path / "metrics", tmp_path / "models",
                     tmp_path / "plots")
    # metrics of another version of the run's model are refused
    meta = tmp_path / "models" / "m" / "f1-s0" / "meta.json"
    meta.write_text(meta.read_text() + " ")
    with pytest.raises(ValueError, match="another version"):
        collect_runs(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "plots")


def test_prune_removes_models_folds_and_seeds_no_longer_in_params(tmp_path):
    params = params_for({"m": {}}, folds=(1,), seeds=(0,))
    for rel in ("m/f1-s0", "m/f2-s0", "m/f1-s5", "old/f1-s0"):
        (tmp_path / "metrics" / rel).mkdir(parents=True)
    removed = prune_stale_outputs(params, [tmp_path / "metrics"])
    assert sorted(str(p.relative_to(tmp_path / "metrics")) for p in removed) == ["m/f1-s5", "m/f2-s0", "old"]
    assert (tmp_path / "metrics" / "m" / "f1-s0").is_dir()


def test_corpus_matrix_table_heatmap_and_the_adapted_cell(tmp_path):
    """Matrix study: fold i trains on corpus i, every corpus's test split is a column; the cross-corpus
    models' target cells join it, marked when they test the very same clips."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    base = {"arch": "classical", "objective": "ce", "input": "egemaps", "epochs": 1, "batch_size": 1, "optim": {},
            "classical": {"classifier": "svm", "C": [1.0], "standardise": "global"}}
    raw["models"] = {"mx": {**base, "study": "corpus_matrix"}, "plain": {**base, "study": "cross_corpus"},
                     "adapted": {**raw["models"]["dann"]}}
    raw.update(folds=[1, 2], seeds=[0], fusions={})
    params = parse_params(raw)
    iem, iem_spk, iem_y = clips("iemocap", 16, 4)
    rav, rav_spk, rav_y = clips("ravdess", 24, 12)

    def preds(y, right):
        return [t if i < right else (t + 1) % 4 for i, t in enumerate(y)]

    def write_matrix_run(fold, iem_right, rav_right):
        run = run_name(fold, 0)
        model_dir = tmp_path / "models" / "mx" / run
        model_dir.mkdir(parents=True)
        (model_dir / "meta.json").write_text("{}")
        for corpus, (ids, spk, y, right) in {"iemocap": (iem, iem_spk, iem_y, iem_right),
                                             "ravdess": (rav, rav_spk, rav_y, rav_right)}.items():
            p = preds(y, right)
            record = metrics_record(compute_metrics(y, p, LABELS), np.array(y), np.array(p), model="mx",
                                    test_set=f"corpus_matrix/test [{corpus}]", n_boot=20)
            record.update(model_fingerprint=model_fingerprint(model_dir))
            write_metrics_json(tmp_path / "metrics" / "mx" / run / f"{corpus}.json", record)
            write_predictions_csv(tmp_path / "plots" / "mx" / run / f"{corpus}.csv",
                                  Predictions(ids, spk, y, p, LABELS))

    write_matrix_run(1, 16, 6)   # trained on IEMOCAP: in-domain 100%, RAVDESS 25%
    write_matrix_run(2, 4, 24)   # trained on RAVDESS: IEMOCAP 25%, in-domain 100%
    for fold in (1, 2):
        ids, spk, y = clips(f"iem_f{fold}", 8, 2)
        write_run(tmp_path, "plain", fold, 0, {"in_domain": (ids, spk, y, y),
                                               "target": (rav, rav_spk, rav_y, preds(rav_y, 12))})
        write_run(tmp_path, "adapted", fold, 0, {"in_domain": (ids, spk, y, y),
                                                 "target": (rav, rav_spk, rav_y, preds(rav_y, 18))})
    text = write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                         plots_dir=tmp_path / "plots", matrix_out=tmp_path / "matrix.json",
                         figures_dir=tmp_path / "figures")
    entry = json.loads((tmp_path / "matrix.json").read_text())["studies"]["corpus_matrix"]
    assert entry["corpora"] == ["iemocap", "ravdess"]
    np.testing.assert_allclose(entry["models"]["mx"]["uar"], [[1.0, 0.25], [0.25, 1.0]])
    rows = {r["model"]: r for r in entry["cross_corpus_rows"]}
    assert rows["adapted"]["adapted"] and not rows["plain"]["adapted"]
    assert rows["adapted"]["uar"] == pytest.approx(0.75) and rows["plain"]["uar"] == pytest.approx(0.5)
    assert rows["adapted"]["same_test_clips"] and rows["adapted"]["train"] == "iemocap"
    assert (tmp_path / "figures" / "corpus_matrix_matrix.png").stat().st_size > 1000
    assert "## Corpus matrix: corpus_matrix" in text
    assert "| mx | iemocap | 100.0 | 25.0 |" in text and "| adapted (DANN) | iemocap (cross_corpus) |  | 75.0 |" in text


def test_layer_weights_are_averaged_over_runs_plotted_and_tabulated(tmp_path):
    from ser.eval.summary import aggregate_layer_weights
    params = params_for({"probe": {}, "plain": {}})
    ids, spk, y = clips("iemocap", 8, 4)
    runs = {1: [0.1, 0.2, 0.7], 2: [0.3, 0.2, 0.5]}
    for fold, weights in runs.items():
        for model in ("probe", "plain"):
            write_run(tmp_path, model, fold, 0, {"in_domain": (ids, spk, y, y), "target": (ids, spk, y, y)})
        write_metrics_json(tmp_path / "metrics" / "probe" / run_name(fold, 0) / "layer_weights.json",
                           {"layer_weights": weights})
    agg = aggregate_layer_weights(params, tmp_path / "metrics")
    assert set(agg) == {"probe"} and agg["probe"]["runs"] == 2 and agg["probe"]["top_layer"] == 2
    np.testing.assert_allclose(agg["probe"]["mean"], [0.2, 0.2, 0.6])
    np.testing.assert_allclose(agg["probe"]["std"], [np.std([0.1, 0.3], ddof=1), 0.0, np.std([0.7, 0.5], ddof=1)], atol=1e-6)
    text = write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                         plots_dir=tmp_path / "plots", aggregate_out=tmp_path / "aggregate.json",
                         figures_dir=tmp_path / "figures")
    assert "## Layer weights" in text and "| probe | 2 | 2 | 0.200 0.200 0.600 |" in text
    assert json.loads((tmp_path / "aggregate.json").read_text())["layer_weights"]["probe"]["top_layer"] == 2
    assert (tmp_path / "figures" / "probe_layer_weights.png").is_file()
    assert not (tmp_path / "figures" / "plain_layer_weights.png").exists()


LOGREG = {"classical": {"classifier": "logreg", "C": [1.0], "standardise": "global"}}


def test_a_fusion_averages_its_members_probabilities_run_by_run_and_is_summarized_like_a_model(tmp_path):
    """fusions.<name>: per run and test set, the mean of the members' class probabilities (rows matched by
    clip id), written as a run of its own, then aggregated, compared and tabled beside the models."""
    params = params_for({"a": LOGREG, "b": LOGREG}, fusions={"ab": {"members": ["a", "b"]}})
    rng = np.random.default_rng(0)
    expected = {}
    for fold in (1, 2):
        ids, spk, y = clips(f"iem{fold}", 24, 6)
        t_ids, t_spk, t_y = clips("rav", 16, 8)
        probs = {}
        for model in ("a", "b"):
            p_in, p_t = rng.dirichlet(np.ones(4), len(ids)), rng.dirichlet(np.ones(4), len(t_ids))
            probs[model] = (p_in, p_t)
            order = np.arange(len(ids))[::-1] if model == "b" else np.arange(len(ids))  # b's rows reversed
            in_domain = ([ids[i] for i in order], [spk[i] for i in order], [y[i] for i in order],
                         p_in[order].argmax(1).tolist())
            write_run(tmp_path, model, fold, 0, {"in_domain": in_domain,
                                                 "target": (t_ids, t_spk, t_y, p_t.argmax(1).tolist())},
                      scores={"in_domain": p_in[order], "target": p_t})
        fused_in = ((probs["a"][0] + probs["b"][0]) / 2).argmax(1)
        expected[fold] = compute_metrics(y, fused_in.tolist(), LABELS)["uar"]
    write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                  plots_dir=tmp_path / "plots", aggregate_out=tmp_path / "aggregate.json",
                  comparisons_out=tmp_path / "comparisons.json",
                  fusions_dir=tmp_path / "fusions", fusion_plots_dir=tmp_path / "fusion_plots")
    record = json.loads((tmp_path / "fusions" / "ab" / "f1-s0" / "in_domain.json").read_text())
    assert record["members"] == ["a", "b"] and record["uar"] == pytest.approx(expected[1])
    assert record["member_fingerprints"]["a"] == model_fingerprint(tmp_path / "models" / "a" / "f1-s0")
    assert (tmp_path / "fusion_plots" / "ab" / "f2-s0" / "target.csv").is_file()
    assert (tmp_path / "fusion_plots" / "ab" / "f2-s0" / "target.png").is_file()
    agg = json.loads((tmp_path / "aggregate.json").read_text())["models"]["ab"]
    assert agg["in_domain"]["mean_over_runs"]["uar"] == pytest.approx(np.mean([expected[1], expected[2]]))
    pairs = {(r["a"], r["b"], r["scope"]) for r in json.loads((tmp_path / "comparisons.json").read_text())["comparisons"]}
    assert ("a", "ab", "in_domain") in pairs or ("ab", "a", "in_domain") in pairs
    assert "| ab (fusion of a + b) |" in (tmp_path / "summary.md").read_text()
    # a stale fused run (a fusion no longer in params.yaml) is gone after the next summary
    params = params_for({"a": LOGREG, "b": LOGREG}, fusions={"ba": {"members": ["b", "a"]}})
    write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                  plots_dir=tmp_path / "plots", fusions_dir=tmp_path / "fusions", fusion_plots_dir=tmp_path / "fusion_plots")
    assert sorted(p.name for p in (tmp_path / "fusions").iterdir()) == ["ba"]


def test_a_fusion_refuses_members_without_probabilities(tmp_path):
    """Predictions written before scores were, or scores that are not probabilities: an error naming the
    fusion, the run and the member."""
    params = params_for({"a": LOGREG, "b": LOGREG}, folds=(1,), fusions={"ab": {"members": ["a", "b"]}})
    ids, spk, y = clips("iem", 8, 4)
    t_ids, t_spk, t_y = clips("rav", 8, 4)
    onehot = np.eye(4)[y]
    write_run(tmp_path, "a", 1, 0, {"in_domain": (ids, spk, y, y), "target": (t_ids, t_spk, t_y, t_y)},
              scores={"in_domain": onehot, "target": np.eye(4)[t_y]})
    write_run(tmp_path, "b", 1, 0, {"in_domain": (ids, spk, y, y), "target": (t_ids, t_spk, t_y, t_y)},
              scores={"in_domain": 3 * onehot - 1, "target": np.eye(4)[t_y]})
    with pytest.raises(ValueError, match=r"fusions.ab \(f1-s0, in_domain\): b: its scores are not class probabilities"):
        write_summary(params, tmp_path / "metrics", tmp_path / "models", tmp_path / "summary.md",
                      plots_dir=tmp_path / "plots")
