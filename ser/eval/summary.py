"""The results of all runs: aggregation over folds and seeds, paired comparisons, the corpus matrix.

Reads what the evaluate@ cells wrote (metrics/models/<model>/f<k>-s<seed>/<scope>.json
and plots/<model>/f<k>-s<seed>/<scope>.csv) and writes, in the summarize stage:

- metrics/aggregate.json: per model and test set, the mean and sample std
  over runs (`mean_over_runs`, `std_over_runs`) and the metrics of the pooled
  predictions with bootstrap CIs (`pooled`), see ser.stats; a matrix study's
  model per training and test corpus (`<train>_to_<test>`), over seeds;
- metrics/comparisons.json: paired tests between models on the same clips;
- metrics/corpus_matrix.json and metrics/figures/<study>_matrix.png: the
  train x test UAR table of each `design: matrix` study, with the target
  cells of the cross-corpus models (DANN: the adapted cell) beside it;
- metrics/fusions/<fusion>/<run>/<scope>.json and
  metrics/fusion_predictions/<fusion>/<run>/<scope>.{csv,png}: the runs of
  each late fusion of params.yaml `fusions` (the mean of its members' class
  probabilities per clip, ser.stats.fuse), which then enter the aggregates,
  paired comparisons and tables like any model;
- metrics/summary.md: all of it as tables.

Pooling: when the folds test disjoint clips (k-fold protocols), the pooled
predictions hold each clip once per seed. When they test the same clips (a
fixed target or test set repeated in every fold), each fold's predictions are
kept apart (ids prefixed with the fold): the pooled metric is then that of
all runs' predictions together, and a bootstrap over speakers resamples a
speaker's rows of every fold at once.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ser.config import Params
from ser.eval.evaluate import (LAYER_WEIGHTS, MIN_CLUSTER_SPEAKERS, Scope, metrics_record, model_fingerprint,
                            model_scopes, plot_confusion, plot_layer_weights, write_metrics_json)
from ser.models.base import META
from ser.runs import is_not_run, parse_run_name, run_name
from ser.runtime import describe_runtimes
from ser.stats import (Predictions, aggregate, compare_models, compute_metrics, concat, fuse, pooled,
                       read_predictions_csv, write_predictions_csv)

log = logging.getLogger(__name__)

__all__ = ["Run", "collect_runs", "fuse_runs", "write_fused_runs", "aggregate_runs", "aggregate_all", "paired_comparisons", "corpus_matrix", "write_summary",
           "prune_stale_outputs", "run_predictions"]


@dataclass(frozen=True)
class Run:
    """One evaluated (model, fold, seed) on one test set."""
    model: str
    scope: Scope
    fold: int
    seed: int
    record: dict[str, Any]
    preds: Optional[Predictions]  # None when the test set had no clips


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_runs(params: Params, metrics_dir: Path, models_dir: Path,
                 plots_dir: Path) -> dict[tuple[str, str], list[Run]]:
    """Every run of every model in params.yaml, per (model, scope), in (fold, seed) order.

    Cells beyond a study's folds (not_run) are left out. A missing metrics
    file, or one written for another version of the run's model (its
    `model_fingerprint` differs), is an error: the summary never mixes runs.
    """
    out: dict[tuple[str, str], list[Run]] = {}
    for name, mp in params.models.items():
        labels = params.study(mp.study).labels
        for scope in model_scopes(params, name):
            out[(name, scope.name)] = []
        for fold in params.folds:
            for seed in params.seeds:
                cell = run_name(fold, seed)
                model_dir = Path(models_dir) / name / cell
                if is_not_run(model_dir):
                    continue
                if not (model_dir / META).is_file():
                    raise FileNotFoundError(f"{model_dir / META} is missing: train {name!r} first (`dvc repro`)")
                fingerprint = model_fingerprint(model_dir)
                for scope in model_scopes(params, name):
                    path = Path(metrics_dir) / name / cell / f"{scope.name}.json"
                    record = _read_json(path)
                    if record is None:
                        raise FileNotFoundError(f"{path} is missing: evaluate {name!r} first (`dvc repro`)")
                    if record.get("model_fingerprint") != fingerprint:
                        raise ValueError(f"{path} describes another version of {model_dir}; "
                                         f"re-run its evaluation (`dvc repro`)")
                    csv_path = Path(plots_dir) / name / cell / f"{scope.name}.csv"
                    preds = None
                    if not record.get("skipped"):
                        if not csv_path.is_file():
                            raise FileNotFoundError(f"{csv_path} is missing: re-run evaluate@{name} (`dvc repro`)")
                        preds = read_predictions_csv(csv_path, record.get("labels") or labels)
                    out[(name, scope.name)].append(Run(name, scope, fold, seed, record, preds))
    return out


def _fused_run(params: Params, name: str, scope: Scope, parts: dict[str, Run]) -> Run:
    """One run of fusion `name`: its members' runs of one (fold, seed) and test set, fused."""
    first = next(iter(parts.values()))
    base = {"model": name, "scope": scope.name, "test_set": scope.test_set, "corpus": scope.corpus,
            "fold": first.fold, "seed": first.seed, "members": list(parts),
            "member_fingerprints": {m: r.record.get("model_fingerprint") for m, r in parts.items()}}
    skipped = [r.record.get("skipped") for r in parts.values() if r.preds is None]
    if skipped:
        return Run(name, scope, first.fold, first.seed, {**base, "skipped": skipped[0]}, None)
    try:
        preds = fuse({m: r.preds for m, r in parts.items() if r.preds is not None})
    except ValueError as exc:
        raise ValueError(f"fusions.{name} ({run_name(first.fold, first.seed)}, {scope.name}): {exc}") from None
    metrics = compute_metrics(preds.y_true, preds.y_pred, list(preds.labels))
    record = metrics_record(metrics, preds.y_true, preds.y_pred, model=name, test_set=scope.test_set,
                            n_boot=params.evaluation.bootstrap, ci=params.evaluation.ci, seed=params.evaluation.seed)
    return Run(name, scope, first.fold, first.seed, {**base, **record, "confusion": metrics["confusion"]}, preds)


