"""summarize: every run's metrics aggregated over folds and seeds (metrics/aggregate.json),
paired comparisons of models tested on the same clips (metrics/comparisons.json), the
train x test corpus matrix (metrics/corpus_matrix.json, metrics/figures/), the runs of the
late fusions of params.yaml `fusions` (metrics/fusions/, metrics/fusion_predictions/) and the
tables of all of it (metrics/summary.md); see ser.eval.summary.

Outputs of models, folds or seeds no longer in params.yaml are removed first, so the
tables and the next experiment only ever describe the current runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.eval.summary import prune_stale_outputs, write_summary
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", type=Path, default=Path("metrics/models"), help="<model>/<run>/<scope>.json")
    ap.add_argument("--plots-dir", type=Path, default=Path("plots"),
                    help="<model>/<run>/<scope>.csv: per-utterance predictions")
    ap.add_argument("--live-dir", type=Path, default=Path("dvclive"), help="<model>/<run>/ curves and timing.json")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("metrics/summary.md"))
    ap.add_argument("--comparisons", type=Path, default=Path("metrics/comparisons.json"),
                    help="the paired comparisons as JSON")
    ap.add_argument("--aggregate", type=Path, default=Path("metrics/aggregate.json"))
    ap.add_argument("--matrix", type=Path, default=Path("metrics/corpus_matrix.json"))
    ap.add_argument("--figures", type=Path, default=Path("metrics/figures"))
    ap.add_argument("--fusions", type=Path, default=Path("metrics/fusions"),
                    help="<fusion>/<run>/<scope>.json: each run of each params.yaml `fusions` entry")
    ap.add_argument("--fusion-plots", type=Path, default=Path("metrics/fusion_predictions"),
                    help="<fusion>/<run>/<scope>.{csv,png}: their per-utterance predictions")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    ensure_writable(args.figures, args.fusions, args.fusion_plots,
                    files=[args.out, args.comparisons, args.aggregate, args.matrix])
    prune_stale_outputs(params, [args.metrics_dir, args.plots_dir, args.live_dir])
    write_summary(params, args.metrics_dir, args.models_dir, args.out, args.live_dir, args.plots_dir,
                  args.comparisons, args.aggregate, args.matrix, args.figures, args.fusions, args.fusion_plots)


if __name__ == "__main__":
    run_stage(main)
