"""Real-data check: the pipeline's own params and stages on real EmoDB, RAVDESS and TESS recordings.

Each set-up is a DVC project of its own under --workdir (dvc.yaml and stages/ copied from this
repository, params.yaml written from this repository's params.yaml with the corpora, studies and
splits replaced, one fold and the seed of the round as `seeds: [<seed>]`), 4 classes (angry, happy,
neutral, sad) unless named otherwise:

  cross         EmoDB -> RAVDESS: EmoDB is the labeled source (validation speakers 03 and 08, no
                test speakers: it only trains), RAVDESS actors 1-6 are the unlabeled adaptation
                group, actors 7-12 the test group.
  in_domain     RAVDESS alone: train actors 1-8, validation 9-10, test 11-12.
  in_domain_b   (on request) RAVDESS alone, the other way round: train 5-12, validation 3-4, test
                1-2; and emodb_in_domain (on request): EmoDB alone, validation 03, 08, test 15, 16.
                Held-out checks for a recipe (e.g. fusion members) chosen on `in_domain`.
  multi_source  (--tess) EmoDB + TESS -> RAVDESS: both sources labeled (TESS all train; EmoDB
                as in `cross`), the same RAVDESS adaptation and test actors as `cross`. DANN's
                domain label is source (either corpus) vs target.
  multi_corpus  (--tess) RAVDESS + EmoDB + TESS pooled: RAVDESS as in `in_domain`, EmoDB
                validation 03, 08 and test 15, 16, TESS held-out words (fold 1 of 6). Reported
                pooled and per corpus (TESS is easy and must not hide the others).
  multi_corpus7 (--tess) the same corpora and splits with 7 classes: angry, disgust, fear, happy,
                neutral, sad, surprise (EmoDB has no surprise: its UAR averages its 6 classes;
                RAVDESS calm and EmoDB boredom are left out).

Every model of the params that reads log-mels or openSMILE features is run (DANN models only
where there is a target corpus); the tiny random encoder models of the demo profile are left out
(`--with-waves` keeps them; they learn nothing from real speech without pretrained weights). For
each seed `dvc repro` runs the DAG (a new seed re-runs only training and evaluation), then the
metrics files are read. Printed per model: UAR and accuracy with bootstrap intervals per seed,
mean ± sd over seeds and the mean prediction share of each class; then paired bootstrap tests
(the seeds' predictions pooled, speakers resampled where a test set has >= 5) of every model
against the best of the baselines (--baselines) and of each DANN model against its
non-adversarial twin (the model whose params differ only in the objective). Results go to
bench/results/realdata.json.

Late fusions: the params' `fusions` whose members all run here (the pipeline's summarize stage
computes them: the mean of the members' class probabilities per clip), and --fuse A+B (repeatable),
which adds the fusion of models A and B under the name A+B. Each is reported as a model of its own,
with the same tables and paired tests.

--params FILE: its top-level sections replace those of this repository's params.yaml (a file
with only `models:` runs other models with the current features); --set KEY=VALUE (repeatable,
dotted keys, YAML values) changes one value, e.g. --set features.vad=trim.

    python bench/realdata.py --emodb ../shared/realdata/emodb \\
        --ravdess ../shared/realdata/ravdess-actors-01-12 --tess ../shared/realdata/tess \\
        --workdir /tmp/ser-realdata

EmoDB is read through the generic CSV adapter (`metadata.csv`: path, speaker, emotion, ...);
RAVDESS and TESS through their own adapters. Nothing here is tied to these copies: any EmoDB,
RAVDESS and TESS in those layouts work.
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
from typing import Any, Optional

import numpy as np
import yaml

from ser.config import ParamsError, parse_params
from ser.stats import Predictions, concat, paired_bootstrap, read_predictions_csv

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]
LABELS7 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
# What a model's result on one test set keeps of its metrics record (read_results).
RESULT_KEYS = ("uar", "uar_ci95", "accuracy", "accuracy_ci95", "top_class", "top_class_share", "prediction_share",
               "n", "test_set", "single_class")
EMODB_LABELS = {"anger": "angry", "happiness": "happy", "neutral": "neutral", "sadness": "sad",
                "boredom": "", "disgust": "", "fear": ""}
EMODB_LABELS7 = {**EMODB_LABELS, "disgust": "disgust", "fear": "fear"}


def _emodb(path: Path, label_map: dict[str, str] = EMODB_LABELS) -> dict[str, Any]:
    return {"source": "local", "path": str(path), "adapter": "csv", "csv": "metadata.csv", "label_map": label_map}


def setups(emodb: Path, ravdess: Path, tess: Path | None = None) -> dict[str, dict[str, Any]]:
    """corpora / studies / splits sections and the scopes whose metrics are reported, per set-up."""
    corpora = {"emodb": _emodb(emodb), "ravdess": {"source": "local", "path": str(ravdess)}}
    emodb_source = {"protocol": "speakers", "val": ["03", "08"]}
    ravdess_target = {"protocol": "speakers", "adapt": ["1-6"], "test": ["7-12"]}
    ravdess_alone = {"protocol": "speakers", "train": ["1-8"], "val": ["9-10"], "test": ["11-12"]}
    out = {
        "cross": {
            "corpora": corpora,
            "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["emodb", "ravdess"],
                                         "source": "emodb", "target": "ravdess"}},
            "splits": {"cross_corpus": {"emodb": emodb_source, "ravdess": ravdess_target}},
            "scopes": ["target"],
        },
        "in_domain": {
            "corpora": {"ravdess": corpora["ravdess"]},
            "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["ravdess"]}},
            "splits": {"cross_corpus": {"ravdess": ravdess_alone}},
            "scopes": ["in_domain"],
        },
        # held-out checks of recipes chosen on `in_domain` (on request: not in the default set-ups)
        "in_domain_b": {
            "corpora": {"ravdess": corpora["ravdess"]},
            "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["ravdess"]}},
            "splits": {"cross_corpus": {"ravdess": {"protocol": "speakers", "train": ["5-12"], "val": ["3-4"],
                                                    "test": ["1-2"]}}},
            "scopes": ["in_domain"],
        },
        "emodb_in_domain": {
            "corpora": {"emodb": corpora["emodb"]},
            "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["emodb"]}},
            "splits": {"cross_corpus": {"emodb": {"protocol": "speakers", "val": ["03", "08"],
                                                  "test": ["15", "16"]}}},
            "scopes": ["in_domain"],
        },
    }
    if tess is None:
        return out
    all3 = {**corpora, "tess": {"source": "local", "path": str(tess)}}
    out["multi_source"] = {
        "corpora": all3,
        "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["emodb", "tess", "ravdess"],
                                     "source": ["emodb", "tess"], "target": "ravdess"}},
        "splits": {"cross_corpus": {"emodb": emodb_source, "tess": {"protocol": "speakers", "train": ["OAF", "YAF"]},
                                    "ravdess": ravdess_target}},
        "scopes": ["target"],
    }
    out["multi_corpus"] = {
        "corpora": all3,
        "studies": {"cross_corpus": {"labels": LABELS, "corpora": ["emodb", "ravdess", "tess"]}},
        "splits": {"cross_corpus": {"emodb": {"protocol": "speakers", "val": ["03", "08"], "test": ["15", "16"]},
                                    "ravdess": ravdess_alone,
                                    "tess": {"protocol": "held_out_words", "folds": 6, "val_fraction": 0.1,
                                             "seed": 0}}},
        "scopes": ["in_domain", "emodb", "ravdess", "tess"],
    }
    out["multi_corpus7"] = copy.deepcopy(out["multi_corpus"])
    out["multi_corpus7"]["corpora"]["emodb"] = _emodb(emodb, EMODB_LABELS7)
    out["multi_corpus7"]["studies"]["cross_corpus"]["labels"] = LABELS7
    return out


def overlay(base: dict[str, Any], extra: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """`base` with the top-level sections of `extra` replacing its own, then each KEY=VALUE of `sets`."""
    out = {**copy.deepcopy(base), **copy.deepcopy(extra)}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. features.vad=trim")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise SystemExit(f"--set {item!r}: {part!r} is not a section of the params")
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    return out


def make_params(base: dict[str, Any], setup: dict[str, Any], seed: int, with_waves: bool,
                epochs: int | None) -> dict[str, Any]:
    params = copy.deepcopy(base)
    # Both set-ups split each corpus once (protocol speakers): one fold; one seed per `dvc repro`.
    params.update({k: copy.deepcopy(setup[k]) for k in ("corpora", "studies", "splits")}, seeds=[seed], folds=[1])
    dann_ok = any(s.get("target") for s in setup["studies"].values())
    models = {}
    for name, mp in base["models"].items():
        if mp["arch"] == "encoder" and not with_waves or adapts(mp) and not dann_ok:
            continue
        if base["studies"].get(mp["study"], {}).get("design") == "matrix":  # bench/realdata_protocols.py runs those
            continue
        mp = {**copy.deepcopy(mp), "study": "cross_corpus"}
        if epochs is not None and mp.get("arch") != "classical":
            mp["epochs"] = epochs
        models[name] = mp
    params["models"] = models
    params["fusions"] = runnable_fusions(base, models)
    return params


def runnable_fusions(params: dict[str, Any], models: dict[str, Any]) -> dict[str, Any]:
    """The params' late fusions (`fusions`, summarized by the pipeline) whose members are all in `models`."""
    return {name: f for name, f in (params.get("fusions") or {}).items() if all(m in models for m in f["members"])}


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


