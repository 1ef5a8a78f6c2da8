"""Aggregation and paired tests against hand-computed values on small fixtures."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from ser.stats import (Predictions, aggregate, compare_models, concat, holm, mcnemar_exact, paired_bootstrap,
                       point_metrics, pooled, read_predictions_csv, write_predictions_csv)

LABELS = ("angry", "happy", "neutral", "sad")


def preds(y_true, y_pred, speakers=None, ids=None, labels=LABELS) -> Predictions:
    n = len(y_true)
    return Predictions(utt_id=ids if ids is not None else [f"u{i:03d}" for i in range(n)],
                       speaker=speakers if speakers is not None else [f"s{i % 5}" for i in range(n)],
                       y_true=y_true, y_pred=y_pred, labels=labels)


def speaker_fixture(n_speakers=10, per_speaker=20, seed=0):
    """Clips of n_speakers speakers with random labels: (y_true, speakers)."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, len(LABELS), n_speakers * per_speaker)
    speakers = np.repeat([f"spk{s:02d}" for s in range(n_speakers)], per_speaker)
    return y_true, speakers


def wrong(y_true):
    return (np.asarray(y_true) + 1) % len(LABELS)


# --------------------------------------------------------------------------- metrics and aggregation
@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn_and_hand_definitions(seed):
    """The one implementation (metrics_from_confusion, used by compute_metrics and the bootstrap)
    against sklearn's accuracy, macro-F1 and kappa and the by-hand UAR, with a class absent from
    y_true, one never predicted, and the single-class edge case."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    from ser.stats import compute_metrics

    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, 50)  # "sad" never occurs
    y_pred = np.where(rng.random(50) < 0.6, y_true, rng.integers(0, 2, 50))
    ours, ref = point_metrics(preds(y_true, y_pred)), compute_metrics(y_true, y_pred, LABELS)
    expected = {"accuracy": accuracy_score(y_true, y_pred),
                "uar": np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]),
                "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
                "cohen_kappa": cohen_kappa_score(y_true, y_pred)}
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12) and ref[name] == ours[name], name
    constant = compute_metrics([1, 1, 1], [1, 1, 1], LABELS)
    assert constant["accuracy"] == constant["uar"] == 1.0 and np.isnan(constant["cohen_kappa"])


def test_aggregate_mean_and_sample_std_by_hand():
    runs = [{"fold": f, "seed": 0, "model": "crnn", "test_set": "t", "accuracy": a, "uar": u, "macro_f1": 0.5,
             "cohen_kappa": k} for f, a, u, k in ((1, 0.5, 0.4, 0.1), (2, 0.6, 0.6, 0.2), (3, 0.7, 0.8, 0.6))]
    out = aggregate(runs)
    assert out["n_runs"] == 3
    assert out["mean_over_runs"] == pytest.approx({"accuracy": 0.6, "uar": 0.6, "macro_f1": 0.5,
                                                   "cohen_kappa": 0.3})
    # ddof=1: sqrt(((-.1)^2 + 0 + .1^2) / 2) = 0.1; uar sqrt((.04 + 0 + .04) / 2) = 0.2;
    # kappa sqrt((.04 + .01 + .09) / 2) = sqrt(.07)
    assert out["std_over_runs"] == pytest.approx({"accuracy": 0.1, "uar": 0.2, "macro_f1": 0.0,
                                                  "cohen_kappa": np.sqrt(0.07)})
    single = aggregate(runs[:1])
    assert single["std_over_runs"]["uar"] is None and single["mean_over_runs"]["uar"] == 0.4
    assert aggregate([{**runs[0], "cohen_kappa": None}, runs[1]])["mean_over_runs"]["cohen_kappa"] is None


def test_aggregate_rejects_duplicate_runs_mixed_models_and_missing_keys():
    run = {"fold": 1, "seed": 0, "model": "crnn", "accuracy": 0.5, "uar": 0.5, "macro_f1": 0.5, "cohen_kappa": 0}
    with pytest.raises(ValueError, match=r"\(1, 0\)"):
        aggregate([run, dict(run)])
    with pytest.raises(ValueError, match="models"):
        aggregate([run, {**run, "fold": 2, "model": "dann"}])
    with pytest.raises(KeyError, match="seed"):
        aggregate([{k: v for k, v in run.items() if k != "seed"}])


def test_pooled_is_not_the_mean_of_folds():
    # fold 1: 2 clips, both right (UAR 1); fold 2: 4 clips of classes 0 and 1, one right per class (UAR 0.5).
    f1 = preds([0, 1], [0, 1], ids=["a1", "a2"], speakers=["s1", "s2"])
    f2 = preds([0, 0, 1, 1], [0, 2, 1, 2], ids=["b1", "b2", "b3", "b4"], speakers=["s3", "s3", "s4", "s4"])
    out = pooled([f1, f2], n_boot=200, cluster=None)
    # pooled: class 0 recall 2/3, class 1 recall 2/3 -> UAR 2/3 (the fold mean would be 0.75); accuracy 4/6
    assert out["pooled"]["uar"] == pytest.approx(2 / 3)
    assert out["pooled"]["accuracy"] == pytest.approx(4 / 6)
    lo, hi = out["pooled"]["uar_ci95"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1
    assert out["n_clips"] == 6 and out["n_folds"] == 2 and "pooled_per_seed" not in out


def test_pooled_over_seeds_averages_per_seed_pooled_metrics():
    y_true, speakers = speaker_fixture()
    ids = np.array([f"u{i:03d}" for i in range(len(y_true))])
    half = len(y_true) // 2

    def folds(y_pred):
        p = preds(y_true, y_pred, speakers, ids)
        return [preds(y_true[:half], y_pred[:half], speakers[:half], ids[:half]),
                preds(y_true[half:], y_pred[half:], speakers[half:], ids[half:])], point_metrics(p)

    seed0, m0 = folds(y_true)  # all right
    y_pred1 = np.where(np.arange(len(y_true)) % 2 == 0, y_true, wrong(y_true))
    seed1, m1 = folds(y_pred1)  # half right
    out = pooled({0: seed0, 1: seed1[::-1]}, n_boot=300)  # fold order does not matter
    assert out["pooled_per_seed"]["0"]["accuracy"] == 1.0 and out["pooled_per_seed"]["1"]["accuracy"] == 0.5
    assert out["pooled"]["accuracy"] == pytest.approx(0.75)
    assert out["pooled"]["uar"] == pytest.approx((m0["uar"] + m1["uar"]) / 2)
    lo, hi = out["pooled"]["accuracy_ci95"]
    assert lo <= 0.75 <= hi and out["n_seeds"] == 2 and out["cluster"] == "speaker"


def test_pooled_rejects_a_clip_in_two_folds_and_seeds_on_different_clips():
    f = preds([0, 1], [0, 1], ids=["a", "b"])
    with pytest.raises(ValueError, match="more than one fold"):
        pooled([f, f])
    with pytest.raises(ValueError, match="only in A"):
        pooled({0: [f], 1: [preds([0, 1], [0, 1], ids=["a", "c"])]})


# --------------------------------------------------------------------------- paired tests
def test_mcnemar_known_table():
    # 10 clips only B gets right, 2 only A gets right, 8 both right, 5 both wrong
    y_true = np.zeros(25, dtype=int)
    a_right = np.r_[np.zeros(10), np.ones(2), np.ones(8), np.zeros(5)].astype(bool)
    b_right = np.r_[np.ones(10), np.zeros(2), np.ones(8), np.zeros(5)].astype(bool)
    a = preds(y_true, np.where(a_right, 0, 1))
    b = preds(y_true, np.where(b_right, 0, 2))
    out = mcnemar_exact(a, b)
    assert (out["b01"], out["b10"]) == (10, 2)
    # two-sided exact binomial: 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert out["p_value"] == pytest.approx(158 / 4096) and round(out["p_value"], 4) == 0.0386
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(158 / 4096)


def test_holm_hand_worked():
    out = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    # sorted d .005*4 = .02, a .01*3 = .03, c .03*2 = .06, b .04*1 = .04 -> running max .06
    assert {k: v["p_holm"] for k, v in out.items()} == pytest.approx({"d": 0.02, "a": 0.03, "c": 0.06, "b": 0.06})
    assert {k for k, v in out.items() if v["significant"]} == {"a", "d"}
    assert out["b"]["p"] == 0.04 and list(out) == ["a", "b", "c", "d"]
    assert holm({"x": 0.6, "y": 0.7})["x"]["p_holm"] == 1.0  # capped
    with pytest.raises(ValueError, match="'x'"):
        holm({"x": float("nan")})


@pytest.mark.parametrize("cluster", [None, "speaker"])
def test_paired_bootstrap_strictly_better_model_is_significant(cluster):
    y_true, speakers = speaker_fixture()
    n = len(y_true)
    b_right = np.arange(n) % 3 == 0                  # B right on a third of the clips
    a_right = b_right | (np.arange(n) % 3 == 1)      # A right wherever B is, and on another third
    a = preds(y_true, np.where(a_right, y_true, wrong(y_true)), speakers)
    b = preds(y_true, np.where(b_right, y_true, wrong(y_true)), speakers)
    for metric in ("uar", "accuracy"):
        out = paired_bootstrap(a, b, metric, n_boot=500, cluster=cluster)
        assert out["diff"] > 0 and out["ci"][0] > 0 and out["p_value"] < 0.05
        assert out["p_value"] == pytest.approx(2 / 501)  # no replicate on the other side of 0
    assert paired_bootstrap(a, b, "accuracy", cluster=cluster)["diff"] == pytest.approx(1 / 3, abs=0.01)


def test_paired_bootstrap_identical_models_give_p_one():
    y_true, speakers = speaker_fixture()
    a = preds(y_true, np.where(np.arange(len(y_true)) % 2 == 0, y_true, wrong(y_true)), speakers)
    for cluster in (None, "speaker"):
        out = paired_bootstrap(a, a, "uar", n_boot=300, cluster=cluster)
        assert out["p_value"] == 1.0 and out["ci"] == [0.0, 0.0] and out["diff"] == 0.0


def test_cluster_bootstrap_resamples_whole_speakers():
    # A and B differ only on speaker 0's clips: A right on all, B wrong on all. Resampling clips treats the
    # 20 differences as independent; resampling speakers moves them together, so the interval is wider.
    y_true, speakers = speaker_fixture()
    base = np.where(np.arange(len(y_true)) % 2 == 0, y_true, wrong(y_true))
    spk0 = speakers == "spk00"
    a = preds(y_true, np.where(spk0, y_true, base), speakers)
    b = preds(y_true, np.where(spk0, wrong(y_true), base), speakers)
    clips = paired_bootstrap(a, b, "accuracy", n_boot=1000, cluster=None)
    spk = paired_bootstrap(a, b, "accuracy", n_boot=1000, cluster="speaker")
    assert clips["diff"] == spk["diff"] == pytest.approx(0.1)
    assert spk["n_clusters"] == 10 and clips["n_clusters"] == 200
    width = lambda out: out["ci"][1] - out["ci"][0]  # noqa: E731
    assert width(spk) > 1.5 * width(clips)
    # a replicate's difference is (#draws of speaker 0) * 20 / (total clips drawn): a multiple of 0.1 here
    assert spk["ci"][0] == pytest.approx(0.0) and spk["p_value"] > 0.05 > clips["p_value"]


def test_paired_tests_align_by_utt_id_and_name_mismatches():
    y_true, speakers = speaker_fixture(n_speakers=5, per_speaker=4)
    a = preds(y_true, wrong(y_true), speakers)
    order = np.random.default_rng(0).permutation(len(y_true))
    shuffled = Predictions(a.utt_id[order], a.speaker[order], a.y_true[order], a.y_pred[order], LABELS)
    assert paired_bootstrap(a, shuffled, n_boot=50)["p_value"] == 1.0
    assert mcnemar_exact(a, shuffled)["b01"] == 0
    # label order differs but names match: remapped, still identical
    relabel = [LABELS.index(x) for x in reversed(LABELS)]
    rev = Predictions(a.utt_id, a.speaker, np.array(relabel)[a.y_true], np.array(relabel)[a.y_pred], LABELS[::-1])
    assert mcnemar_exact(a, rev)["b10"] == 0 and paired_bootstrap(a, rev, n_boot=50)["diff"] == 0
    fewer = preds(y_true[:-2], y_true[:-2], speakers[:-2])
    with pytest.raises(ValueError, match=r"same clips: 2 only in A \(e.g. \['u018', 'u019'\]\), 0 only in B"):
        paired_bootstrap(a, fewer)
    with pytest.raises(ValueError, match="same clips"):
        mcnemar_exact(fewer, a)
    with pytest.raises(ValueError, match="y_true of the same clip differs"):
        mcnemar_exact(a, preds(wrong(y_true), y_true, speakers))
    with pytest.raises(ValueError, match="at least 2 speakers"):
        paired_bootstrap(preds([0, 1], [0, 1], speakers=["s", "s"]), preds([0, 1], [1, 1], speakers=["s", "s"]))


def test_compare_models_holm_per_family_and_skips_other_clips():
    y_true, speakers = speaker_fixture()
    n = len(y_true)
    good = preds(y_true, y_true, speakers)
    half = preds(y_true, np.where(np.arange(n) % 2 == 0, y_true, wrong(y_true)), speakers)
    elsewhere = preds(y_true[:10], y_true[:10], speakers[:10], ids=[f"x{i}" for i in range(10)])
    rows = compare_models({"half": half, "good": good, "twin": good, "other": elsewhere}, n_boot=300)
    assert [(r["a"], r["b"]) for r in rows] == [("good", "half"), ("good", "twin"), ("half", "twin")]
    by_pair = {(r["a"], r["b"]): r for r in rows}
    assert by_pair[("good", "twin")]["uar_p"] == 1.0 and not by_pair[("good", "twin")]["uar_significant"]
    assert by_pair[("good", "half")]["accuracy_diff"] == pytest.approx(0.5)
    assert by_pair[("half", "twin")]["accuracy_diff"] == pytest.approx(-0.5)
    for r in (by_pair[("good", "half")], by_pair[("half", "twin")]):
        assert r["uar_p_holm"] == pytest.approx(min(1, 3 * r["uar_p"]))  # the smallest two of three: x3, then x2
        assert r["uar_significant"] and r["accuracy_significant"] and r["mcnemar_significant"]
        assert r["mcnemar_b01"] + r["mcnemar_b10"] == n // 2 and "uar_diff_ci95" in r


# --------------------------------------------------------------------------- files
def test_predictions_csv_round_trip_and_errors(tmp_path):
    p = preds([0, 3, 2], [1, 3, 2], speakers=["s1", "s1", "s2"])
    path = tmp_path / "out" / "predictions.csv"
    write_predictions_csv(path, p)
    with path.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["utt_id", "speaker", "actual", "predicted"] and rows[1] == ["u000", "s1", "angry", "happy"]
    back = read_predictions_csv(path, labels=LABELS)
    assert back.labels == LABELS and back.y_pred.tolist() == [1, 3, 2] and back.speaker.tolist() == ["s1", "s1", "s2"]
    assert read_predictions_csv(path).labels == ("angry", "happy", "neutral", "sad")  # sorted names found
    with pytest.raises(ValueError, match=r"\['sad'\] are not in"):
        read_predictions_csv(path, labels=["angry", "happy", "neutral"])
    with pytest.raises(ValueError, match="duplicate utt_id"):
        preds([0, 1], [0, 1], ids=["a", "a"])
    concat([p])  # one fold pools to itself


def test_predictions_scores_round_trip_subset_align_and_pool(tmp_path):
    """Per-class scores travel with the predictions: written as score_<label> columns and read back
    exactly, kept by subset and concat, and reordered with the labels when models list them otherwise."""
    from ser.stats import align_to

    scores = np.array([[0.7, 0.1, 0.1, 0.1], [1 / 3, 0.0, 0.0, 2 / 3], [0.05, 0.05, 0.8, 0.1]])
    p = Predictions(["u0", "u1", "u2"], ["s1", "s1", "s2"], [0, 3, 2], [0, 3, 2], LABELS, scores)
    path = tmp_path / "p.csv"
    write_predictions_csv(path, p)
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["utt_id", "speaker", "actual", "predicted", "score_angry", "score_happy", "score_neutral",
                      "score_sad"]
    back = read_predictions_csv(path, LABELS)
    assert np.array_equal(back.scores, scores)  # repr of float64: bit-exact
    assert read_predictions_csv(path, LABELS[::-1]).scores[0].tolist() == [0.1, 0.1, 0.1, 0.7]
    assert np.array_equal(p.subset(np.array([False, True, True])).scores, scores[1:])
    assert np.array_equal(concat([p.subset([0]), p.subset([1, 2])]).scores, scores)
    assert concat([p, preds([1], [1], ids=["u9"])]).scores is None  # a fold without scores: none pooled
    # Another label order and row order: aligned to the first model's.
    rev = Predictions(["u2", "u0", "u1"], ["s2", "s1", "s1"], [1, 3, 0], [1, 3, 0], LABELS[::-1],
                      scores[[2, 0, 1]][:, ::-1])
    assert np.array_equal(align_to(p, rev).scores, scores)
    with pytest.raises(ValueError, match=r"scores have shape \(3, 2\)"):
        Predictions(["a", "b", "c"], ["s"] * 3, [0, 1, 2], [0, 1, 2], LABELS, np.zeros((3, 2)))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace("score_sad", "score_calm")] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"p.csv: score columns for .*'calm'"):
        read_predictions_csv(path, LABELS)
    path.write_text("\n".join([lines[0], lines[1].rsplit(",", 1)[0] + ",high"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match="p.csv: a score is not a number"):
        read_predictions_csv(path, LABELS)


def test_fuse_averages_aligned_probabilities_and_names_a_member_it_cannot_use():
    """Late fusion: the mean of the members' class probabilities, matched by clip id and label whatever
    the members' row and label order; a member without scores, with an SVM's decision values or with
    other clips is refused by name."""
    from ser.stats import fuse

    a = Predictions(["u0", "u1"], ["s", "s"], [0, 3], [0, 1], LABELS, [[0.6, 0.4, 0, 0], [0.1, 0.5, 0, 0.4]])
    b = Predictions(["u1", "u0"], ["s", "s"], [0, 3], [0, 1], LABELS[::-1], [[0.9, 0, 0.1, 0], [0, 0.7, 0, 0.3]])
    fused = fuse({"a": a, "b": b})
    assert np.allclose(fused.scores, [[0.45, 0.2, 0.35, 0], [0.05, 0.3, 0, 0.65]])
    assert fused.y_pred.tolist() == [0, 3] and fused.utt_id.tolist() == ["u0", "u1"] and fused.labels == a.labels
    svm = Predictions(["u0", "u1"], ["s", "s"], [0, 3], [0, 1], LABELS, [[2.0, -1, -1, -1], [-1, 1.5, -1, 0.2]])
    with pytest.raises(ValueError, match="svm: its scores are not class probabilities"):
        fuse({"a": a, "svm": svm})
    with pytest.raises(ValueError, match="old: its predictions carry no per-class scores"):
        fuse({"a": a, "old": Predictions(["u0", "u1"], ["s", "s"], [0, 3], [0, 1], LABELS)})
    with pytest.raises(ValueError, match="c: the models were not evaluated on the same clips"):
        fuse({"a": a, "c": a.subset([0])})
    with pytest.raises(ValueError, match="two or more"):
        fuse({"a": a})
