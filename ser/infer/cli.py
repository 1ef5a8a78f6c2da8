"""The `ser` command: `ser predict` (emotions of audio files), `ser report` (results table and chart) and
`ser fanout` (the pending pipeline stages as SLURM or local jobs).

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
from ser.fanout.driver import run_pending
from ser.fanout.engines import ENGINES, SubmititEngine
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
    from ser.infer.predict import FusedPredictor, Predictor, render, summary  # lazy: torch and the models

    options = dict(device=args.device, window_s=args.window, hop_s=args.hop, batch_size=args.batch_size)
    models = " + ".join(map(str, args.model))
    try:
        predictor = Predictor(args.model[0], **options) if len(args.model) == 1 else FusedPredictor(args.model, **options)
    except (CheckpointError, ValueError, OSError) as exc:
        log.error("cannot use model %s: %s", models, exc)
        return 2
    except KeyError as exc:  # a meta.json written by hand or by another version
        where = Path(args.model[0]) / "meta.json" if len(args.model) == 1 else "a member's meta.json"
        log.error("cannot use model %s: %s lacks the key %s", models, where, exc)
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


def _fanout(args: argparse.Namespace) -> int:
    extra = {}
    for item in args.slurm_opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            log.error("--slurm-opt takes KEY=VALUE (an sbatch option without its dashes), got %r", item)
            return 2
        extra[key.replace("-", "_")] = value
    if args.jobs < 1 or args.retries < 0:
        log.error("--jobs must be >= 1 and --retries >= 0")
        return 2
    root = args.repo.resolve()
    engine = SubmititEngine(args.engine, args.log_dir or root / ".dvc/tmp/fanout/jobs", gpus_per_job=args.gpus_per_job,
                            cpus_per_job=args.cpus_per_job, time_min=args.time_min, partition=args.partition,
                            slurm_extra=extra)
    records = run_pending(root, engine, targets=args.targets or None, max_jobs=args.jobs, retries=args.retries,
                          report=args.report)
    log.info("fan-out finished: %d stage(s) run and recorded; `dvc status` is clean for them",
             sum(r.status == "done" for r in records.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    # -q also after the subcommand (`ser predict -q ...`); SUPPRESS keeps a leading -q.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{predict,report,fanout}")

    p = sub.add_parser(
        "predict", parents=[common], help="predict the emotion of audio files with a trained model",
        description="Predict the emotion of audio files (any format libsndfile reads: wav, flac, ogg, mp3, "
                    "aiff, ...; any sample rate, mono or stereo; folders are searched recursively, case-"
                    "insensitively, and skipped files are counted) with a trained model directory. Long recordings are "
                    "scored in sliding windows; the file's label is the mean of the window probabilities.")
    p.add_argument("inputs", nargs="+", type=Path, help="audio files and/or folders")
    p.add_argument("--model", type=Path, required=True, action="append",
                   help="a trained model directory (meta.json + model.safetensors): one run, e.g. "
                        "models/dann/f1-s1337; repeated: the late fusion of the models (the mean of their "
                        "file probabilities, as params.yaml `fusions`)")
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

    f = sub.add_parser(
        "fanout", parents=[common], help="run the pending pipeline stages as SLURM or local jobs, recorded in dvc.lock",
        description="Run the stages `dvc repro` would run (optionally only TARGETS and what they need) as jobs, "
                    "in dependency order: each stage's own command, one job per stage, recorded with `dvc commit` "
                    "when it succeeds, so that a following `dvc repro` is a no-op. Failed jobs are retried, then "
                    "reported and not recorded. Run it from the repository on the shared filesystem.")
    f.add_argument("targets", nargs="*", help="stage names or patterns, e.g. 'train@dann-*' (default: every stage)")
    f.add_argument("--engine", choices=ENGINES, default="local",
                   help="slurm: one sbatch job per stage (submitit); local: processes on this machine")
    f.add_argument("--jobs", "-j", type=int, default=2, help="stages running at once (default: 2)")
    f.add_argument("--retries", type=int, default=2, help="re-submissions of a failed stage (default: 2)")
    f.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per stage (SLURM --gpus-per-node; default 0)")
    f.add_argument("--cpus-per-job", type=int, default=1, help="CPUs per stage (SLURM --cpus-per-task; default 1)")
    f.add_argument("--time-min", type=int, default=240, help="time limit per job in minutes (default: 240)")
    f.add_argument("--partition", default=None, help="SLURM partition")
    f.add_argument("--slurm-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="another sbatch option, e.g. account=mylab or qos=high (repeatable)")
    f.add_argument("--log-dir", type=Path, default=None, help="job scripts and logs (default: .dvc/tmp/fanout/jobs)")
    f.add_argument("--report", type=Path, default=None, help="write per-stage times and overhead as JSON here")
    f.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository (default: .)")
    f.set_defaults(func=_fanout)
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
