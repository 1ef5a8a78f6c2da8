"""`ser report`: markdown table + PNG from the workspace's metrics/aggregate.json and real `dvc exp show --json` output."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from ser.eval.report import Row, parse_exp_show, read_experiments, read_workspace, render_markdown, write_report
from ser.infer.cli import main
from test_queue import dvc, make_repo


def _aggregate(uar: float, ci: tuple[float, float] | None = (0.0, 1.0), *, corpus: str | None = None,
               std: float | None = 0.02, n_runs: int = 2, single: tuple[str, ...] = ()) -> dict:
    """One model's record for one scope in metrics/aggregate.json (ser.eval.summary.aggregate_runs):
    the mean and std over runs sit 1 point below the pooled metrics."""
    runs = [{"fold": f, "seed": 1337} for f in range(1, n_runs + 1)]
    pooled = {"accuracy": uar + 0.01, "uar": uar, "macro_f1": uar, "cohen_kappa": 0.2}
    if ci is not None:
        pooled.update(uar_ci95=list(ci), accuracy_ci95=[ci[0] + 0.01, ci[1] + 0.01])
    return {"study": "cross_corpus", "test_set": "t", "corpus": corpus, "folds": [r["fold"] for r in runs],
            "seeds": [1337], "n_classes": 4, "n_runs": n_runs, "runs": runs,
            "mean_over_runs": {"accuracy": uar, "uar": uar - 0.01, "macro_f1": uar - 0.01},
            "std_over_runs": {"accuracy": std, "uar": std, "macro_f1": std},
            "pooled": pooled, "test_sets": "disjoint", "single_class_runs": list(single)}


RUNTIME = "2 threads, cpu, torch 2.13.0"  # ser.runtime.describe_runtimes of the runs' records


def _write_aggregate(metrics: Path, models: dict) -> None:
    metrics.mkdir(parents=True, exist_ok=True)
    (metrics / "aggregate.json").write_text(json.dumps({"models": models}))


def test_workspace_report_from_metrics_files_without_dvc(tmp_path):
    metrics = tmp_path / "metrics"
    _write_aggregate(metrics, {
        "dann": {"in_domain": {**_aggregate(0.6, (0.55, 0.65), corpus="iemocap"), "computed_with": RUNTIME},
                 "target": {**_aggregate(0.45, (0.40, 0.50), corpus="ravdess"), "computed_with": RUNTIME}},
        "qlora": {"in_domain": _aggregate(0.7, None, std=None, n_runs=1)},  # no interval, no cross-corpus
        "baseline": {"in_domain": {**_aggregate(0.5), "pooled": {**_aggregate(0.5, (0.45, 0.55))["pooled"],
                                                                  "uar": None}},
                     # NaN written as null; a run that predicted one class is named
                     "target": _aggregate(0.25, (0.25, 0.25), corpus="ravdess", single=("f2-s1337",))},
        # a test set without clips: the summarize stage records why
        "egemaps_svm": {"in_domain": {"study": "cross_corpus", "scope": "in_domain", "corpus": "iemocap",
                                      "folds": [1, 2], "seeds": [1337], "skipped": "no test clips of iemocap"},
                        "target": _aggregate(0.35, (0.3, 0.4), corpus="ravdess")},
        # a matrix study's scopes are corpora: summary.md's corpus matrix, not this report
        "matrix_crnn": {"iemocap": _aggregate(0.3), "ravdess": _aggregate(0.3)},
    })
    # Per-run metrics files and the summary are not what the report reads.
    (metrics / "models" / "dann" / "f1-s1337").mkdir(parents=True)
    (metrics / "models" / "dann" / "f1-s1337" / "target.json").write_text(json.dumps({"uar": 0.99}))
    (metrics / "summary.md").write_text("not a metrics file")

    rows = read_workspace(metrics)
    assert [r.model for r in rows] == ["baseline", "dann", "egemaps_svm", "qlora"]
    dann = rows[1]
    assert dann.value("target") == 0.45 and dann.interval("target") == (0.40, 0.50)
    assert dann.value("target", part="mean_over_runs") == pytest.approx(0.44)
    assert dann.value("target", part="std_over_runs") == 0.02
    assert dann.interval("in_domain", "accuracy") == (0.56, 0.66)
    assert rows[3].interval("in_domain") is None and rows[3].value("target") is None
    assert rows[3].value("in_domain", part="std_over_runs") is None  # one run: no std
    assert rows[2].value("in_domain") is None and rows[2].value("target") == 0.35
    assert rows[0].value("in_domain") is None and rows[0].value("in_domain", part="mean_over_runs") == pytest.approx(0.49)

    # tmp_path is no DVC repository: experiments are skipped with a warning, the report still works.
    md, png = write_report(metrics, tmp_path / "reports", repo=tmp_path)
    text = md.read_text()
    assert "![pooled UAR per model with 95% confidence intervals](report.png)" in text
    lines = [line for line in text.splitlines() if line.startswith("| workspace")]
    assert len(lines) == 4
    assert ("| workspace | — | dann | 2 threads, cpu, torch 2.13.0 | 59.0% ± 2.0 (n=2) | 60.0% [55.0, 65.0] | 61.0% [56.0, 66.0] "
            "| 44.0% ± 2.0 (n=2) | 45.0% [40.0, 50.0] on ravdess | 46.0% [41.0, 51.0] on ravdess |") in text
    assert "| workspace | — | qlora | — | 69.0% (n=1) | 70.0% | 71.0% | — | — | — |" in text
    assert ("| workspace | — | baseline | — | 49.0% ± 2.0 (n=2) | — | 51.0% [46.0, 56.0] | 24.0% ± 2.0 (n=2) "
            "| 25.0% [25.0, 25.0] on ravdess (single class in f2-s1337) | 26.0% [26.0, 26.0] on ravdess |") in text
    assert ("| workspace | — | egemaps_svm | — | — | no test data | no test data | 34.0% ± 2.0 (n=2) "
            "| 35.0% [30.0, 40.0] on ravdess |") in text
    assert "matrix_crnn" not in text
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 500

    with pytest.raises(ValueError, match="not a metrics JSON"):
        (metrics / "aggregate.json").write_text("{")
        read_workspace(metrics)


def test_cli_report_without_anything_to_report_fails(tmp_path, capsys):
    assert main(["report", "--metrics-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "r"),
                 "--repo", str(tmp_path)]) == 1
    assert not (tmp_path / "r" / "report.md").exists()


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory):
    """A repo with one finished experiment (lambda 0.3) and one still queued (0.1)."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo")
    dvc(repo, "exp", "run", "--temp", "-S", "lambda_domain=0.3", "--name", "lam-0.3")
    dvc(repo, "exp", "run", "--queue", "-S", "lambda_domain=0.1", "--name", "lam-0.1")  # never started
    return repo