def _run_dirs(workdir: Path, params: dict[str, Any]) -> dict[str, tuple[Path, Path]]:
    """{model or fusion: (its metrics folder, its predictions folder)}: a model's evaluate@ outputs,
    a fusion's summarize outputs."""
    out = {name: (workdir / "metrics" / "models" / name, workdir / "plots" / name) for name in params["models"]}
    out.update({name: (workdir / "metrics" / "fusions" / name, workdir / "metrics" / "fusion_predictions" / name)
                for name in params.get("fusions") or {}})
    return out


def read_results(workdir: Path, params: dict[str, Any], scope: str) -> dict[str, dict[str, Any]]:
    """Each model's and fusion's metrics of the run (fold 1, the params' seed): <metrics>/f1-s<seed>/<scope>.json."""
    out = {}
    (fold,), (seed,) = params["folds"], params["seeds"]
    for name, (metrics, _plots) in _run_dirs(workdir, params).items():
        record = json.loads((metrics / f"f{fold}-s{seed}" / f"{scope}.json").read_text())
        out[name] = {k: record.get(k) for k in RESULT_KEYS}
    return out


def run_predictions(workdir: Path, params: dict[str, Any], scope: str, seed: int) -> dict[str, Predictions]:
    """Each model's and fusion's per-clip predictions of this seed's run on one test set (read right
    after the run: the next seed's `dvc repro` replaces them)."""
    labels = params["studies"]["cross_corpus"]["labels"]
    return {name: read_predictions_csv(plots / f"f1-s{seed}" / f"{scope}.csv", labels)
            for name, (_metrics, plots) in _run_dirs(workdir, params).items()}


