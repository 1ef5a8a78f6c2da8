"""Real-data check: the pipeline's own params and stages on real EmoDB and RAVDESS recordings.

Two set-ups, each a DVC project of its own under --workdir (dvc.yaml and
stages/ copied from this repository, params.yaml written from this
repository's params.yaml with the corpora, studies and splits replaced, one
fold and the seed of the round as `seeds: [<seed>]`):

  cross      EmoDB -> RAVDESS, 4 classes (angry, happy, neutral, sad): EmoDB is
             the labeled source (validation speakers 03 and 08, no test
             speakers: it only trains), RAVDESS actors 1-6 are the unlabeled
             adaptation group, actors 7-12 the test group.
  in_domain  RAVDESS alone: train actors 1-8, validation 9-10, test 11-12.

Every model of params.yaml that reads log-mels or openSMILE features is run
(cross: all of them; in_domain: those without the DANN objective); the tiny
random encoder models of the demo profile (wav2vec2 fine-tunes, the WavLM probe) are left out
(`--with-waves` keeps them; they learn nothing from real speech without pretrained weights). For each
seed `dvc repro` runs the DAG (a new seed re-runs only training and
evaluation), then the metrics files are read. Printed per model: UAR and
accuracy with bootstrap intervals per seed, the mean over seeds, and the share
of the most-predicted class. Results go to bench/results/realdata.json.

    python bench/realdata.py --emodb ../shared/realdata/emodb \\
        --ravdess ../shared/realdata/ravdess-actors-01-12 --workdir /tmp/ser-realdata

EmoDB is read through the generic CSV adapter (`metadata.csv`: path, speaker,
emotion, ...); RAVDESS through its own adapter (Actor_NN/03-01-EE-II-SS-RR-AA).
Nothing here is tied to these copies: any EmoDB and RAVDESS in those layouts work.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]
EMODB_LABELS = {"anger": "angry", "happiness": "happy", "neutral": "neutral", "sadness": "sad",
                "boredom": "", "disgust": "", "fear": ""}


def _emodb(path: Path) -> dict[str, Any]:
    return {"source": "local", "path": str(path), "adapter": "csv", "csv": "metadata.csv",
            "label_map": EMODB_LABELS}


def setups(emodb: Path, ravdess: Path) -> dict[str, dict[str, Any]]:
    """corpora / studies / splits sections and the scope whose metrics are reported, per set-up."""
    corpora = {"emodb": _emodb(emodb), "ravdess": {"source": "local", "path": str(ravdess)}}
    return {
        "cross": {
            "corpora": corpora,
            "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["emodb", "ravdess"],
                                         "source": "emodb", "target": "ravdess"}},
            "splits": {"cross_corpus": {"emodb": {"protocol": "speakers", "val": ["03", "08"]},
                                        "ravdess": {"protocol": "speakers", "adapt": ["1-6"], "test": ["7-12"]}}},
            "scope": "target",
        },
        "in_domain": {
            "corpora": {"ravdess": corpora["ravdess"]},
            "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["ravdess"]}},
            "splits": {"cross_corpus": {"ravdess": {"protocol": "speakers", "train": ["1-8"], "val": ["9-10"],
                                                    "test": ["11-12"]}}},
            "scope": "in_domain",
        },
    }


def make_params(base: dict[str, Any], setup: dict[str, Any], seed: int, with_waves: bool,
                epochs: int | None) -> dict[str, Any]:
    params = copy.deepcopy(base)
    # Both set-ups split each corpus once (protocol speakers): one fold; one seed per `dvc repro`.
    params.update({k: setup[k] for k in ("corpora", "studies", "splits")}, seeds=[seed], folds=[1])
    dann_ok = any(s.get("target") for s in setup["studies"].values())
    models = {}
    for name, mp in base["models"].items():
        if mp["arch"] == "encoder" and not with_waves or mp["objective"] == "dann" and not dann_ok:
            continue
        if base["studies"].get(mp["study"], {}).get("design") == "matrix":  # bench/realdata_protocols.py runs those
            continue
        mp = {**copy.deepcopy(mp), "study": "cross_corpus"}
        if epochs is not None and mp.get("arch") != "classical":
            mp["epochs"] = epochs
        models[name] = mp
    params["models"] = models
    return params


def _env() -> dict[str, str]:
    # Stage commands call `python`: make it this interpreter (the project's venv).
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1"}


def _dvc(workdir: Path, *args: str, log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"\n$ dvc {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workdir, env=_env(), stdout=fh,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"`dvc {' '.join(args)}` failed in {workdir} (log: {log}):\n{tail}")


def prepare(workdir: Path) -> None:
    """A DVC project (no git) with this repository's dvc.yaml, stage scripts and package."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ROOT / "dvc.yaml", workdir / "dvc.yaml")
    # ser/ is copied for DVC's code dependencies; the stages import the installed (editable) package.
    for folder in ("stages", "ser"):
        shutil.copytree(ROOT / folder, workdir / folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    if not (workdir / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=workdir, env=_env(), check=True)


def read_results(workdir: Path, params: dict[str, Any], scope: str) -> dict[str, dict[str, Any]]:
    """Each model's metrics of the run (fold 1, the params' seed): metrics/models/<model>/f1-s<seed>/<scope>.json."""
    out = {}
    (fold,), (seed,) = params["folds"], params["seeds"]
    for name in params["models"]:
        record = json.loads((workdir / "metrics" / "models" / name / f"f{fold}-s{seed}" / f"{scope}.json").read_text())
        out[name] = {k: record.get(k) for k in ("uar", "uar_ci95", "accuracy", "accuracy_ci95", "top_class",
                                                "top_class_share", "prediction_share", "n", "test_set",
                                                "single_class")}
    return out


def _fmt(value: float, ci: list[float] | None) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def report(results: dict[str, dict[int, dict[str, dict[str, Any]]]]) -> str:
    lines = []
    for setup, by_seed in results.items():
        seeds = sorted(by_seed)
        models = list(by_seed[seeds[0]])
        title = {"cross": "EmoDB -> RAVDESS actors 7-12 (adaptation: actors 1-6)",
                 "in_domain": "RAVDESS in-domain (train 1-8, val 9-10, test 11-12)"}[setup]
        lines += [f"## {title}", "",
                  "| model | seed | UAR [95% CI] | accuracy [95% CI] | most-predicted class (share) |",
                  "|---|---|---|---|---|"]
        for model in models:
            for seed in seeds:
                r = by_seed[seed][model]
                lines.append(f"| {model} | {seed} | {_fmt(r['uar'], r['uar_ci95'])} "
                             f"| {_fmt(r['accuracy'], r['accuracy_ci95'])} | {r['top_class']} ({r['top_class_share']:.2f}) |")
            uars = [by_seed[s][model]["uar"] for s in seeds]
            accs = [by_seed[s][model]["accuracy"] for s in seeds]
            tops = [by_seed[s][model]["top_class_share"] for s in seeds]
            sd = f" ± {statistics.stdev(uars):.3f}" if len(uars) > 1 else ""
            lines.append(f"| **{model}** | mean of {len(seeds)} | **{statistics.mean(uars):.3f}{sd}** "
                         f"| {statistics.mean(accs):.3f} | mean top share {statistics.mean(tops):.2f} |")
        lines.append("")
    return "\n".join(lines)


def corpus_arguments(doc: str, workdir: str, seeds: list[int], out: str) -> argparse.ArgumentParser:
    """The arguments the real-data checks share: corpora, work folder, seeds, epochs, params, output."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--emodb", type=Path, required=True, help="EmoDB folder with metadata.csv")
    ap.add_argument("--ravdess", type=Path, required=True, help="RAVDESS folder with Actor_NN/ (actors 1-12 needed)")
    ap.add_argument("--workdir", type=Path, default=Path(workdir))
    ap.add_argument("--seeds", type=int, nargs="+", default=seeds)
    ap.add_argument("--epochs", type=int, default=15, help="epochs of the neural models (default 15)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="base params (models, features)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    return ap


def check_corpora(args: argparse.Namespace) -> None:
    for path in (args.emodb / "metadata.csv", args.ravdess):
        if not path.exists():
            raise SystemExit(f"{path}: not found")


def main(argv: list[str] | None = None) -> None:
    ap = corpus_arguments(__doc__, "/tmp/ser-realdata", [0, 1, 2], "realdata.json")
    ap.add_argument("--setups", nargs="+", choices=["cross", "in_domain"], default=["cross", "in_domain"])
    ap.add_argument("--with-waves", action="store_true", help="also run the encoder models (waveforms and cached embeddings)")
    args = ap.parse_args(argv)
    check_corpora(args)
    base = yaml.safe_load(args.params.read_text())
    all_setups = setups(args.emodb.resolve(), args.ravdess.resolve())
    results: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    timings: dict[str, float] = {}
    for name in args.setups:
        setup, workdir = all_setups[name], args.workdir / name
        prepare(workdir)
        log = workdir / "repro.log"
        results[name] = {}
        for seed in args.seeds:
            params = make_params(base, setup, seed, args.with_waves, args.epochs)
            (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            started = time.perf_counter()
            print(f"[{name}] seed {seed}: dvc repro in {workdir} (log: {log})", flush=True)
            _dvc(workdir, "repro", log=log)
            timings[f"{name}/seed{seed}"] = round(time.perf_counter() - started, 1)
            results[name][seed] = read_results(workdir, params, setup["scope"])
            for model, r in results[name][seed].items():
                print(f"  {model}: UAR {r['uar']:.3f}, accuracy {r['accuracy']:.3f}, "
                      f"top class {r['top_class']} {r['top_class_share']:.2f}", flush=True)
    text = report(results)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setups": args.setups, "seeds": args.seeds, "epochs": args.epochs,
                                    "results": {s: {str(k): v for k, v in r.items()} for s, r in results.items()},
                                    "seconds": timings, "table": text}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
