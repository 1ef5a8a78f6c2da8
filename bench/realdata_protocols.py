"""Real-data check of the protocols: folds, aggregation, paired tests and the corpus matrix on
real EmoDB and RAVDESS recordings, through the pipeline's own DAG (one DVC project).

Studies (4 classes: angry, happy, neutral, sad), all run by one `dvc repro` with
`folds: [1, 2, 3]` and `seeds` from the command line:

  ravdess_folds  RAVDESS actors 1-12, speaker_folds: 3 (2 F + 2 M test actors per fold,
                 2 validation actors drawn from the other 8): CRNN and eGeMAPS
                 logistic regression.
  emodb_folds    EmoDB's 10 speakers, speaker_folds: 3 (3-4 test speakers, 2
                 validation): eGeMAPS logistic regression.
  matrix         design: matrix over EmoDB (val 03, 08; test 15, 16) and RAVDESS
                 (val 5-6; test 7-12): CRNN and eGeMAPS logistic regression; its
                 fold 3 is not run (2 corpora).
  cross          EmoDB -> RAVDESS (adaptation actors 1-6, test 7-12, the matrix's
                 RAVDESS test set): CRNN and DANN-CRNN, the adapted cell beside
                 the matrix's unadapted ones; folds 2-3 are not run (one split).

Prints and writes (bench/results/realdata_protocols.json) the aggregate over
runs (mean ± std) and the pooled metrics with CIs per model and test set, the
paired comparisons, and the train x test matrix with the cross-corpus rows.

    python bench/realdata_protocols.py --emodb ../shared/realdata/emodb \\
        --ravdess ../shared/realdata/ravdess-actors-01-12 --workdir /tmp/ser-protocols
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import LABELS, _dvc, _emodb, check_corpora, corpus_arguments, load_base, prepare  # noqa: E402


def make_params(base: dict[str, Any], emodb: Path, ravdess: Path, seeds: list[int], epochs: int) -> dict[str, Any]:
    params = copy.deepcopy(base)
    params["corpora"] = {"emodb": _emodb(emodb), "ravdess": {"source": "local", "path": str(ravdess)}}
    params["studies"] = {
        "ravdess_folds": {"labels": LABELS, "corpora": ["ravdess"]},
        "emodb_folds": {"labels": LABELS, "corpora": ["emodb"]},
        "matrix": {"design": "matrix", "labels": LABELS, "corpora": ["emodb", "ravdess"]},
        "cross": {"labels": LABELS, "corpora": ["emodb", "ravdess"], "source": "emodb", "target": "ravdess"},
    }
    params["splits"] = {
        # 3 folds: the previous fold as validation would leave one fold to train on, so 2 validation
        # speakers are drawn from the training folds instead
        "ravdess_folds": {"ravdess": {"protocol": "speaker_folds", "folds": 3, "val_speakers": 2, "seed": 0}},
        "emodb_folds": {"emodb": {"protocol": "speaker_folds", "folds": 3, "val_speakers": 2, "seed": 0}},
        "matrix": {"emodb": {"protocol": "speakers", "val": ["03", "08"], "test": ["15", "16"]},
                   "ravdess": {"protocol": "speakers", "val": ["5-6"], "test": ["7-12"]}},
        "cross": {"emodb": {"protocol": "speakers", "val": ["03", "08"]},
                  "ravdess": {"protocol": "speakers", "adapt": ["1-6"], "test": ["7-12"]}},
    }
    crnn = {**copy.deepcopy(base["models"]["baseline"]), "epochs": epochs}
    dann = {**copy.deepcopy(base["models"]["dann"]), "epochs": epochs}
    logreg = copy.deepcopy(base["models"]["egemaps_logreg"])
    params["models"] = {
        "ravdess_crnn": {**crnn, "study": "ravdess_folds"},
        "ravdess_logreg": {**logreg, "study": "ravdess_folds"},
        "emodb_logreg": {**logreg, "study": "emodb_folds"},
        "matrix_crnn": {**crnn, "study": "matrix"},
        "matrix_logreg": {**logreg, "study": "matrix"},
        "cross_crnn": {**crnn, "study": "cross"},
        "cross_dann": {**dann, "study": "cross"},
    }
    params.update(seeds=seeds, folds=[1, 2, 3], fusions={})
    return params


def _pct(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def report(aggregate: dict[str, Any], comparisons: list[dict[str, Any]], matrix: dict[str, Any]) -> str:
    lines = ["| model | test set | runs | UAR mean ± std | pooled UAR [95% CI] | pooled WA | max top-class share |",
             "|---|---|---|---|---|---|---|"]
    for model, scopes in aggregate.items():
        for key, agg in scopes.items():
            if agg.get("skipped"):
                continue
            mean, std = agg["mean_over_runs"]["uar"], agg["std_over_runs"]["uar"]
            lines.append(f"| {model} | {agg['test_set']} | {agg['n_runs']} | {100 * mean:.1f}"
                         + (f" ± {100 * std:.1f}" if std is not None else "")
                         + f" | {_pct(agg['pooled']['uar'], agg['pooled'].get('uar_ci95'))} "
                         f"| {_pct(agg['pooled']['accuracy'])} | {agg['top_class_share_max']:.2f} |")
    lines += ["", "| test set | A | B | UAR A - B [95% CI] | p (Holm) | McNemar p (Holm) |", "|---|---|---|---|---|---|"]
    for r in comparisons:
        ci = r.get("uar_diff_ci95") or [None, None]
        lines.append(f"| {r['study']}/{r['scope']} | {r['a']} | {r['b']} | {100 * r['uar_diff']:+.1f} "
                     f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] | {r['uar_p_holm']:.3f} | {r['mcnemar_p_holm']:.3f} |")
    for sname, entry in matrix.items():
        lines += ["", f"| {sname} | trained on | " + " | ".join(f"test {c}" for c in entry["corpora"]) + " |",
                  "|---|---|" + "---|" * len(entry["corpora"])]
        for model, m in entry["models"].items():
            for train, row in zip(entry["corpora"], m["uar"]):
                lines.append(f"| {model} | {train} | " + " | ".join(_pct(v) for v in row) + " |")
        for e in entry["cross_corpus_rows"]:
            lines.append(f"| {e['model']}{' (DANN)' if e['adapted'] else ''} | {e['train']} | "
                         + " | ".join(_pct(e["uar"]) if c == e["test"] else "" for c in entry["corpora"])
                         + (" |" if e["same_test_clips"] else " (other test clips) |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = corpus_arguments(__doc__, "/tmp/ser-protocols", [0], "realdata_protocols.json").parse_args(argv)
    check_corpora(args)
    params = make_params(load_base(args), args.emodb.resolve(), args.ravdess.resolve(),
                         args.seeds, args.epochs)
    prepare(args.workdir)
    (args.workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = args.workdir / "repro.log"
    print(f"dvc repro in {args.workdir} (log: {log})", flush=True)
    started = time.perf_counter()
    _dvc(args.workdir, "repro", log=log)
    seconds = round(time.perf_counter() - started, 1)
    metrics = args.workdir / "metrics"
    aggregate = json.loads((metrics / "aggregate.json").read_text())["models"]
    comparisons = json.loads((metrics / "comparisons.json").read_text())["comparisons"]
    matrix = json.loads((metrics / "corpus_matrix.json").read_text())["studies"]
    text = report(aggregate, comparisons, matrix)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "epochs": args.epochs, "folds": params["folds"],
                                    "seconds": seconds, "aggregate": aggregate, "comparisons": comparisons,
                                    "corpus_matrix": matrix, "table": text}, indent=2) + "\n")
    print(f"wrote {args.out} ({seconds} s)")


if __name__ == "__main__":
    main()