def pool_seeds(runs: dict[int, Predictions]) -> Predictions:
    """One model's predictions of every seed on one test set, pooled: clip ids are prefixed with the
    seed, speakers kept (a speaker-resampling bootstrap draws a speaker with all its seeds)."""
    return concat([Predictions(np.char.add(f"s{seed}/", p.utt_id), p.speaker, p.y_true, p.y_pred, p.labels, p.scores)
                   for seed, p in sorted(runs.items())])


def _adapted(mp: dict[str, Any], kind: str) -> bool:
    """Whether a model adapts to the unlabeled target clips by `kind`: "dann" or "self_train"."""
    return mp["objective"] == "dann" if kind == "dann" else bool((mp.get("classical") or {}).get("self_train"))


def adapts(mp: dict[str, Any]) -> bool:
    """Whether a model reads the unlabeled target clips: objective dann, or classical.self_train."""
    return _adapted(mp, "dann") or _adapted(mp, "self_train")


def twins(models: dict[str, Any], kind: str = "dann") -> dict[str, str]:
    """Adapted model -> its twin that does not adapt: for kind "dann" the model whose params differ
    only in the objective; for "self_train" the one that differs only in classical.self_train."""
    def strip(mp: dict[str, Any]) -> str:
        mp = {k: v for k, v in mp.items() if k != "objective"} if kind == "dann" else \
            {**mp, "classical": {k: v for k, v in (mp.get("classical") or {}).items() if k != "self_train"}}
        return json.dumps(mp, sort_keys=True)
    plain = {strip(mp): name for name, mp in models.items() if not adapts(mp)}
    return {name: plain[strip(mp)] for name, mp in models.items() if _adapted(mp, kind) and strip(mp) in plain}


