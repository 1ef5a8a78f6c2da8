"""evaluate-<scope>: test-set metrics, bootstrap intervals and confusion matrices.

in_domain: every model on its study's test split (the source corpus of a
cross-corpus study, all corpora otherwise); ravdess: the cross-corpus models on
the target corpus's held-out actors.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ser.config import load_params
from ser.evaluation import SCOPES, evaluate_scope
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage, set_torch_threads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scope", required=True, choices=SCOPES)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--metrics-dir", type=Path, required=True, help="<model>.json per model")
    ap.add_argument("--plots-dir", type=Path, required=True, help="<model>.csv and <model>.png per model")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    ensure_writable(args.metrics_dir, args.plots_dir)
    set_torch_threads(params.train.threads)
    evaluate_scope(params, args.scope, args.models_dir, args.features, args.metrics_dir,
                   args.plots_dir)


if __name__ == "__main__":
    run_stage(main)
