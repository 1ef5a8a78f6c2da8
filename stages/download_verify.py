"""download-verify: obtain every corpus a study uses (demo, download or local) and verify it.

Writes the verification report (counts, missing parts, duplicates, fingerprints)
and pins checksums of unpublished downloads in the lock file.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _venv  # noqa: F401  first: re-runs this script with .venv/bin/python if `python` lacks ser

from ser.config import load_params
from ser.data.download import fetch_and_verify, write_json_atomic
from ser.logutil import setup_logging
from ser.stageutil import ensure_writable, run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--report", default="data/reports/download_verify.json")
    ap.add_argument("--lock", default="data/checksums.lock.json")
    ap.add_argument("--raw-dir", type=Path, default=Path("data/raw"),
                    help="where demo and downloaded corpora go (created even when every corpus is local)")
    args = ap.parse_args()
    setup_logging()
    params = load_params(args.params)
    # The folder is this stage's declared output: it must exist even when every
    # corpus is `source: local` elsewhere on disk, or DVC fails the stage.
    ensure_writable(args.raw_dir, files=[args.report, args.lock])
    report = fetch_and_verify(params, Path(args.lock), downloads_dir=args.raw_dir / ".downloads")
    write_json_atomic(Path(args.report), report)


if __name__ == "__main__":
    run_stage(main)
