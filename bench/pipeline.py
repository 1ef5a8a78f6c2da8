"""Benchmark: wall time of the whole pipeline from a fresh clone, a no-op re-run and an experiment.

    python bench/pipeline.py [--repo .] [--workdir DIR] [--skip-setup [--venv .venv]] [--tiny] [--keep]
                             [--repro-only]

1. `git clone` of the repository's committed HEAD into a temp dir (uncommitted
   changes are not part of it, as for any user cloning it);
2. set-up: `make setup` (a fresh .venv and `pip install -e .[dev]`; needs PyPI).
   With --skip-setup the clone's .venv is a symlink to an existing venv (--venv,
   default: this repository's .venv), `make` is told not to rebuild it
   (`make -o .venv/.installed`), and PYTHONPATH points at the clone so the stages
   import the clone's `ser`, not the venv's editable install;
3. `make repro` - every stage, from the demo corpora to metrics/summary.md;
4. `dvc repro` again - a no-op: nothing may re-run;
5. `dvc repro --force` - a full run: every stage, the evaluations whose committed
   results step 3 kept among them; every train@ and evaluate@ output (timings
   aside) must hash in dvc.lock as after step 3, else the script fails;
6. the results are committed in the clone (as a user would before an
   experiment), then `dvc exp run -S lambda_domain=0.3`: which stages re-ran
   is parsed from DVC's "Running stage" lines, and its time is reported as a
   ratio of step 5's full run (only the DANN models read lambda_domain: target
   <= 40%) and of step 3's.
Reports each wall time and the stages each run executed, with set-up excluded
and included, and where `make repro`'s time goes: seconds per stage (from DVC's
"Running stage" lines as they come) summed by stage family (train@, evaluate@, ...).
--repro-only stops after step 3; --no-full skips step 5. --tiny shrinks the demo corpora, epochs and bootstrap in the
clone's params.yaml (a smoke run of this script, minutes); its JSON goes to
bench/results/pipeline_tiny.json, the full run's to bench/results/pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
# A fresh clone's `make repro` runs every stage whose committed results no longer hold; stages whose deps
# (retrained models included) hash as in the committed dvc.lock keep their committed outputs and are skipped.
REPRO_STEP = "make repro (fresh clone)"
FULL_STEP = "dvc repro --force (every stage)"
EXP_STEP = "dvc exp run -S lambda_domain=0.3"
# Outputs that hold wall times, so a re-run writes other bytes; every other output of a train@ or evaluate@
# cell is a result, and must hash the same when the cell runs again.
TIMING_OUT = "timing.json"
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping", re.MULTILINE)
# What --tiny writes into the clone's params.yaml (the same shrink as tests/test_pipeline.py).
TINY_CLIPS = {"iemocap": 10, "ravdess": 4, "crema_d": 1, "tess": 70}


def stages_run(output: str) -> list[str]:
    """Stages DVC executed, in order, from its "Running stage 'name':" lines."""
    return RUNNING.findall(output)


def stages_skipped(output: str) -> list[str]:
    return SKIPPED.findall(output)


def shrink_params(path: Path) -> None:
    """The --tiny profile: few demo clips, one epoch per model, a short bootstrap."""
    params = yaml.safe_load(path.read_text())
    params["demo"]["clips_per_speaker"] = dict(TINY_CLIPS)
    for model in params["models"].values():
        model["epochs"] = 1
    params["evaluation"]["bootstrap"] = 50
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, str, dict[str, float]]:
    """Run `cmd`, append its output to `log`; (wall seconds, output, seconds per stage). Fails loudly with the tail.

    The output is read as it comes: a stage's time runs from its "Running stage" line to the next
    one (the last stage's, to the end of the command), so it includes DVC's own work for the stage
    (hashing, caching, the lock file) and the stage process's start-up.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    starts: list[tuple[str, float]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        started = RUNNING.match(line)
        if started:
            starts.append((started.group(1), time.perf_counter()))
    returncode = proc.wait()
    end = time.perf_counter()
    seconds, output = end - t0, "".join(lines)
    per_stage = stage_seconds(starts, end)
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}  ({seconds:.1f} s, exit {returncode})\n{output}\n")
    if returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd} (exit {returncode}); full log: {log}\n"
                           f"{output[-4000:]}")
    return seconds, output, per_stage


