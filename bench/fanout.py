"""Benchmark and check: `ser fanout` against a sequential `dvc repro` on the demo's real cells.

    python bench/fanout.py [--repo .] [--set KEY=VALUE ...] [--engine slurm|local] [--jobs 2]
                           [--workdir DIR] [--keep] [TARGET ...]

Default: --set lambda_domain=0.3 --set train.threads=1 '*dann-*' (the three DANN models' cells, one
torch thread per job so that 2 jobs share 2 cores without oversubscribing them).

Needs a reproduced workspace (`make repro`, then `dvc status` clean). Two copies of the workspace
(code, params, dvc.lock and every output; not .venv, the DVC cache or resume checkpoints) share its DVC
cache; each gets the same params changes (`--set`, as `dvc exp run -S` would make them). One runs `dvc repro --no-run-cache` (every stage the
change touches, one at a time), the other `ser fanout` with --jobs workers: through SLURM (a one-node
cluster on 127.0.0.1 started here, ser.fanout.localslurm, unless SLURM_CONF names one) or local
processes. TARGETs (stage names or patterns, as `ser fanout` takes them) limit both runs to those
stages and what they need. Then:
- every stage's outputs in the two dvc.lock files must hash the same, and every evaluation metrics
  file and DVCLive metrics.json must be byte-identical (timing.json and the summary's wall times aside);
- after the fan-out, `dvc status` is clean and `dvc repro` runs nothing (for the TARGETs, if given).
Prints both wall times, their ratio and the fan-out's overhead per job (job wall time minus the
stage command's own time; and the `dvc commit` that records each stage), and writes
bench/results/fanout.json. Exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import REPO, run, stages_run  # noqa: E402

DEFAULT_SET = ("lambda_domain=0.3", "train.threads=1")
DEFAULT_TARGETS = ("*dann-*",)
# Uncached outputs that hold results (wall-clock times live in timing.json and the summary).
RESULT_GLOBS = ("metrics/models/**/*.json", "dvclive/*/*/metrics.json")


def apply_set(params: Path, assignment: str) -> None:
    """`key.sub=value` into params.yaml, as `dvc exp run -S` does (value parsed as YAML)."""
    key, _, value = assignment.partition("=")
    doc = yaml.safe_load(params.read_text())
    node = doc
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    if leaf not in node:
        raise SystemExit(f"--set {assignment}: params.yaml has no key {key}")
    node[leaf] = yaml.safe_load(value)
    params.write_text(yaml.safe_dump(doc, sort_keys=False))


# Not copied: the venv, the DVC cache (shared instead), DVC's scratch, training resume state, scratch.
SKIP = {".venv", "checkpoints", "dvc_plots", "__pycache__", ".pytest_cache"}


def prepare(repo: Path, dest: Path, assignments: list[str], env: dict[str, str]) -> None:
    """A copy of the reproduced workspace that uses the workspace's DVC cache, with the params change."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = SKIP & set(names)
        if Path(folder).resolve() == (repo / ".dvc").resolve():
            skipped |= {"cache", "tmp"} & set(names)
        return skipped

    shutil.copytree(repo, dest, symlinks=True, ignore=ignore)
    subprocess.run(["dvc", "cache", "dir", "--local", str(repo / ".dvc" / "cache")], cwd=dest, env=env, check=True)
    for assignment in assignments:
        apply_set(dest / "params.yaml", assignment)


def expand(repo: Path, targets: list[str], env: dict[str, str]) -> list[str]:
    """Stage names matching the TARGET patterns (`dvc repro` takes names, `ser fanout` patterns)."""
    if not targets:
        return []
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=repo, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    names = [n for n in out if any(fnmatch.fnmatchcase(n, t) for t in targets)]
    if not names:
        raise SystemExit(f"no stage matches {targets}")
    return names