def fuse_runs(params: Params, runs: dict[tuple[str, str], list[Run]]) -> dict[tuple[str, str], list[Run]]:
    """The runs of every params.yaml `fusions` entry, per (fusion, scope), from its members' runs
    (collect_runs): for each (fold, seed) and test set, ser.stats.fuse of the members' predictions."""
    out: dict[tuple[str, str], list[Run]] = {}
    for name, fusion in params.fusions.items():
        for scope in model_scopes(params, fusion.members[0]):
            cells = {m: {(r.fold, r.seed): r for r in runs[(m, scope.name)]} for m in fusion.members}
            keys = [list(c) for c in cells.values()]
            if any(k != keys[0] for k in keys):
                raise ValueError(f"fusions.{name}: its members ran different folds x seeds "
                                 f"({dict(zip(fusion.members, keys))}); re-run `dvc repro`")
            out[(name, scope.name)] = [_fused_run(params, name, scope, {m: cells[m][key] for m in fusion.members})
                                       for key in keys[0]]
    return out


def write_fused_runs(fused: dict[tuple[str, str], list[Run]], metrics_dir: Path, plots_dir: Path) -> None:
    """Each fused run's record (<metrics_dir>/<fusion>/<run>/<scope>.json) and predictions with their
    confusion figure (<plots_dir>/<fusion>/<run>/<scope>.{csv,png}); both folders are rewritten whole."""
    for root in (Path(metrics_dir), Path(plots_dir)):
        if root.is_dir():
            shutil.rmtree(root)
        root.mkdir(parents=True)  # the stage's outputs exist when params.yaml defines no fusion, too
    for (name, scope), model_runs in fused.items():
        for run in model_runs:
            cell = run_name(run.fold, run.seed)
            record = {k: v for k, v in run.record.items() if k != "confusion"}
            write_metrics_json(Path(metrics_dir) / name / cell / f"{scope}.json", record)
            if run.preds is None:
                continue
            write_predictions_csv(Path(plots_dir) / name / cell / f"{scope}.csv", run.preds)
            plot_confusion(Path(plots_dir) / name / cell / f"{scope}.png", run.record["confusion"],
                           run.preds.labels, f"{name} (fold {run.fold}, seed {run.seed}) on {run.scope.test_set}: "
                           f"UAR {run.record['uar']:.3f}")