def stage_seconds(starts: list[tuple[str, float]], end: float) -> dict[str, float]:
    """{stage: seconds} from (stage, start time) pairs in order; the last stage ends at `end`."""
    ends = [t for _, t in starts[1:]] + [end]
    return {name: round(stop - start, 3) for (name, start), stop in zip(starts, ends)}


def stage_groups(per_stage: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per-stage seconds grouped by stage family (train@baseline-1-1337 -> train@): count, total, max."""
    groups: dict[str, dict[str, float]] = {}
    for name, seconds in per_stage.items():
        group = name.split("@")[0] + "@" if "@" in name else name
        g = groups.setdefault(group, {"stages": 0, "seconds": 0.0, "max": 0.0})
        g["stages"] += 1
        g["seconds"] = round(g["seconds"] + seconds, 3)
        g["max"] = max(g["max"], seconds)
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["seconds"]))


def experiment_floor(exp_stage_seconds: dict[str, float], repro: float) -> dict[str, float]:
    """What the experiment cannot go below without changing its models: its train@ cells' wall time, and
    with their evaluate@ cells, as shares of make repro (set-up, check-params, bind, summarize and
    DVC's work between stages come on top)."""
    train = sum(v for k, v in exp_stage_seconds.items() if k.startswith("train@"))
    evaluate = sum(v for k, v in exp_stage_seconds.items() if k.startswith("evaluate@"))
    return {"train_cells_s": round(train, 1), "train_cells_share": round(train / repro, 3),
            "train_and_evaluate_cells_s": round(train + evaluate, 1),
            "train_and_evaluate_cells_share": round((train + evaluate) / repro, 3)}


def cell_outputs(lock: dict) -> dict[str, str]:
    """{output path: md5} of every train@ and evaluate@ cell in a parsed dvc.lock, timing files left out."""
    return {out["path"]: out.get("md5", "") for name, stage in lock.get("stages", {}).items()
            if name.startswith(("train@", "evaluate@")) for out in stage.get("outs", [])
            if not out["path"].endswith(TIMING_OUT)}


def changed_results(before: dict, after: dict) -> list[str]:
    """Cell outputs whose hash differs between two parsed dvc.lock files (or that only one of them has)."""
    old, new = cell_outputs(before), cell_outputs(after)
    return sorted(path for path in old.keys() | new.keys() if old.get(path) != new.get(path))


def clone(repo: Path, dest: Path) -> str:
    """Clone the committed HEAD of `repo` into `dest`; returns the commit id."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(repo), str(dest)], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, check=True, capture_output=True, text=True)
    for key, value in (("user.email", "bench@localhost"), ("user.name", "bench")):
        subprocess.run(["git", "config", key, value], cwd=dest, check=True)
    return head.stdout.strip()


def format_table(rows: list[dict]) -> str:
    lines = [f"{'step':44s} {'wall s':>8s}  stages run"]
    for r in rows:
        ran = r.get("stages_run")
        shown = "-" if ran is None else f"{len(ran)}" + (f": {', '.join(ran)}" if ran and len(ran) < 8 else "")
        lines.append(f"{r['step']:44s} {r['seconds']:8.1f}  {shown}")
    return "\n".join(lines)


def format_groups(groups: dict[str, dict[str, float]], per_stage: dict[str, float], top: int = 8,
                  title: str = "make repro") -> str:
    """A run's time by stage family, then its slowest stages."""
    total = sum(per_stage.values()) or 1.0
    lines = [f"{title + ' by stage family':44s} {'wall s':>8s} {'share':>6s} {'stages':>6s} {'max s':>7s}"]
    for group, g in groups.items():
        lines.append(f"{group:44s} {g['seconds']:8.1f} {g['seconds'] / total:6.1%} {int(g['stages']):6d} "
                     f"{g['max']:7.1f}")
    lines.append("slowest stages: " + ", ".join(
        f"{name} {sec:.1f} s" for name, sec in sorted(per_stage.items(), key=lambda kv: -kv[1])[:top]))
    return "\n".join(lines)


class _Done(Exception):
    """--repro-only: the steps after `make repro` are skipped."""


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="repository to clone (its committed HEAD)")
    ap.add_argument("--workdir", type=Path, help="where to clone (default: a temp dir, removed unless --keep)")
    ap.add_argument("--skip-setup", action="store_true", help="reuse an existing venv instead of `make setup`")
    ap.add_argument("--venv", type=Path, default=REPO / ".venv", help="the venv --skip-setup reuses")
    ap.add_argument("--tiny", action="store_true", help="shrink the demo profile in the clone (smoke run)")
    ap.add_argument("--keep", action="store_true", help="keep the clone")
    ap.add_argument("--repro-only", action="store_true", help="stop after `make repro` (no no-op run, no experiment)")
    ap.add_argument("--no-full", action="store_true", help="skip the forced full run (`dvc repro --force`)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    if args.skip_setup and not (args.venv / "bin" / "dvc").exists():
        ap.error(f"--skip-setup: {args.venv} has no bin/dvc; give --venv a venv made by `make setup`")
    load_before = os.getloadavg()[0]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="ser-pipeline-"))
    dest = base / "ser"
    log = base / "pipeline.log"
    kept_log = log if args.keep or args.workdir else Path(tempfile.gettempdir()) / "ser-pipeline-last.log"
    base.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        sys.exit(f"{dest} exists; remove it or pass another --workdir")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The caller's environment (an activated venv, PYTHONPATH) must not leak into the clone's runs.
    active = env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    if active:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(active))
    rows: list[dict] = []
    try:
        t0 = time.perf_counter()
        commit = clone(args.repo.resolve(), dest)
        rows.append({"step": "git clone", "seconds": time.perf_counter() - t0})
        if args.tiny:
            shrink_params(dest / "params.yaml")
        make = ["make"]
        if args.skip_setup:
            (dest / ".venv").symlink_to(args.venv.resolve(), target_is_directory=True)
            make = ["make", "-o", ".venv/.installed"]
            # The venv's editable install points at another checkout: import the clone's ser first.
            env["PYTHONPATH"] = str(dest)
        else:
            seconds, _, _ = run(["make", "setup"], dest, env, log)
            rows.append({"step": "make setup (fresh .venv, pip install)", "seconds": seconds})
        env["PATH"] = f"{dest / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
        which = subprocess.run([str(dest / ".venv" / "bin" / "python"), "-c", "import ser; print(ser.__file__)"],
                               cwd=dest, env=env, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(which).resolve().is_relative_to(dest.resolve()):
            raise RuntimeError(f"the clone's stages would import ser from {which}, not from {dest}")

        seconds, out, per_stage = run(make + ["repro"], dest, env, log)
        rows.append({"step": REPRO_STEP, "seconds": seconds, "stages_run": stages_run(out),
                     "stages_skipped": stages_skipped(out), "stage_seconds": per_stage})
        if args.repro_only:
            raise _Done
        seconds, out, _ = run(["dvc", "repro"], dest, env, log)
        rows.append({"step": "dvc repro (no-op)", "seconds": seconds, "stages_run": stages_run(out),
                     "stages_skipped": stages_skipped(out)})
        if not args.no_full:
            lock_before = yaml.safe_load((dest / "dvc.lock").read_text())
            seconds, out, per_stage = run(["dvc", "repro", "--force"], dest, env, log)
            rows.append({"step": FULL_STEP, "seconds": seconds, "stages_run": stages_run(out),
                         "stage_seconds": per_stage})
            changed = changed_results(lock_before, yaml.safe_load((dest / "dvc.lock").read_text()))
            if changed:
                raise RuntimeError(f"`dvc repro --force` did not reproduce make repro's results: {changed}")
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True, capture_output=True)
        subprocess.run(["git", "commit", "-qm", "bench: results"], cwd=dest, check=True, capture_output=True)
        seconds, out, per_stage = run(["dvc", "exp", "run", "-S", "lambda_domain=0.3"], dest, env, log)
        rows.append({"step": EXP_STEP, "seconds": seconds, "stages_run": stages_run(out),
                     "stages_skipped": stages_skipped(out), "stage_seconds": per_stage,
                     # DVC's own work before the first stage starts (the experiment's set-up)
                     "before_first_stage": round(seconds - sum(per_stage.values()), 3)})
    except _Done:
        pass
    finally:
        if not args.keep and args.workdir is None:
            # The clone goes (it holds corpora, models and a DVC cache); its log is kept.
            if log.exists():
                shutil.copy2(log, kept_log)
            shutil.rmtree(base, ignore_errors=True)

    by = {r["step"]: r for r in rows}
    repro = by[REPRO_STEP]["seconds"]
    setup = sum(r["seconds"] for r in rows if r["step"].startswith(("git clone", "make setup")))
    summary = {"set-up excluded: make repro": repro}
    if not args.skip_setup:
        summary["set-up included: clone + make setup + make repro"] = setup + repro
    print(f"\npipeline from a fresh clone of {args.repo.resolve()} @ {commit[:12]}"
          f"{' (--tiny profile)' if args.tiny else ''}; {os.cpu_count()} CPU cores "
          f"(1-min load average before: {load_before:.2f}); "
          + ("set-up skipped: existing venv " + str(args.venv) if args.skip_setup else "fresh venv via make setup"))
    print(format_table(rows))
    for name, seconds in summary.items():
        print(f"{name:44s} {seconds:8.1f}")
    per_stage = by[REPRO_STEP]["stage_seconds"]
    skipped = by[REPRO_STEP]["stages_skipped"]
    if skipped:
        print(f"make repro skipped {len(skipped)} stage(s) whose committed results still hold (their deps, the "
              f"retrained models included, hash as in the committed dvc.lock): {skipped}")
    groups = stage_groups(per_stage)
    print(format_groups(groups, per_stage))
    if not args.repro_only:
        noop, exp = by["dvc repro (no-op)"], by[EXP_STEP]
        trained = sorted({s.split("@", 1)[1].rsplit("-", 2)[0] for s in exp["stages_run"] if s.startswith("train@")})
        summary["experiment / make repro"] = round(exp["seconds"] / repro, 3)
        print(format_groups(stage_groups(exp["stage_seconds"]), exp["stage_seconds"], title="experiment"))
        print(f"experiment set-up before its first stage: {exp['before_first_stage']:.1f} s")
        print(f"no-op repro re-ran {len(noop['stages_run'])} stage(s); the experiment re-ran "
              f"{exp['stages_run']}")
        print(f"experiment (lambda_domain=0.3) trained {trained}: {exp['seconds']:.1f} s = "
              f"{100 * exp['seconds'] / repro:.0f}% of make repro")
        if FULL_STEP in by:
            full = by[FULL_STEP]
            summary["set-up excluded: full run (every stage)"] = full["seconds"]
            summary["experiment / full run"] = round(exp["seconds"] / full["seconds"], 3)
            print(format_groups(stage_groups(full["stage_seconds"]), full["stage_seconds"], title="full run"))
            print(f"full run: {len(full['stages_run'])} stages in {full['seconds']:.1f} s, every model's weights and "
                  f"metrics as after make repro; the experiment = {100 * exp['seconds'] / full['seconds']:.0f}% of "
                  f"it (target: at most 40%)")
        floor = experiment_floor(exp["stage_seconds"], repro)
        summary["experiment floor"] = floor
        print(f"of which its train cells {floor['train_cells_s']:.1f} s = {100 * floor['train_cells_share']:.1f}% "
              f"of make repro, with their evaluations {floor['train_and_evaluate_cells_s']:.1f} s = "
              f"{100 * floor['train_and_evaluate_cells_share']:.1f}%: the share no per-stage speed-up removes")
    out = args.out or REPO / "bench" / "results" / ("pipeline_tiny.json" if args.tiny else "pipeline.json")
    payload = {"repo": str(args.repo.resolve()), "commit": commit, "tiny": args.tiny, "skip_setup": args.skip_setup,
               "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "load_average_before": round(load_before, 2), "steps": rows, "summary": summary,
               "stage_groups": groups,
               "log": str(kept_log)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
