"""Stage precompute-mels: one normalised log-mel store per study.

data/manifests/<study>.csv -> <out-dir>/<study>/{meta.json,<split>.npy,<split>.csv} + report JSON.
"""
import argparse
import json
import logging
from pathlib import Path

from ser.config import load_params
from ser.features import precompute_mels
from ser.logutil import setup_logging


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifests", type=Path, default=Path("data/manifests"), help="folder of <study>.csv")
    ap.add_argument("--out-dir", type=Path, default=Path("data/features/mels"))
    ap.add_argument("--report", type=Path, default=Path("data/reports/mels.json"))
    args = ap.parse_args()
    setup_logging()
    params = load_params(args.params)
    report = {name: precompute_mels(args.manifests / f"{name}.csv", args.out_dir / name, params.features,
                                    labels=study.labels, target=study.target)
              for name, study in params.studies.items()}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    logging.getLogger("precompute-mels").info("wrote %s", args.report)


if __name__ == "__main__":
    main()