def lock_outs(root: Path) -> dict[str, list[str]]:
    """Each stage's outputs and their hashes in dvc.lock; timing.json (wall-clock seconds) aside."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: sorted(f"{o['path']}:{o.get('md5')}" for o in st.get("outs", [])
                         if not o["path"].endswith("timing.json")) for name, st in stages.items()}


def result_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for g in RESULT_GLOBS for p in sorted(root.glob(g))}


def compare(seq: Path, fan: Path) -> list[str]:
    problems = []
    a, b = lock_outs(seq), lock_outs(fan)
    for stage in sorted(set(a) | set(b)):
        if stage == "summarize":
            continue  # its tables carry the runs' wall-clock training times
        if a.get(stage) != b.get(stage):
            problems.append(f"dvc.lock outs differ for {stage}: {a.get(stage)} vs {b.get(stage)}")
    fa, fb = result_files(seq), result_files(fan)
    problems += [f"{name} differs" for name in sorted(set(fa) | set(fb)) if fa.get(name) != fb.get(name)]
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help="stage names or patterns (default: every stage)")
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--set", dest="assignments", action="append", default=None, metavar="KEY=VALUE")
    ap.add_argument("--engine", choices=("slurm", "local"), default="slurm")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the clones")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fanout.json")
    args = ap.parse_args(argv)
    if args.assignments is None and not args.targets:
        args.assignments, args.targets = list(DEFAULT_SET), list(DEFAULT_TARGETS)
    args.assignments = args.assignments or []
    repo = args.repo.resolve()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ser-fanout-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv_bin = repo / ".venv" / "bin"
    log = work / "bench.log"
    base_env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}

    cluster = None
    if args.engine == "slurm" and not os.environ.get("SLURM_CONF"):
        sys.path.insert(0, str(repo))
        from ser.fanout.localslurm import LocalSlurm
        cluster = LocalSlurm(work / "slurm", cpus=os.cpu_count() or 2).start()
        base_env.update(cluster.env)
    try:
        dirty = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=base_env, capture_output=True, text=True,
                               check=True).stdout.strip()
        if json.loads(dirty or "{}"):
            raise SystemExit(f"{repo}: `dvc status` is not clean ({sorted(json.loads(dirty))[:5]}...); "
                             "run `dvc repro` first")
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        selected = expand(repo, args.targets, base_env)
        rows = {}
        for name in ("sequential", "fanout"):
            root = work / name
            env = {**base_env, "PYTHONPATH": str(root)}
            prepare(repo, root, args.assignments, env)
            if name == "sequential":
                seconds, output, _ = run(["dvc", "repro", "--no-run-cache", *selected], root, env, log)
                rows[name] = {"seconds": round(seconds, 1), "stages_run": stages_run(output)}
            else:
                report = work / "fanout-report.json"
                seconds, _, _ = run(["ser", "fanout", "--engine", args.engine, "--jobs", str(args.jobs),
                                     "--log-dir", str(work / "jobs"), "--report", str(report), *args.targets],
                                    root, env, log)
                rows[name] = {"seconds": round(seconds, 1), "report": json.loads(report.read_text())}
                status = subprocess.run(["dvc", "status", "--json", *selected], cwd=root, env=env,
                                        capture_output=True, text=True, check=True).stdout.strip()
                _, again, _ = run(["dvc", "repro", *selected], root, env, log)
                rows[name]["status_after"] = json.loads(status or "{}")
                rows[name]["repro_after_ran"] = stages_run(again)
        problems = compare(work / "sequential", work / "fanout")
        fan = rows["fanout"]
        if fan["status_after"]:
            problems.append(f"dvc status after the fan-out: {sorted(fan['status_after'])}")
        if fan["repro_after_ran"]:
            problems.append(f"dvc repro after the fan-out ran {fan['repro_after_ran']}")
        cells = [c for c in fan["report"]["cells"] if c["status"] == "done"]
        ran_seq = sorted(rows["sequential"]["stages_run"])
        if sorted(c["stage"] for c in cells) != ran_seq:
            problems.append(f"stages differ: sequential ran {ran_seq}, fan-out {sorted(c['stage'] for c in cells)}")
        result = {
            "commit": commit, "set": args.assignments, "targets": args.targets, "engine": args.engine, "jobs": args.jobs,
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "sequential_s": rows["sequential"]["seconds"], "fanout_s": fan["seconds"],
            "fanout / sequential": round(fan["seconds"] / rows["sequential"]["seconds"], 3),
            "stages": len(cells),
            "overhead_per_job_s": {"mean": fan["report"]["mean_overhead_s"],
                                   "max": max((c["overhead_s"] for c in cells), default=None),
                                   "start_latency_mean": fan["report"]["mean_start_latency_s"],
                                   "end_latency_mean": fan["report"]["mean_end_latency_s"]},
            "record_per_job_s": fan["report"]["mean_record_s"],
            "identical": not problems, "problems": problems, "cells": fan["report"]["cells"],
        }
    finally:
        if cluster is not None:
            cluster.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{' '.join(args.assignments)} {' '.join(args.targets)}: {len(cells)} stages; sequential dvc repro {result['sequential_s']:.1f} s, "
          f"ser fanout --engine {args.engine} --jobs {args.jobs} {result['fanout_s']:.1f} s "
          f"(ratio {result['fanout / sequential']:.2f})")
    o = result["overhead_per_job_s"]
    print(f"overhead per job: mean {o['mean']} s, max {o['max']:.2f} s (job wall time minus the stage command's: "
          f"submit to start {o['start_latency_mean']} s, end to seen {o['end_latency_mean']} s); "
          f"dvc commit per stage: mean {result['record_per_job_s']} s")
    print("identical weights and metrics, clean dvc status, no-op dvc repro: " +
          ("yes" if not problems else "NO\n  " + "\n  ".join(problems)))
    print(f"wrote {args.out}")
    if not args.keep and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
