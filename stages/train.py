"""train@<model>-<fold>-<seed>: train one run of a model of params.yaml `models` and save its best epoch.

A killed run restarted with the same command resumes from --resume-dir.
A fold the model's study does not have records not_run.json and exits (see ser.runs).
Runs unchanged under `accelerate launch --multi_gpu --num_processes N stages/train.py ...`
(also CPU-only, over gloo; see ser.train.loop).
"""
from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.logutil import setup_logging
from ser.runs import check_spec, mark_not_run, not_run_reason, read_bind
from ser.runtime import set_torch_threads
from ser.stageutil import ensure_writable, run_stage, staged


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a key under `models:` in params.yaml")
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--bind", type=Path, required=True, help="data/bind/<model>.json (bind@<model>)")
    ap.add_argument("--features", type=Path, default=Path("data/features"))
    ap.add_argument("--out-dir", type=Path, required=True, help="best checkpoint (models/<model>/f<k>-s<seed>)")
    ap.add_argument("--resume-dir", type=Path, required=True, help="per-epoch training state")
    ap.add_argument("--live-dir", type=Path, required=True, help="DVCLive metrics and plots")
    ap.add_argument("--timing", type=Path, help="wall-clock timing JSON, kept out of the cached --out-dir")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    mp = params.model(args.model)
    # Before the first epoch, not after the last: a bad path fails in a second.
    ensure_writable(args.out_dir, args.resume_dir, args.live_dir, files=[args.timing] if args.timing else [])
    bind = read_bind(args.bind, args.model, mp.input, mp.study)
    check_spec(bind, params.run_spec(args.model), args.bind)  # the params DVC tracked for this run
    reason = not_run_reason(bind, args.fold)
    if reason:
        mark_not_run(reason, [args.out_dir], [args.live_dir / "metrics.json", *([args.timing] if args.timing else [])],
                     empty_dirs=[args.live_dir / "plots"])
        return
    set_torch_threads(params.train.threads)
    from ser.train.learners import train_model

    # The DVCLive folder (its metrics, plots and, in it, timing.json) is not cached by DVC: it is
    # written aside and replaces the previous run's only when training succeeds. Under `accelerate
    # launch` only rank 0 writes them (ser.train.loop), so only rank 0 stages and publishes them.
    timing_inside = args.timing is not None and args.live_dir in args.timing.parents
    outputs = [args.live_dir] + ([args.timing] if args.timing is not None and not timing_inside else [])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with staged(*outputs) if rank0 else nullcontext(outputs) as (live_dir, *rest):
        timing = live_dir / args.timing.relative_to(args.live_dir) if timing_inside else (rest[0] if rest else None)
        train_model(params.for_run(args.fold, args.seed), args.model, args.features, args.out_dir,
                    args.resume_dir, live_dir, timing_path=timing)


if __name__ == "__main__":
    run_stage(main)