def _prefixed(preds: Predictions, prefix: str) -> Predictions:
    return Predictions(np.char.add(prefix, preds.utt_id), preds.speaker, preds.y_true, preds.y_pred, preds.labels,
                       preds.scores)


def _disjoint(runs: Sequence[Run]) -> bool:
    """Do the folds test disjoint clips (k-fold), rather than one repeated test set?"""
    seen: dict[str, int] = {}
    for run in runs:
        assert run.preds is not None
        for utt in run.preds.utt_id.tolist():
            if seen.setdefault(utt, run.fold) != run.fold:
                return False
    return True


def run_predictions(runs: Sequence[Run]) -> dict[int, list[Predictions]]:
    """{seed: [predictions of each fold]}, ids prefixed with the fold when folds repeat a test set."""
    runs = [r for r in runs if r.preds is not None]
    one_seed = [r for r in runs if r.seed == runs[0].seed]
    disjoint = _disjoint(one_seed)
    by_seed: dict[int, list[Predictions]] = defaultdict(list)
    for run in runs:
        assert run.preds is not None
        by_seed[run.seed].append(run.preds if disjoint else _prefixed(run.preds, f"f{run.fold}/"))
    return dict(by_seed)


def _cluster(preds: Predictions) -> Optional[str]:
    """Resample speakers when there are enough of them; clips otherwise (see MIN_CLUSTER_SPEAKERS)."""
    return "speaker" if len(set(preds.speaker.tolist())) >= MIN_CLUSTER_SPEAKERS else None


def aggregate_runs(params: Params, runs: Sequence[Run]) -> dict[str, Any]:
    """Mean/std over runs and pooled metrics with bootstrap CIs for one model and test set."""
    scope = runs[0].scope if runs else None
    head = {"study": scope.study if scope else None, "scope": scope.name if scope else None,
            "test_set": scope.test_set if scope else None, "corpus": scope.corpus if scope else None,
            "folds": sorted({r.fold for r in runs}), "seeds": sorted({r.seed for r in runs})}
    done = [r for r in runs if r.preds is not None]
    if not done:
        reason = runs[0].record.get("skipped") if runs else "no runs"
        return {**head, "skipped": reason}
    result = aggregate([{**r.record, "fold": r.fold, "seed": r.seed} for r in done])
    by_seed = run_predictions(done)
    first = concat(next(iter(by_seed.values())))
    cluster = _cluster(first)
    pool = pooled(by_seed, n_boot=params.evaluation.bootstrap, ci=params.evaluation.ci,
                  seed=params.evaluation.seed, cluster=cluster)
    single = sorted({run_name(r.fold, r.seed) for r in done if r.record.get("single_class")})
    return {**head, "n_classes": len(done[0].preds.labels) if done[0].preds else None, **result, **pool, "test_sets": "disjoint" if _disjoint(
        [r for r in done if r.seed == done[0].seed]) else "repeated", "single_class_runs": single,
        "top_class_share_max": max((r.record.get("top_class_share") or 0.0) for r in done)}


