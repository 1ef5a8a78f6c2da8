"""Stages precompute-<kind>: one feature store per study.

data/manifests/<study>/f<k>.csv -> <out-dir>/<study>/{meta.json,clips.npy,clips.csv,f<k>/} + report JSON
(every clip once; one index folder per fold, see ser.features.stores).
--kind mels: normalised log-mels; --kind waves: 16 kHz waveforms for the encoder models;
--kind egemaps / compare / ge2e: utterance-level vectors (openSMILE functionals, GE2E speaker-encoder layer
means) for the classical and MLP heads.
"""
import argparse
import functools
import json
import logging
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import FUNCTIONALS, load_params
from ser.features.precompute import precompute_functionals, precompute_mels, precompute_waves
from ser.fsutil import write_json_atomic
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage

KINDS = {"mels": precompute_mels, "waves": precompute_waves,
         **{kind: functools.partial(precompute_functionals, kind=kind) for kind in FUNCTIONALS}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", required=True, choices=sorted(KINDS))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifests", type=Path, default=Path("data/manifests"), help="folder of <study>/f<k>.csv")
    ap.add_argument("--out-dir", type=Path, required=True, help="data/features/<kind>")
    ap.add_argument("--report", type=Path, required=True, help="data/reports/<kind>.json")
    ap.add_argument("--plan", type=Path, help="data/reports/store_plan.json (check-params): build only the "
                                              "studies a model reads; without it, every study")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    ensure_writable(args.out_dir, files=[args.report])
    wanted = (json.loads(args.plan.read_text()).get(args.kind, []) if args.plan else list(params.studies))
    log = logging.getLogger(f"precompute-{args.kind}")
    if not wanted:
        log.info("no model reads %s features: nothing to build", args.kind)
    fp = params.features.for_store(args.kind)  # this family's own front end (features.front_end.<kind>)
    report = {name: KINDS[args.kind](args.manifests, name, args.out_dir / name, fp,
                                     params.runtime.workers, labels=study.labels, target=study.target)
              for name, study in params.studies.items() if name in wanted}
    write_json_atomic(args.report, report, sort_keys=False)
    log.info("wrote %s", args.report)


if __name__ == "__main__":
    run_stage(main)