def test_parse_of_real_exp_show_json(exp_repo):
    doc = json.loads(dvc(exp_repo, "exp", "show", "--json"))
    (head,) = [entry for entry in doc if entry["rev"] != "workspace"]
    assert "metrics/aggregate.json" in head["data"]["metrics"]  # the metrics file the report matches

    rows = read_experiments(exp_repo)
    # Only the model the experiment changed; the queued experiment has no results yet.
    assert [(r.run, r.model, r.changed) for r in rows] == [("lam-0.3", "dann", "lambda_domain=0.3")]
    (dann,) = rows
    assert dann.value("target") == 0.43 and dann.value("in_domain") == 0.606
    assert dann.value("target", part="mean_over_runs") == 0.42
    # `dvc exp show` drops list values; the intervals come from the experiment's commit.
    assert dann.interval("target") == (0.38, 0.48) and dann.interval("in_domain", "accuracy") == (0.586, 0.686)

    # Without the commit lookup the numbers are still there, the intervals are not.
    (plain,) = parse_exp_show(doc)
    assert plain.value("target") == 0.43 and plain.interval("target") is None


def test_cli_report_with_experiments(exp_repo, tmp_path):
    out = tmp_path / "reports"
    assert main(["report", "--metrics-dir", str(exp_repo / "metrics"), "--out-dir", str(out),
                 "--repo", str(exp_repo)]) == 0
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Run | Changed params | Model | Computed with | in-domain UAR over runs "
                               "| in-domain pooled UAR [95% CI] | in-domain pooled accuracy |")
    assert [line.split(" | ")[:3] for line in table[1:]] == [
        ["| workspace", "—", "baseline"], ["| workspace", "—", "dann"], ["| workspace", "—", "qlora"],
        ["| lam-0.3", "lambda_domain=0.3", "dann"]]
    assert ("| lam-0.3 | lambda_domain=0.3 | dann | — | 59.6% ± 1.0 (n=2) | 60.6% [55.6, 65.6] | 63.6% [58.6, 68.6] "
            "| 42.0% ± 1.0 (n=2) | 43.0% [38.0, 48.0] on ravdess | 46.0% [41.0, 51.0] on ravdess |") in text
    assert "| workspace | — | dann | — | 60.0% ± 1.0 (n=2) | 61.0% [56.0, 66.0] |" in text  # lambda_domain 0.5
    assert "lam-0.1" not in text
    assert matplotlib.image.imread(out / "report.png").shape[0] > 150


def test_rows_render_in_order_with_labels():
    rows = [Row("workspace", "dann", scopes={"target": _aggregate(0.5)}),
            Row("exp-a", "dann", "lambda_domain=0.1", {"target": _aggregate(0.4, None)})]
    text = render_markdown(rows, image=None)
    assert "![" not in text
    assert text.index("| workspace |") < text.index(
        "| exp-a | lambda_domain=0.1 | dann | — | — | — | — | 39.0% ± 2.0 (n=2) | 40.0% | 41.0% |")
    assert rows[1].label == "dann @ exp-a (lambda_domain=0.1)" and rows[0].label == "dann"


def test_changed_params_label_says_what_distinguishes_experiments_compactly():
    from ser.eval.report import MAX_CHANGED_SHOWN, describe_changes

    base = {"lambda_domain": 0.5, "seed": 1, "models.dann.epochs": 10, "models.baseline.epochs": 10,
            "models.dann.optim.lr": 0.001}
    sweep = {"a": {**base, "lambda_domain": 0.1, "models.dann.epochs": 20},
             "b": {**base, "lambda_domain": 0.3, "models.dann.epochs": 20}}
    # Both raise the epochs: only the swept value tells them apart.
    assert describe_changes(base, sweep) == {"a": "lambda_domain=0.1", "b": "lambda_domain=0.3"}
    # One experiment: everything it changed, keys cut to their shortest unambiguous suffix.
    assert describe_changes(base, {"a": sweep["a"]}) == {"a": "lambda_domain=0.1, dann.epochs=20"}
    # Identical experiments: the shared change is all there is to show; a removed key shows as ∅.
    same = {k: {kk: vv for kk, vv in sweep["a"].items() if kk != "seed"} for k in "xy"}
    assert describe_changes(base, same)["x"] == "lambda_domain=0.1, dann.epochs=20, seed=∅"
    # A profile swap changes every key: a bounded label, not a 1,000-character cell.
    many = {f"models.m{i}.optim.lr": 0.1 for i in range(40)}
    label = describe_changes(base, {"p": {**base, **many}})["p"]
    assert label.endswith(f", +{40 - MAX_CHANGED_SHOWN} more") and len(label) < 100