def aggregate_all(params: Params, runs: dict[tuple[str, str], list[Run]]) -> dict[str, dict[str, Any]]:
    """{model: {key: aggregate_runs(...)}}: key is the scope, or in a matrix study
    "<train corpus>_to_<test corpus>" (its folds train on different corpora, so
    they are aggregated one training corpus at a time, over seeds)."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for (name, scope), model_runs in runs.items():
        study = params.studies[params.study_of(name)]
        if study.design != "matrix":
            out[name][scope] = aggregate_runs(params, model_runs)
            continue
        for fold, train in enumerate(study.corpora, start=1):
            cell = [r for r in model_runs if r.fold == fold]
            if cell:
                agg = aggregate_runs(params, cell)
                out[name][f"{train}_to_{scope}"] = {**agg, "trained_on": train,
                                                    "test_set": f"{agg['test_set']}, trained on {train}"}
    return out


def paired_comparisons(params: Params, runs: dict[tuple[str, str], list[Run]]) -> list[dict[str, Any]]:
    """Paired tests between every two models evaluated on the same clips in the same runs.

    Models are grouped by (study, scope, corpus); each model's predictions of
    all its runs are concatenated (ids prefixed with the run), so two models
    pair up when they ran the same folds and seeds. Within a group every pair
    gets a paired bootstrap of the UAR and accuracy differences (over speakers
    when there are >= MIN_CLUSTER_SPEAKERS, else clips) and McNemar's exact
    test, Holm-corrected over the group's pairs (ser.stats.compare_models).
    """
    groups: dict[tuple, dict[str, Predictions]] = {}
    for (name, _scope), model_runs in runs.items():
        done = [r for r in model_runs if r.preds is not None]
        if not done:
            continue
        scope = done[0].scope
        group = groups.setdefault((scope.study, scope.name, scope.corpus or ""), {})
        group[name] = concat([_prefixed(r.preds, f"{run_name(r.fold, r.seed)}/") for r in done if r.preds])
    rows = []
    for (study, scope, corpus), preds in sorted(groups.items()):
        if len(preds) < 2:
            continue
        speakers = len(set(next(iter(preds.values())).speaker.tolist()))
        cluster = _cluster(next(iter(preds.values())))
        if cluster is None:
            log.warning("%s/test [%s]: %d test speaker(s), fewer than %d: paired bootstrap over clips, which "
                        "treats clips of one speaker as independent", study, corpus or "all corpora", speakers,
                        MIN_CLUSTER_SPEAKERS)
        for row in compare_models(preds, n_boot=params.evaluation.bootstrap, seed=params.evaluation.seed,
                                  cluster=cluster, ci=params.evaluation.ci):
            rows.append({"study": study, "scope": scope, "corpus": corpus or None, "test_speakers": speakers,
                         "n_runs": len({u.split("/", 1)[0] for u in preds[row["a"]].utt_id.tolist()}), **row})
    return rows


# --------------------------------------------------------------------------- corpus matrix
def _mean_uar(runs: Sequence[Run]) -> Optional[float]:
    values = [r.record["uar"] for r in runs if r.preds is not None and r.record.get("uar") is not None]
    return float(np.mean(values)) if values else None


def _clip_set(runs: Sequence[Run]) -> frozenset:
    return frozenset(u for r in runs if r.preds is not None for u in r.preds.utt_id.tolist())


def corpus_matrix(params: Params, runs: dict[tuple[str, str], list[Run]]) -> dict[str, Any]:
    """Train x test UAR of each matrix study's models (mean over seeds), plus the target cells of
    the cross-corpus models whose source and target are corpora of the matrix (DANN: adapted).

    Fold i of a matrix study trains on its i-th corpus. A cross-corpus row is
    marked `same_test_clips` when its target test set is exactly the matrix's
    test set of that corpus (only then do the cells compare like for like).
    """
    out: dict[str, Any] = {}
    for sname, study in params.studies.items():
        if study.design != "matrix":
            continue
        corpora = list(study.corpora)
        models: dict[str, Any] = {}
        columns: dict[str, frozenset] = {}
        for name, mp in params.models.items():
            if mp.study != sname:
                continue
            table: list[list[Optional[float]]] = []
            for i, train_corpus in enumerate(corpora, start=1):
                row = []
                for test_corpus in corpora:
                    cell_runs = [r for r in runs.get((name, test_corpus), []) if r.fold == i]
                    row.append(_mean_uar(cell_runs))
                    columns.setdefault(test_corpus, _clip_set(cell_runs))
                table.append(row)
            models[name] = {"uar": table, "seeds": list(params.seeds)}
        extra = []
        for name, mp in params.models.items():
            other = params.studies[mp.study]
            # a single-source cross-corpus model is the (source, target) cell of the matrix
            if other.design == "matrix" or not other.target or len(other.source or ()) != 1 \
                    or other.source[0] not in corpora or other.target not in corpora \
                    or set(other.labels) != set(study.labels):
                continue
            target_runs = runs.get((name, "target"), [])
            uar = _mean_uar(target_runs)
            if uar is None:
                continue
            extra.append({"model": name, "study": mp.study, "train": other.source[0], "test": other.target,
                          "adapted": mp.objective == "dann", "uar": uar, "n_runs": len(target_runs),
                          "same_test_clips": _clip_set(target_runs) == columns.get(other.target)})
        if models:
            out[sname] = {"corpora": corpora, "labels": list(study.labels), "models": models,
                          "cross_corpus_rows": extra}
    return out


def plot_corpus_matrix(path: Path, sname: str, entry: dict[str, Any]) -> None:
    """One heatmap per matrix model (rows: train corpus, columns: test corpus), with the
    cross-corpus models' target cells as extra rows below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora, models = entry["corpora"], entry["models"]
    extra = entry["cross_corpus_rows"]
    fig, axes = plt.subplots(1, len(models), figsize=(2.2 + 1.6 * len(corpora) * len(models),
                                                      1.6 + 0.6 * (len(corpora) + len(extra))), squeeze=False)
    for ax, (name, m) in zip(axes[0], models.items()):
        rows = [list(r) for r in m["uar"]]
        names = [f"train {c}" for c in corpora]
        for e in extra:
            rows.append([e["uar"] if c == e["test"] else None for c in corpora])
            names.append(f"{e['train']} + {e['model']}" + (" (DANN)" if e["adapted"] else ""))
        data = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float)
        ax.imshow(data, vmin=0, vmax=1, cmap="viridis")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not math.isnan(data[i, j]):
                    ax.text(j, i, f"{100 * data[i, j]:.1f}", ha="center", va="center",
                            color="white" if data[i, j] < 0.6 else "black", fontsize=9)
        if extra:
            ax.axhline(len(corpora) - 0.5, color="white", linewidth=2)
        ax.set_xticks(range(len(corpora)), [f"test {c}" for c in corpora], rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"{name}: UAR (%)", fontsize=10)
    fig.suptitle(f"{sname}: train x test corpus matrix")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.info("wrote %s", path)


