"""Stage precompute-embeddings: each frozen-encoder probe's encoder run once per clip.

data/features/waves/<study> -> data/features/embeddings/<study>/<key>/ (see ser.models.embeddings) for every
(study, encoder) the store plan lists; up-to-date sub-stores are kept, others removed.
"""
import argparse
import json
import logging
import shutil
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.fsutil import write_json_atomic
from ser.logutil import setup_logging
from ser.models.embeddings import precompute_embeddings
from ser.runtime import set_torch_threads
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--waves", type=Path, default=Path("data/features/waves"))
    ap.add_argument("--out-dir", type=Path, required=True, help="data/features/embeddings")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plan", type=Path, required=True, help="data/reports/embedding_plan.json (check-params)")
    ap.add_argument("--cache-dir", type=Path, help="where random encoder presets are built (default: ~/.cache/ser)")
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    set_torch_threads(params.train.threads)
    ensure_writable(args.out_dir, files=[args.report])
    plan = json.loads(args.plan.read_text())  # {study: {store key: backbone}}
    log = logging.getLogger("precompute-embeddings")
    if not plan:
        log.info("no model reads cached embeddings: nothing to build")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(p for p in args.out_dir.iterdir() if p.name not in plan):
        log.info("removing %s (no model reads it)", stale)
        shutil.rmtree(stale)
    encoders = params.probe_encoders()
    report = {study: precompute_embeddings(args.waves / study, args.out_dir / study, encoders[study],
                                           device=params.train.device, cache_dir=args.cache_dir)
              for study in plan}
    write_json_atomic(args.report, report, sort_keys=False)
    log.info("wrote %s", args.report)


if __name__ == "__main__":
    run_stage(main)
