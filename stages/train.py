"""train-<model>: train one model of params.yaml `models` and save its best epoch.

A killed run restarted with the same command resumes from --resume-dir.
Runs unchanged under `accelerate launch --multi_gpu --num_processes N stages/train.py ...`
(also CPU-only, over gloo; see ser.training).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage, set_torch_threads
from ser.training import train_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a key under `models:` in params.yaml")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--out-dir", type=Path, required=True, help="best checkpoint (models/<model>)")
    ap.add_argument("--resume-dir", type=Path, required=True, help="per-epoch training state (checkpoints/<model>)")
    ap.add_argument("--live-dir", type=Path, required=True, help="DVCLive metrics and plots (dvclive/<model>)")
    ap.add_argument("--timing", type=Path, help="wall-clock timing JSON, kept out of the cached --out-dir")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    # Before the first epoch, not after the last: a bad path fails in a second.
    ensure_writable(args.out_dir, args.resume_dir, args.live_dir, files=[args.timing] if args.timing else [])
    set_torch_threads(params.train.threads)
    train_model(params, args.model, args.features, args.out_dir, args.resume_dir, args.live_dir,
                timing_path=args.timing)


if __name__ == "__main__":
    run_stage(main)