# --------------------------------------------------------------------------- tables
def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _mean_std(agg: dict[str, Any], name: str) -> str:
    mean, std = agg["mean_over_runs"].get(name), agg["std_over_runs"].get(name)
    if mean is None:
        return "—"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _pooled(agg: dict[str, Any], name: str, level: int) -> str:
    value = agg["pooled"].get(name)
    ci = agg["pooled"].get(f"{name}_ci{level}")
    if value is None:
        return "—"
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci and None not in ci else "")


def _count(n: Optional[int]) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _members(params: Params, name: str) -> tuple[str, ...]:
    """The trained models behind `name`: a fusion's members, else the model itself."""
    return params.fusions[name].members if name in params.fusions else (name,)


def _train_seconds(params: Params, live_dir: Optional[Path], name: str) -> Optional[float]:
    """Training seconds of all of a model's runs (dvclive/<model>/<run>/timing.json); a fusion's: its members'."""
    if live_dir is None:
        return None
    total, found = 0.0, False
    for member in _members(params, name):
        for fold in params.folds:
            for seed in params.seeds:
                record = _read_json(Path(live_dir) / member / run_name(fold, seed) / "timing.json") or {}
                if isinstance(record.get("train_seconds"), (int, float)):
                    total += float(record["train_seconds"])
                    found = True
    return total if found else None


def _parameters(params: Params, models_dir: Path, name: str) -> dict[str, Any]:
    """A model's parameter counts (total, trainable), from a run's meta.json; a fusion's: its members' sums."""
    counts: dict[str, Any] = {}
    for member in _members(params, name):
        found = next((((_read_json(path) or {}).get("parameters") or {})
                      for path in sorted((Path(models_dir) / member).glob(f"*/{META}"))), {})
        for key in ("total", "trainable"):
            if isinstance(found.get(key), int):
                counts[key] = counts.get(key, 0) + found[key]
    return counts