def comparisons(params: dict[str, Any], by_seed: dict[int, dict[str, dict[str, Any]]],
                preds: dict[int, dict[str, Predictions]], baselines: list[str],
                n_boot: int = 2000) -> list[dict[str, Any]]:
    """Paired bootstraps (seeds pooled) of every model against the best baseline, and of each DANN or
    self-trained model against its twin."""
    seeds = sorted(by_seed)
    models = list(by_seed[seeds[0]])
    present = [b for b in baselines if b in models]
    pairs: list[tuple[str, str, str]] = []
    if present:
        best = max(present, key=lambda m: statistics.mean(by_seed[s][m]["uar"] for s in seeds))
        pairs += [(m, best, "vs best baseline") for m in models if m != best]
    pairs += [(m, twin, f"{label} vs twin") for kind, label in (("dann", "DANN"), ("self_train", "self-training"))
              for m, twin in twins(params["models"], kind).items() if m in models]
    pooled = {m: pool_seeds({s: preds[s][m] for s in seeds}) for m in {m for pair in pairs for m in pair[:2]}}
    rows = []
    for a, b, kind in pairs:
        speakers = len(set(pooled[a].speaker.tolist()))
        cluster = "speaker" if speakers >= 5 else None
        test = paired_bootstrap(pooled[a], pooled[b], "uar", n_boot=n_boot, seed=0, cluster=cluster)
        rows.append({"a": a, "b": b, "kind": kind, "diff": test["diff"], "ci95": test["ci"], "p": test["p_value"],
                     "resampled": f"{speakers} speakers" if cluster else f"{len(pooled[a])} clips ({speakers} speakers)"})
    return rows


def _curve(live: Path, key: str) -> list[float]:
    path = live / "plots" / "metrics" / f"{key}.tsv"
    if not path.is_file():
        return []
    return [float(line.split("\t")[-1]) for line in path.read_text().splitlines()[1:] if line.strip()]


