"""build-metadata: scan the corpora, write data/manifests/<study>/f<k>.csv (one manifest per fold) and the metadata report."""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.data.metadata import build_manifests, corpus_roots, write_outputs
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--verify-report", type=Path, default=None,
                    help="download-verify's JSON ({'corpora': {name: {'root': path}}}); "
                         "without it, corpora.<name>.path is used")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", type=Path, default=Path("data/manifests"))
    ap.add_argument("--report", type=Path, default=Path("data/reports/metadata.json"))
    args = ap.parse_args(argv)
    setup_logging()
    params = load_params(args.params)
    ensure_writable(args.out_dir, files=[args.report])
    manifests, report = build_manifests(params, corpus_roots(params, args.verify_report))
    write_outputs(manifests, report, args.out_dir, args.report)


if __name__ == "__main__":
    run_stage(main)
