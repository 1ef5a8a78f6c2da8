"""bind@<model>: record which feature store a model reads, its fingerprint, and the model's run spec.

data/bind/<model>.json changes only when the model's own store or the params
its runs read (`Params.run_spec`) do, so the model's train@ and evaluate@ cells
re-run for their own features and settings and no others.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.logutil import setup_logging
from ser.runs import write_bind
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True, help="the model's input kind (its store)")
    ap.add_argument("--study", required=True)
    ap.add_argument("--store", type=Path, required=True, help="data/features/<input>/<study> (embeddings: the "
                                                             "model's encoder sub-store inside it)")
    ap.add_argument("--out", type=Path, required=True, help="data/bind/<model>.json")
    args = ap.parse_args(argv)
    setup_logging()
    ensure_writable(files=[args.out])
    params = load_params(args.params)
    key = params.models[args.model].store_key
    write_bind(args.model, args.input, args.study, args.store / key if key else args.store, args.out,
               spec=params.run_spec(args.model))


if __name__ == "__main__":
    run_stage(main)