def _domain_probe(source: np.ndarray, target: np.ndarray) -> float:
    """How separable two feature sets are: 5-fold balanced accuracy of an RBF SVM telling source rows
    from target rows (0.5: indistinguishable). Non-linear, because per-speaker standardised inputs
    have every speaker's mean at 0, which a linear probe cannot use by construction."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x = np.concatenate([source, target]).astype(np.float64)
    y = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    probe = make_pipeline(StandardScaler(), SVC(C=1.0, kernel="rbf", gamma="scale", class_weight="balanced"))
    return float(cross_val_score(probe, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                                 scoring="balanced_accuracy").mean())


def domain_evidence(workdir: Path, params: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """Per DANN model and its twin (models on functionals), this seed: how separable source (train) and
    target (test) clips are in the input and in each model's features, and the training curves that
    say whether the adversarial game settled (domain accuracy) and how noisy validation was."""
    import torch

    from ser.features.scaling import speaker_keys
    from ser.features.stores import FeatureStore
    from ser.models.learner import load_fitted

    rows = []
    for dann, twin in twins(params["models"]).items():
        if params["models"][dann]["arch"] != "mlp":
            continue
        row: dict[str, Any] = {"dann": dann, "twin": twin, "seed": seed}
        for role, name in (("dann", dann), ("twin", twin)):
            fitted = load_fitted(workdir / "models" / name / f"f1-s{seed}")
            root = workdir / "data" / "features" / fitted.input / "cross_corpus" / "f1"
            stores = [FeatureStore(root, split) for split in ("train", "test")]
            inputs = [fitted.standardiser.apply(s.stack(), speaker_keys(s)).astype(np.float32) for s in stores]
            with torch.no_grad():
                feats = [fitted.model.embed(torch.from_numpy(x)).numpy() for x in inputs]
            row["probe_input"] = _domain_probe(*inputs)
            row[f"probe_{role}"] = _domain_probe(*feats)
            live = workdir / "dvclive" / name / f"f1-s{seed}"
            uar = _curve(live, "val/uar")
            half = uar[len(uar) // 2:]
            row[f"val_uar_sd_{role}"] = statistics.stdev(half) if len(half) > 1 else None
            row[f"val_uar_range_{role}"] = [min(uar), max(uar)] if uar else None
            if role == "dann":
                dom = _curve(live, "val/domain_accuracy")
                row["val_domain_accuracy"] = {"first": dom[0], "last": dom[-1], "min": min(dom), "max": max(dom)} \
                    if dom else None
        rows.append(row)
    return rows


ON_REQUEST = ("in_domain_b", "emodb_in_domain")  # --setups names them: held-out checks of in-domain recipes
TITLES = {"cross": "EmoDB -> RAVDESS actors 7-12 (adaptation: actors 1-6)",
          "in_domain": "RAVDESS in-domain (train 1-8, val 9-10, test 11-12)",
          "in_domain_b": "RAVDESS in-domain, the other speakers (train 5-12, val 3-4, test 1-2)",
          "emodb_in_domain": "EmoDB in-domain (val speakers 03 and 08, test 15 and 16, train the other 6)",
          "multi_source": "EmoDB + TESS -> RAVDESS actors 7-12 (adaptation: actors 1-6)",
          "multi_corpus": "RAVDESS + EmoDB + TESS pooled (test: RAVDESS 11-12, EmoDB 15-16, TESS held-out words)",
          "multi_corpus7": "RAVDESS + EmoDB + TESS pooled, 7 classes (test: RAVDESS 11-12, EmoDB 15-16, TESS "
                           "held-out words)"}


def _shares(by_seed: dict[int, dict[str, dict[str, Any]]], model: str) -> str:
    """Mean prediction share of each class over the seeds."""
    seeds = sorted(by_seed)
    labels = list(by_seed[seeds[0]][model]["prediction_share"] or LABELS)
    return ", ".join(f"{c} {statistics.mean((by_seed[s][model]['prediction_share'] or {}).get(c, 0.0) for s in seeds):.2f}"
                     for c in labels)


def report(results: dict[str, dict[str, dict[int, dict[str, dict[str, Any]]]]],
           tests: dict[str, dict[str, list[dict[str, Any]]]],
           evidence: Optional[dict[str, list[dict[str, Any]]]] = None) -> str:
    evidence = evidence or {}
    lines = []
    for setup, scopes in results.items():
        for scope, by_seed in scopes.items():
            seeds = sorted(by_seed)
            models = list(by_seed[seeds[0]])
            test_set = by_seed[seeds[0]][models[0]]["test_set"]
            lines += [f"## {TITLES[setup]}: {test_set}", "",
                      "| model | UAR per seed | UAR mean ± sd | accuracy mean | prediction share (mean over seeds) |",
                      "|---|---|---|---|---|"]
            for model in models:
                uars = [by_seed[s][model]["uar"] for s in seeds]
                accs = [by_seed[s][model]["accuracy"] for s in seeds]
                sd = f" ± {statistics.stdev(uars):.3f}" if len(uars) > 1 else ""
                lines.append(f"| {model} | {', '.join(f'{u:.3f}' for u in uars)} | **{statistics.mean(uars):.3f}{sd}** "
                             f"| {statistics.mean(accs):.3f} | {_shares(by_seed, model)} |")
            rows = tests.get(setup, {}).get(scope, [])
            if rows:
                lines += ["", "| A | B | test | UAR A - B [95% CI] | p | resampled |", "|---|---|---|---|---|---|"]
                lines += [f"| {r['a']} | {r['b']} | {r['kind']} | {r['diff']:+.3f} [{r['ci95'][0]:+.3f}, "
                          f"{r['ci95'][1]:+.3f}] | {r['p']:.3f} | {r['resampled']} |" for r in rows]
            lines.append("")
        rows = evidence.get(setup) or []
        if rows:
            lines += [f"### {TITLES[setup]}: is DANN's game settled, and does it align the domains?", "",
                      "Domain probe: 5-fold balanced accuracy of an RBF SVM telling source train clips "
                      "from target test clips (0.5: indistinguishable), on the standardised input and on each "
                      "model's features. Validation: sd of source val UAR over the second half of the epochs.", "",
                      "| DANN / twin | seed | probe input | probe twin | probe DANN | DANN val domain acc first, "
                      "last (min-max) | val UAR sd twin / DANN |", "|---|---|---|---|---|---|---|"]
            for r in rows:
                d = r.get("val_domain_accuracy") or {}
                dom = (f"{d['first']:.2f}, {d['last']:.2f} ({d['min']:.2f}-{d['max']:.2f})" if d else "-")
                sds = "/".join(f"{r[k]:.3f}" if r.get(k) is not None else "-"
                               for k in ("val_uar_sd_twin", "val_uar_sd_dann"))
                lines.append(f"| {r['dann']} / {r['twin']} | {r['seed']} | {r['probe_input']:.3f} | "
                             f"{r['probe_twin']:.3f} | {r['probe_dann']:.3f} | {dom} | {sds} |")
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
    ap.add_argument("--tess", type=Path, help="TESS folder (<OAF|YAF>_<emotion>/): the multi-source and "
                    "multi-corpus set-ups")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                    help="params whose top-level sections replace this repository's params.yaml's")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change one value (dotted key, YAML value), e.g. features.vad=trim; repeatable")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / out)
    return ap


def load_base(args: argparse.Namespace) -> dict[str, Any]:
    """This repository's params.yaml, overlaid with --params and --set."""
    return overlay(yaml.safe_load((ROOT / "params.yaml").read_text()), yaml.safe_load(args.params.read_text()),
                   args.set)


