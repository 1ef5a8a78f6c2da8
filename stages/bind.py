"""bind: for every model, record which feature store it reads, that store's fingerprint and its run spec.

data/bind/<model>.json changes only when the model's own store or the params
its runs read (`Params.run_spec`) do, so the model's train@ and evaluate@ cells
re-run for their own features and settings and no others (ser.runs.write_binds).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.logutil import setup_logging
from ser.runs import write_binds
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--features", type=Path, default=Path("data/features"),
                    help="the stores: <features>/<input>/<study> (embeddings: the encoder's sub-store inside it)")
    ap.add_argument("--out-dir", type=Path, required=True, help="data/bind: one <model>.json per model")
    args = ap.parse_args(argv)
    setup_logging()
    ensure_writable(args.out_dir)
    write_binds(load_params(args.params), args.features, args.out_dir)


if __name__ == "__main__":
    run_stage(main)
