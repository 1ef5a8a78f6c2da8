"""evaluate@<model>-<fold>-<seed>: test-set metrics, bootstrap intervals and confusion matrices of one run.

Test sets: in_domain (the study's test split: the source corpus of a cross-corpus
study, all corpora otherwise) and, for a cross-corpus study, target (the target
corpus's test speakers); in a matrix study, each corpus's test split. A test set
without clips is skipped and recorded as such; a run that was not run (see
ser.runs) records not_run.json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.logutil import setup_logging
from ser.runs import NOT_RUN, check_spec, is_not_run, mark_not_run, read_bind
from ser.runtime import set_torch_threads
from ser.stageutil import ensure_writable, run_stage, staged


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a key under `models:` in params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model-dir", type=Path, required=True, help="models/<model>/f<k>-s<seed>")
    ap.add_argument("--bind", type=Path, help="data/bind/<model>.json: checked against params.yaml when given")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--metrics-dir", type=Path, required=True, help="<scope>.json per test set")
    ap.add_argument("--plots-dir", type=Path, required=True, help="<scope>.csv and <scope>.png per test set")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    mp = params.model(args.model)
    if args.bind is not None:
        check_spec(read_bind(args.bind, args.model, mp.input, mp.study), params.run_spec(args.model), args.bind)
    ensure_writable(args.metrics_dir, args.plots_dir)
    if is_not_run(args.model_dir):
        import json

        mark_not_run(json.loads((args.model_dir / NOT_RUN).read_text())["not_run"],
                     [args.metrics_dir], empty_dirs=[args.plots_dir])
        return
    set_torch_threads(params.train.threads)
    from ser.eval.evaluate import evaluate_model_scopes

    # Not cached by DVC: written aside, they replace the previous run's only when evaluation succeeds.
    with staged(args.metrics_dir, args.plots_dir) as (metrics_dir, plots_dir):
        evaluate_model_scopes(params, args.model, args.model_dir, args.features, metrics_dir, plots_dir)


if __name__ == "__main__":
    run_stage(main)