def check_corpora(args: argparse.Namespace) -> None:
    for path in (args.emodb / "metadata.csv", args.ravdess, *([args.tess] if args.tess else [])):
        if not path.exists():
            raise SystemExit(f"{path}: not found")


def main(argv: list[str] | None = None) -> None:
    ap = corpus_arguments(__doc__, "/tmp/ser-realdata", [0, 1, 2], "realdata.json")
    ap.add_argument("--setups", nargs="+", choices=list(TITLES), help="default: cross and in_domain, and with "
                    "--tess also multi_source, multi_corpus and multi_corpus7")
    ap.add_argument("--baselines", nargs="+", default=["egemaps_svm", "egemaps_logreg", "baseline"],
                    help="the models whose best (mean UAR) every other model is tested against")
    ap.add_argument("--fuse", action="append", default=[], metavar="A+B[+C]",
                    help="add the late fusion of these models (params `fusions`: the mean of their class "
                         "probabilities per clip, argmax) as a model named A+B; repeatable")
    ap.add_argument("--with-waves", action="store_true", help="also run the encoder models (waveforms and cached embeddings)")
    args = ap.parse_args(argv)
    check_corpora(args)
    base = load_base(args)
    all_setups = setups(args.emodb.resolve(), args.ravdess.resolve(), args.tess.resolve() if args.tess else None)
    chosen = args.setups or [s for s in all_setups if s not in ON_REQUEST]
    base["fusions"] = {**runnable_fusions(base, base["models"]), **{f: {"members": f.split("+")} for f in args.fuse}}
    try:  # a fusion of unknown models, or of an SVM's decision values, fails here, before any work
        parse_params(base)
    except ParamsError as exc:
        raise SystemExit(f"--params/--set/--fuse: {exc}") from None
    missing = [name for name in chosen if name not in all_setups]
    if missing:
        raise SystemExit(f"set-ups {missing} need --tess")
    results: dict[str, dict[str, dict[int, dict[str, dict[str, Any]]]]] = {}
    tests: dict[str, dict[str, list[dict[str, Any]]]] = {}
    evidence: dict[str, list[dict[str, Any]]] = {}
    timings: dict[str, float] = {}
    for name in chosen:
        setup, workdir = all_setups[name], args.workdir / name
        prepare(workdir)
        log = workdir / "repro.log"
        results[name] = {scope: {} for scope in setup["scopes"]}
        preds: dict[str, dict[int, dict[str, Predictions]]] = {scope: {} for scope in setup["scopes"]}
        evidence[name] = []
        for seed in args.seeds:
            params = make_params(base, setup, seed, args.with_waves, args.epochs)
            (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            started = time.perf_counter()
            print(f"[{name}] seed {seed}: dvc repro in {workdir} (log: {log})", flush=True)
            _dvc(workdir, "repro", log=log)
            timings[f"{name}/seed{seed}"] = round(time.perf_counter() - started, 1)
            if params["studies"]["cross_corpus"].get("target"):
                evidence[name] += domain_evidence(workdir, params, seed)
            for scope in setup["scopes"]:
                results[name][scope][seed] = read_results(workdir, params, scope)
                preds[scope][seed] = run_predictions(workdir, params, scope, seed)
                for model, r in results[name][scope][seed].items():
                    print(f"  {model} [{r['test_set']}]: UAR {r['uar']:.3f}, accuracy {r['accuracy']:.3f}, "
                          f"top class {r['top_class']} {r['top_class_share']:.2f}", flush=True)
        tests[name] = {scope: comparisons(params, by_seed, preds[scope], args.baselines)
                       for scope, by_seed in results[name].items()}
    text = report(results, tests, evidence)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setups": chosen, "seeds": args.seeds, "epochs": args.epochs,
                                    "params": str(args.params.relative_to(ROOT) if args.params.is_absolute()
                                                  and args.params.is_relative_to(ROOT) else args.params),
                                    "set": args.set, "fuse": args.fuse,
                                    "results": {s: {sc: {str(k): v for k, v in r.items()} for sc, r in by.items()}
                                                for s, by in results.items()},
                                    "tests": tests, "domain_evidence": evidence, "seconds": timings, "table": text}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
