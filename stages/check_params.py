"""check-params: validate every key of params.yaml on every `dvc repro`.

The first stage of the DAG depends on the whole params file and on the schema,
so a misspelled key (`lamda_domain: 0.3`) or a misspelled model section fails
the run at once, naming the key, even when no other stage depends on it. So does
an encoder backbone that the local disk already refutes: an unknown `random:`
preset, a directory that is not there, or a backbone that expects audio at
another rate than `features.sample_rate` (ser.backbones.check_backbones). The
report it writes changes only with the schema's verdict, so a valid edit does
not re-run anything downstream by itself.

It also writes the store plan (--plan): which feature stores the models need,
{kind: [study, ...]}. The precompute stages build only those, and re-run only
when the plan changes (a model with a new input), not on every model edit.
The embedding plan (--embedding-plan) lists the frozen encoders whose embeddings
the probes read, {study: {store key: backbone}}, for precompute-embeddings.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.backbones import check_backbones
from ser.config import load_params
from ser.fsutil import write_json_atomic
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="data/reports/params_check.json")
    ap.add_argument("--plan", type=Path, help="data/reports/store_plan.json: the stores the models need")
    ap.add_argument("--embedding-plan", type=Path,
                    help="data/reports/embedding_plan.json: {study: {store key: backbone}} of the probes' encoders")
    args = ap.parse_args(argv)
    setup_logging()
    ensure_writable(files=[args.out, *(p for p in (args.plan, args.embedding_plan) if p)])
    params = load_params(args.params)  # raises ParamsError naming the key
    check_backbones(params)  # presets, local directories, the audio rate they expect
    write_json_atomic(args.out, {"params": str(args.params), "valid": True})
    if args.plan:
        write_json_atomic(args.plan, params.store_plan())
    if args.embedding_plan:
        write_json_atomic(args.embedding_plan, params.embedding_plan())


if __name__ == "__main__":
    run_stage(main)
