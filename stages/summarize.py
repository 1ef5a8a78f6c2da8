"""summarize: the results table (metrics/summary.md) from every model's metrics, meta and timing,
and the paired comparisons of models tested on the same clips (metrics/comparisons.json).

Per-model outputs of models no longer in params.yaml are removed first, so the
table and the next experiment only ever describe the current run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.evaluation import prune_stale_outputs, write_summary
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", type=Path, default=Path("metrics/models"), help="<model>/<scope>.json")
    ap.add_argument("--plots-dir", type=Path, default=Path("plots"),
                    help="<model>/<scope>.csv: per-utterance predictions (for the paired comparisons)")
    ap.add_argument("--live-dir", type=Path, default=Path("dvclive"), help="<model>/ curves and timing.json")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("metrics/summary.md"))
    ap.add_argument("--comparisons", type=Path, default=Path("metrics/comparisons.json"),
                    help="the paired comparisons as JSON")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    ensure_writable(files=[args.out, args.comparisons])
    prune_stale_outputs(params, [args.metrics_dir, args.plots_dir, args.live_dir])
    write_summary(params, args.metrics_dir, args.models_dir, args.out, args.live_dir, args.plots_dir,
                  args.comparisons)


if __name__ == "__main__":
    run_stage(main)
