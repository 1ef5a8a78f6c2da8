"""summarize: the results table (metrics/summary.md) from the evaluation metrics and model metadata."""
from __future__ import annotations

import argparse
from pathlib import Path

from ser.config import load_params
from ser.evaluation import write_summary
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", type=Path, default=Path("metrics"), help="holds in_domain/ and ravdess/")
    ap.add_argument("--models-dir", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("metrics/summary.md"))
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    ensure_writable(files=[args.out])
    write_summary(params, args.metrics_dir, args.models_dir, args.out)


if __name__ == "__main__":
    run_stage(main)
