"""The `ser` command: `ser predict` (emotions of audio files) and `ser report` (results table and chart).

Exit status: 0 on success; 1 when some input failed (predict: an unreadable,
empty, silent or too-short file; its error row is in the output) or there is
nothing to report; 2 for a usage error or a model that cannot be loaded.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ser.errors import CheckpointError, SerError
from ser.logutil import setup_logging
from ser.runtime import torch_threads
from ser.stageutil import ensure_writable

log = logging.getLogger("ser.infer.cli")


def _predict(args: argparse.Namespace) -> int:
    from ser.infer.predict import collect_audio  # lazy: torch and the models; `ser report` needs neither

    if args.threads is not None and args.threads < 1:
        log.error("--threads must be >= 1, got %d", args.threads)
        return 2
    if args.output is not None:
        ensure_writable(files=[args.output])  # before the scoring, not after it
    files = collect_audio(args.inputs)
    if not files:
        log.error("no audio files found in %s", ", ".join(map(str, args.inputs)))
        return 2
    with torch_threads(args.threads):
        return _score(args, files)


def _score(args: argparse.Namespace, files: list[Path]) -> int:
    from ser.infer.predict import Predictor, render, summary  # lazy: torch and the models

    try:
        predictor = Predictor(args.model, device=args.device, window_s=args.window, hop_s=args.hop,
                              batch_size=args.batch_size)
    except (CheckpointError, ValueError, OSError) as exc:
        log.error("cannot use model %s: %s", args.model, exc)
        return 2
    except KeyError as exc:  # a meta.json written by hand or by another version
        log.error("cannot use model %s: %s lacks the key %s", args.model, Path(args.model) / "meta.json", exc)
        return 2
    results = predictor.predict_files(files)
    text = render(results, predictor, args.format)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        log.info("wrote %s", args.output)
    else:
        sys.stdout.write(text)
    failed = sum(not r.ok for r in results)
    (log.warning if failed else log.info)("%s", summary(results))
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from ser.eval.report import write_report  # lazy: matplotlib; `ser predict` does not need it

    try:
        md, png = write_report(args.metrics_dir, args.out_dir, args.repo, experiments=not args.no_experiments)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    log.info("report: %s, %s", md, png)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    # -q also after the subcommand (`ser predict -q ...`); SUPPRESS keeps a leading -q.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,report}")

    p = sub.add_parser(
        "predict", parents=[common], help="predict the emotion of audio files with a trained model",
        description="Predict the emotion of audio files (any format libsndfile reads: wav, flac, ogg, mp3, "
                    "aiff, ...; any sample rate, mono or stereo; folders are searched recursively, case-"
                    "insensitively, and skipped files are counted) with a trained model directory. Long recordings are "
                    "scored in sliding windows; the file's label is the mean of the window probabilities.")
    p.add_argument("inputs", nargs="+", type=Path, help="audio files and/or folders")
    p.add_argument("--model", type=Path, required=True,
                   help="a trained model directory (meta.json + model.safetensors): one run, e.g. "
                        "models/dann/f1-s1337")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--window", type=float, default=None,
                   help="window length in seconds (default: the clip length the model was trained on: "
                        "3 s for the log-mel models, encoder.max_seconds for the encoder models)")
    p.add_argument("--hop", type=float, default=None, help="hop between windows in seconds (default: window / 2)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: OMP_NUM_THREADS, else the cores this process may use)")
    p.add_argument("--output", "-o", type=Path, default=None, help="write the results here instead of stdout")
    p.set_defaults(func=_predict)

    r = sub.add_parser(
        "report", parents=[common], help="markdown table + PNG chart of the metrics, workspace and DVC experiments",
        description="Collect metrics/aggregate.json (every model's results over folds and seeds) of the "
                    "workspace and of the finished DVC experiments (`dvc exp show --json`) into report.md and "
                    "report.png.")
    r.add_argument("--metrics-dir", type=Path, default=Path("metrics"), help="the workspace metrics (default: metrics)")
    r.add_argument("--out-dir", type=Path, default=Path("reports"), help="where report.md/report.png go")
    r.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository holding the experiments")
    r.add_argument("--no-experiments", action="store_true", help="report the workspace metrics only")
    r.set_defaults(func=_report)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("WARNING" if args.quiet else None)
    try:
        return args.func(args)
    except SerError as exc:  # an expected error: its message, no traceback (exit 2: fix an input)
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