def computed_with(params: Params, models_dir: Path, name: str) -> str:
    """The threads, device and precision of a model's runs (their meta.json `runtime`; a fusion's: its
    members'), as one label."""
    records = []
    for member in _members(params, name):
        for fold in params.folds:
            for seed in params.seeds:
                meta = _read_json(Path(models_dir) / member / run_name(fold, seed) / META)
                if meta is not None:
                    records.append(meta.get("runtime"))
    return describe_runtimes(records)


def _results_lines(params: Params, aggregates: dict[str, dict[str, Any]], models_dir: Path,
                   live_dir: Optional[Path]) -> list[str]:
    level = round(100 * params.evaluation.ci)
    lines = ["| Model | Test set | Runs | UAR | WA | Macro-F1 | Kappa | Pooled UAR | Pooled WA "
             "| Parameters (total / trainable) | Training time (all runs) | Computed with |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in aggregates:
        counts = _parameters(params, models_dir, name)
        fused = f" (fusion of {' + '.join(params.fusions[name].members)})" if name in params.fusions else ""
        for scope, agg in aggregates[name].items():
            if agg.get("skipped"):
                lines.append(f"| {name}{fused} | {agg['test_set']} | — | no test data | | | | | | | | |")
                continue
            runs = f"{len(agg['folds'])} fold(s) x {len(agg['seeds'])} seed(s)"
            flag = ""
            if agg["single_class_runs"]:
                flag = f" (single class in {', '.join(agg['single_class_runs'])})"
            lines.append(
                f"| {name}{fused} | {agg['test_set']} | {runs} | {_mean_std(agg, 'uar')}{flag} | {_mean_std(agg, 'accuracy')} "
                f"| {_mean_std(agg, 'macro_f1')} | {_mean_std(agg, 'cohen_kappa')} | {_pooled(agg, 'uar', level)} "
                f"| {_pooled(agg, 'accuracy', level)} | {_count(counts.get('total'))} / "
                f"{_count(counts.get('trainable'))} | {_duration(_train_seconds(params, live_dir, name))} "
                f"| {agg.get('computed_with', '—')} |")
    return lines


def _comparison_lines(rows: Sequence[dict[str, Any]], ci: float) -> list[str]:
    if not rows:
        return []
    level = round(100 * ci)
    lines = ["## Paired comparisons", "",
             f"Every two models evaluated on the same test clips in the same runs (all folds and seeds pooled). "
             f"Differences are A - B with a {level}% paired bootstrap interval that resamples speakers (clips of "
             "one speaker are not independent); p values are Holm-corrected over the pairs of each test set; "
             "McNemar's exact test compares correct/incorrect per clip (it assumes independent clips, which "
             "repeated seeds are not). **bold**: significant at 0.05 after correction.", "",
             f"With fewer than {MIN_CLUSTER_SPEAKERS} test speakers the bootstrap resamples clips instead "
             "(column *resampled*), which overstates the certainty.", "",
             "| Test set | A | B | resampled | UAR A - B | p (Holm) | Accuracy A - B | p (Holm) | McNemar p (Holm) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for metric in ("uar", "accuracy"):
            ci_ = r.get(f"{metric}_diff_ci{level}") or [None, None]
            text = f"{100 * r[f'{metric}_diff']:+.1f}" + (
                f" [{100 * ci_[0]:+.1f}, {100 * ci_[1]:+.1f}]" if None not in ci_ else "")
            p = f"{r[f'{metric}_p_holm']:.3f}"
            cells += [f"**{text}**" if r[f"{metric}_significant"] else text,
                      f"**{p}**" if r[f"{metric}_significant"] else p]
        mc = f"{r['mcnemar_p_holm']:.3f}"
        cells.append(f"**{mc}**" if r["mcnemar_significant"] else mc)
        unit = f"{r['test_speakers']} speakers" if r["cluster"] == "speaker" else f"clips ({r['test_speakers']} speakers)"
        lines.append(f"| {r['study']}/test [{r['corpus'] or 'all corpora'}] | {r['a']} | {r['b']} | {unit} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _matrix_lines(matrix: dict[str, Any], figures_dir: Optional[Path]) -> list[str]:
    lines: list[str] = []
    for sname, entry in matrix.items():
        corpora = entry["corpora"]
        lines += [f"## Corpus matrix: {sname}", "",
                  "UAR (%) of each model trained on one corpus (rows) and tested on every corpus's test split "
                  "(columns), mean over seeds; the diagonal is in-domain. Rows below the line are the "
                  "cross-corpus study's models on their target corpus (DANN: adapted to it)"
                  + (f"; figure: {figures_dir.name}/{sname}_matrix.png" if figures_dir else "") + ".", ""]
        head = "| Model | Trained on | " + " | ".join(f"test {c}" for c in corpora) + " |"
        lines += [head, "|---|---|" + "---|" * len(corpora)]
        for name, m in entry["models"].items():
            for train, row in zip(corpora, m["uar"]):
                lines.append(f"| {name} | {train} | " + " | ".join(_pct(v) for v in row) + " |")
        for e in entry["cross_corpus_rows"]:
            cells = [_pct(e["uar"]) if c == e["test"] else "" for c in corpora]
            note = "" if e["same_test_clips"] else " (different test clips)"
            lines.append(f"| {e['model']}{' (DANN)' if e['adapted'] else ''}{note} | {e['train']} ({e['study']}) | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return lines


def prune_stale_outputs(params: Params, dirs: Sequence[Path]) -> list[Path]:
    """Remove per-model folders of models params.yaml no longer defines, and run folders of
    folds or seeds it no longer lists.

    Their stages are gone, so nothing would overwrite them: left in place they
    would be saved into the next experiment as if they were its results.
    """
    runs = {run_name(f, s) for f in params.folds for s in params.seeds}
    removed = []
    for root in map(Path, dirs):
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not child.is_dir():
                continue
            if child.name not in params.models:
                stale = [child]
                log.info("removing %s: model %r is not in params.yaml `models`", child, child.name)
            else:
                stale = [d for d in sorted(child.iterdir()) if d.is_dir() and parse_run_name(d.name) is not None
                         and d.name not in runs]
                for d in stale:
                    log.info("removing %s: run %s is not in params.yaml folds x seeds", d, d.name)
            for d in stale:
                shutil.rmtree(d)
            removed += stale
    return removed


def aggregate_layer_weights(params: Params, metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """{model: mean and std over runs of its learned layer weights, the top hidden state, the run count}
    for every `layers: weighted` encoder model (from each run's layer_weights.json)."""
    out: dict[str, dict[str, Any]] = {}
    for name in params.models:
        rows = []
        for fold in params.folds:
            for seed in params.seeds:
                record = _read_json(Path(metrics_dir) / name / run_name(fold, seed) / f"{LAYER_WEIGHTS}.json")
                if record and record.get("layer_weights"):
                    rows.append(record["layer_weights"])
        if rows:
            arr = np.asarray(rows, dtype=float)
            mean = arr.mean(0)
            out[name] = {"mean": mean.round(6).tolist(),
                         "std": (arr.std(0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)).round(6).tolist(),
                         "top_layer": int(mean.argmax()), "runs": len(rows)}
    return out


def _layer_weight_lines(weights: dict[str, dict[str, Any]], figures_dir: Optional[Path]) -> list[str]:
    if not weights:
        return []
    lines = ["## Layer weights", "",
             "Softmax weights of the weighted layer sum (hidden state 0 = CNN / embedding output), mean over runs: "
             "which layers the emotion head reads.", "",
             "| model | runs | top hidden state | weights |", "|---|---|---|---|"]
    for name, entry in weights.items():
        lines.append(f"| {name} | {entry['runs']} | {entry['top_layer']} | "
                     + " ".join(f"{w:.3f}" for w in entry["mean"]) + " |")
    if figures_dir is not None:
        lines += ["", *(f"![{n} layer weights]({Path(figures_dir).name}/{n}_layer_weights.png)" for n in weights)]
    return [*lines, ""]


def write_summary(params: Params, metrics_dir: Path, models_dir: Path, out: Path,
                  live_dir: Optional[Path] = None, plots_dir: Optional[Path] = None,
                  comparisons_out: Optional[Path] = None, aggregate_out: Optional[Path] = None,
                  matrix_out: Optional[Path] = None, figures_dir: Optional[Path] = None,
                  fusions_dir: Optional[Path] = None, fusion_plots_dir: Optional[Path] = None) -> str:
    """metrics/summary.md and the files of the module docstring; returns the markdown."""
    metrics_dir, models_dir = Path(metrics_dir), Path(models_dir)
    plots_dir = Path(plots_dir) if plots_dir is not None else Path("plots")
    runs = collect_runs(params, metrics_dir, models_dir, plots_dir)
    fused = fuse_runs(params, runs)
    if fusions_dir is not None and fusion_plots_dir is not None:
        write_fused_runs(fused, fusions_dir, fusion_plots_dir)
    runs = {**runs, **fused}
    aggregates = aggregate_all(params, runs)
    for name, scopes in aggregates.items():  # runs are bit-for-bit comparable only under equal runtimes
        label = computed_with(params, models_dir, name)
        for record in scopes.values():
            record["computed_with"] = label
    weights = aggregate_layer_weights(params, metrics_dir)
    if aggregate_out is not None:
        write_metrics_json(Path(aggregate_out), {"models": aggregates, "layer_weights": weights})
    level = round(100 * params.evaluation.ci)
    text_lines = [
        "# Results", "",
        f"Every model ran on folds {list(params.folds)} x seeds {list(params.seeds)} (cells beyond a study's folds "
        "are not run). UAR, WA (accuracy), macro-F1 and Cohen's kappa in %: the mean ± sample std over runs. "
        f"Pooled: the metrics of all runs' predictions together, with {level}% bootstrap intervals "
        f"({params.evaluation.bootstrap} resamples, over speakers when a test set has >= {MIN_CLUSTER_SPEAKERS}). "
        "In-domain: the study's test split (the source corpus of a cross-corpus study, all corpora otherwise); "
        "target: a cross-corpus study's target corpus. \"single class\" marks runs that gave one class to every "
        "clip." + (" A fusion's row averages its members' class probabilities per clip (late fusion; its "
                   "parameters and training time are its members')." if params.fusions else ""), "",
        *_results_lines(params, aggregates, models_dir, live_dir), ""]
    rows = paired_comparisons(params, runs)
    text_lines += _comparison_lines(rows, params.evaluation.ci)
    if comparisons_out is not None:
        write_metrics_json(Path(comparisons_out), {"comparisons": rows})
    matrix = corpus_matrix(params, runs)
    if figures_dir is not None:
        figures_dir = Path(figures_dir)
        figures_dir.mkdir(parents=True, exist_ok=True)
        for stale in figures_dir.glob("*_matrix.png"):
            if stale.name[: -len("_matrix.png")] not in matrix:
                stale.unlink()
        for sname, entry in matrix.items():
            plot_corpus_matrix(figures_dir / f"{sname}_matrix.png", sname, entry)
        for stale in figures_dir.glob(f"*_{LAYER_WEIGHTS}.png"):
            if stale.name[: -len(f"_{LAYER_WEIGHTS}.png")] not in weights:
                stale.unlink()
        for name, entry in weights.items():
            plot_layer_weights(figures_dir / f"{name}_{LAYER_WEIGHTS}.png", entry["mean"],
                               f"{name}: layer weights over {entry['runs']} run(s)",
                               entry["std"] if entry["runs"] > 1 else None)
    if matrix_out is not None:
        write_metrics_json(Path(matrix_out), {"studies": matrix})
    text_lines += _matrix_lines(matrix, figures_dir)
    text_lines += _layer_weight_lines(weights, figures_dir)
    text = "\n".join(text_lines)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log.info("wrote %s", out)
    return text
