"""`ser report`: markdown table + PNG from workspace metrics files and real `dvc exp show --json` output."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from ser.cli import main
from ser.report import Row, parse_exp_show, read_experiments, read_workspace, render_markdown, write_report
from test_queue import dvc, make_repo


def _record(model: str, uar: float, ci: tuple[float, float] | None = (0.0, 1.0)) -> dict:
    record = {"model": model, "test_set": "t", "accuracy": uar + 0.01, "uar": uar, "macro_f1": uar, "n": 50}
    if ci is not None:
        record.update(uar_ci95=list(ci), accuracy_ci95=[ci[0] + 0.01, ci[1] + 0.01])
    return record


def _write(metrics: Path, scope: str, model: str, record: dict) -> None:
    (metrics / "models" / model).mkdir(parents=True, exist_ok=True)
    (metrics / "models" / model / f"{scope}.json").write_text(json.dumps(record))


def test_workspace_report_from_metrics_files_without_dvc(tmp_path):
    metrics = tmp_path / "metrics"
    _write(metrics, "in_domain", "dann", _record("dann", 0.6, (0.55, 0.65)))
    _write(metrics, "target", "dann", _record("dann", 0.45, (0.40, 0.50)))
    _write(metrics, "in_domain", "qlora", _record("qlora", 0.7, None))  # no interval, no cross-corpus
    _write(metrics, "in_domain", "baseline", {**_record("baseline", 0.5), "uar": None})  # NaN written as null
    (metrics / "summary.md").write_text("not a metrics file")

    rows = read_workspace(metrics)
    assert [r.model for r in rows] == ["baseline", "dann", "qlora"]
    dann = rows[1]
    assert dann.value("target") == 0.45 and dann.interval("target") == (0.40, 0.50)
    assert rows[2].interval("in_domain") is None and rows[2].value("target") is None
    assert rows[0].value("in_domain") is None

    # tmp_path is no DVC repository: experiments are skipped with a warning, the report still works.
    md, png = write_report(metrics, tmp_path / "reports", repo=tmp_path)
    text = md.read_text()
    assert "![UAR per model with 95% confidence intervals](report.png)" in text
    lines = [line for line in text.splitlines() if line.startswith("| workspace")]
    assert len(lines) == 3
    assert "| workspace | — | dann | 60.0% [55.0, 65.0] | 61.0% [56.0, 66.0] | 45.0% [40.0, 50.0] |" in text
    assert "| workspace | — | qlora | 70.0% | 71.0% | — | — |" in text
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 150 and image.shape[1] > 500

    with pytest.raises(ValueError, match="not a metrics JSON"):
        (metrics / "models" / "broken").mkdir()
        (metrics / "models" / "broken" / "target.json").write_text("{")
        read_workspace(metrics)


def test_cli_report_without_anything_to_report_fails(tmp_path, capsys):
    assert main(["report", "--metrics-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path / "r"),
                 "--repo", str(tmp_path)]) == 1
    assert not (tmp_path / "r" / "report.md").exists()


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory):
    """The queue test's repo plus one finished experiment (lambda 0.3) and one still queued (0.1)."""
    repo = make_repo(tmp_path_factory.mktemp("report") / "repo")
    dvc(repo, "exp", "run", "--temp", "-S", "lambda_domain=0.3", "--name", "lam-0.3")
    dvc(repo, "exp", "run", "--queue", "-S", "lambda_domain=0.1", "--name", "lam-0.1")  # never started
    return repo


def test_parse_of_real_exp_show_json(exp_repo):
    rows = read_experiments(exp_repo)
    # Only the model the experiment changed; the queued experiment has no results yet.
    assert [(r.run, r.model, r.changed) for r in rows] == [("lam-0.3", "dann", "lambda_domain=0.3")]
    (dann,) = rows
    assert dann.value("target") == 0.43 and dann.value("in_domain") == 0.606
    # `dvc exp show` drops list values; the intervals come from the experiment's commit.
    assert dann.interval("target") == (0.38, 0.48) and dann.interval("in_domain", "accuracy") == (0.586, 0.686)

    # Without the commit lookup the numbers are still there, the intervals are not.
    doc = json.loads(dvc(exp_repo, "exp", "show", "--json"))
    (plain,) = parse_exp_show(doc)
    assert plain.value("target") == 0.43 and plain.interval("target") is None


def test_cli_report_with_experiments(exp_repo, tmp_path):
    out = tmp_path / "reports"
    assert main(["report", "--metrics-dir", str(exp_repo / "metrics"), "--out-dir", str(out),
                 "--repo", str(exp_repo)]) == 0
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Run | Changed params | Model | in-domain UAR [95% CI]")
    assert [line.split(" | ")[:3] for line in table[1:]] == [
        ["| workspace", "—", "baseline"], ["| workspace", "—", "dann"], ["| workspace", "—", "qlora"],
        ["| lam-0.3", "lambda_domain=0.3", "dann"]]
    assert "| lam-0.3 | lambda_domain=0.3 | dann | 60.6% [55.6, 65.6] | 63.6% [58.6, 68.6] | 43.0% [38.0, 48.0] |" in text
    assert "lam-0.1" not in text
    assert matplotlib.image.imread(out / "report.png").shape[0] > 150


def test_rows_render_in_order_with_labels():
    rows = [Row("workspace", "dann", scopes={"target": _record("dann", 0.5)}),
            Row("exp-a", "dann", "lambda_domain=0.1", {"target": _record("dann", 0.4, None)})]
    text = render_markdown(rows, image=None)
    assert "![" not in text
    assert text.index("| workspace |") < text.index("| exp-a | lambda_domain=0.1 | dann | — | — | 40.0% | 41.0% |")
    assert rows[1].label == "dann @ exp-a (lambda_domain=0.1)" and rows[0].label == "dann"


def test_changed_params_label_says_what_distinguishes_experiments_compactly():
    from ser.report import MAX_CHANGED_SHOWN, describe_changes

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
