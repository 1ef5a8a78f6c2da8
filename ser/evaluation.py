"""Metrics, bootstrap confidence intervals, confusion matrices and the results table.

UAR (unweighted average recall) is the mean per-class recall over the classes
present in y_true: the SER convention, robust to the class imbalance of
IEMOCAP. A class that is never predicted still counts (recall 0); a class
absent from the test set is left out rather than counted as 0 or 1.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score, f1_score
from tqdm.auto import tqdm

from ser.config import Params
from ser.data import FeatureDataset, make_loader, max_samples_for
from ser.stats import Predictions, compare_models, read_predictions_csv, write_predictions_csv
from ser.stores import FeatureStore, read_index

log = logging.getLogger(__name__)

__all__ = ["compute_metrics", "bootstrap_ci", "evaluate_model", "metrics_record", "write_metrics_json",
           "plot_confusion", "Scope", "model_scopes", "evaluate_model_scopes",
           "model_fingerprint", "write_summary", "prune_stale_outputs", "resolve_device", "SCOPES"]

SCOPES = ("in_domain", "target")
MIN_CLUSTER_SPEAKERS = 5  # fewer test speakers: the paired bootstrap resamples clips (see paired_comparisons)


# --------------------------------------------------------------------------- metrics
def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def _uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes = np.unique(y_true)
    if len(classes) == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"accuracy": _accuracy, "uar": _uar}


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, UAR, macro-F1, Cohen's kappa, per-class recall/support and the confusion matrix.

    y_true/y_pred are class indices into `labels`. per_class_recall lists only
    classes present in y_true (the ones UAR averages); support lists all.
    macro_f1 averages over the classes present in y_true or y_pred.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(labels)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= k):
        raise ValueError(f"class indices must be in [0, {k}) for labels {list(labels)}")
    cm = _confusion(y_true, y_pred, k)
    support = cm.sum(axis=1)
    present = np.flatnonzero(support)
    recall = {labels[c]: float(cm[c, c] / support[c]) for c in present}
    if len(np.unique(np.concatenate([y_true, y_pred]))) > 1:
        kappa = float(cohen_kappa_score(y_true, y_pred))
    else:
        kappa = float("nan")  # undefined (and sklearn warns) when a single class is everywhere
    return {
        "accuracy": _accuracy(y_true, y_pred),
        "uar": float(np.mean(list(recall.values()))) if recall else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)) if len(y_true) else float("nan"),
        "cohen_kappa": kappa,
        "per_class_recall": recall,
        "support": {name: int(support[c]) for c, name in enumerate(labels)},
        "confusion": cm.tolist(),
        "labels": list(labels),
        "n": int(len(y_true)),
    }


def bootstrap_ci(y_true: Sequence[int], y_pred: Sequence[int],
                 metric: Union[str, Callable[[np.ndarray, np.ndarray], float]] = "uar",
                 n: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric` ("accuracy", "uar" or a callable) over utterances."""
    fn = METRICS[metric] if isinstance(metric, str) else metric
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0 or n < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.empty(n)
    for b in range(n):
        idx = rng.integers(0, len(y_true), len(y_true))
        stats[b] = fn(y_true[idx], y_pred[idx])
    tail = (1.0 - ci) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- inference
def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU; otherwise a torch device name (cpu, cuda, cuda:1).

    Chosen directly rather than through an Accelerator, whose process-wide
    state would pin the training settings of a later run in the same process.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is visible; use cpu (or auto)")
    return device


@torch.no_grad()
def evaluate_model(model_dir: Path, features_root: Path, split: str = "test", corpus: Optional[str] = None,
                   *, device: str = "auto", batch_size: Optional[int] = None
                   ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run a saved model on one split (optionally one corpus) of its feature store.

    Returns (compute_metrics(...), y_true, y_pred) in store order.
    """
    from ser.checkpoint import load_checkpoint
    from ser.classical import evaluate_classical, is_linear
    from ser.training import BACKBONE_CACHE

    model_dir, features_root = Path(model_dir), Path(features_root)
    if is_linear(model_dir):  # the classical baseline: numpy weights, no torch model
        return evaluate_classical(model_dir, features_root, split, corpus)
    target = resolve_device(device)
    model, meta = load_checkpoint(model_dir, device=str(target), cache_dir=model_dir / BACKBONE_CACHE)
    model.eval()
    mp = meta["model_params"]
    store_root = features_root / mp["input"] / mp["study"]
    store = FeatureStore(store_root, split, corpus=corpus)
    if store.meta != meta["features"]:
        raise ValueError(f"{store_root}/meta.json differs from the feature meta {model_dir} was trained on; "
                         "re-run training (`dvc repro`) after changing feature parameters")
    if len(store) == 0:
        raise ValueError(f"{store_root}/{split}.csv has no rows" + (f" for corpus {corpus!r}" if corpus else ""))
    labels = meta["labels"]
    max_seconds = (mp.get("wav2vec2") or {}).get("max_seconds")
    dataset = FeatureDataset(store, labels, max_samples=max_samples_for(store, max_seconds), crop="center")
    loader = make_loader(dataset, batch_size or mp["batch_size"])
    log.info("evaluating %s on %s/%s%s (%d utterances) on %s", model_dir, store_root, split,
             f" [{corpus}]" if corpus else "", len(store), target)
    preds = []
    for batch in tqdm(loader, desc=f"eval {model_dir.name}", leave=False, disable=None):
        x = batch["x"].to(target)
        lengths = batch["lengths"].to(target) if "lengths" in batch else None
        preds.append(model(x, lengths).argmax(dim=-1).cpu())
    y_pred = torch.cat(preds).numpy()
    y_true = dataset.labels
    return compute_metrics(y_true, y_pred, labels), y_true, y_pred


# --------------------------------------------------------------------------- writers
def _plain(value: Any) -> Any:
    """JSON-safe plain values: NaN becomes null (DVC cannot parse NaN)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


def metrics_record(metrics: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray, *, model: str,
                   test_set: str, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The metrics JSON for one (model, test set): point estimates plus bootstrap CIs."""
    record = {"model": model, "test_set": test_set}
    record.update({k: metrics[k] for k in ("accuracy", "uar", "macro_f1", "cohen_kappa", "n")})
    for name in ("accuracy", "uar"):
        record[f"{name}_ci{round(ci * 100)}"] = list(bootstrap_ci(y_true, y_pred, name, n_boot, ci, seed))
    record["per_class_recall"] = metrics["per_class_recall"]
    record["support"] = metrics["support"]
    # A constant predictor's UAR interval collapses to a point ([25, 25] for 4 classes), which reads as
    # certainty: say plainly when a model predicts one class, and how dominant its top class is.
    shares = _prediction_shares(y_pred, metrics["labels"])
    top = max(shares, key=shares.get) if len(y_pred) else None
    record["prediction_share"] = shares
    record["top_class"] = top
    record["top_class_share"] = shares[top] if top else None
    record["single_class"] = top if top and shares[top] == 1.0 else None
    return _plain(record)


def write_metrics_json(path: Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(record), indent=2) + "\n")
    log.info("wrote %s", path)


def plot_confusion(path: Path, confusion: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> None:
    """PNG with the count matrix and the row-normalised (recall) matrix side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.7 * len(labels) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    for ax, mat, sub, fmt in ((axes[0], cm, "counts", "{:.0f}"), (axes[1], norm, "row-normalised", "{:.2f}")):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(mat.max(), 1e-9))
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
               xlabel="Predicted label", ylabel="True label", title=sub)
        ax.tick_params(axis="x", labelrotation=45)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center",
                        color="white" if mat[i, j] > 0.6 * mat.max() else "black", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info("wrote %s", path)


# --------------------------------------------------------------------------- stage entry points
@dataclass(frozen=True)
class Scope:
    """One test set of one model: `in_domain` (its study's test split: the source
    corpus of a cross-corpus study, every corpus otherwise) or `target` (a
    cross-corpus study's target corpus, named in `corpus`)."""
    name: str
    study: str
    corpus: Optional[str]  # None: every corpus of the study

    @property
    def test_set(self) -> str:
        return f"{self.study}/test [{self.corpus or 'all corpora'}]"


def model_scopes(params: Params, name: str) -> list[Scope]:
    """The test sets model `name` is evaluated on."""
    mp = params.models[name]
    study = params.study(mp.study)
    scopes = [Scope("in_domain", mp.study, study.source if study.target else None)]
    if study.target:
        scopes.append(Scope("target", mp.study, study.target))
    return scopes


def _test_rows(store_root: Path, corpus: Optional[str]) -> list:
    """Index rows of the test clips of `corpus` (all corpora when None), in store order
    (the order evaluate_model predicts in); empty when the store has no test split."""
    index = store_root / "test.csv"
    if not index.is_file():
        return []
    return [r for r in read_index(index) if corpus is None or r.corpus == corpus]


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over a model directory's top-level files (weights and meta): which model a metrics file describes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _prediction_shares(y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(y_pred, dtype=np.int64), minlength=len(labels))
    total = max(1, int(counts.sum()))
    return {label: float(counts[k] / total) for k, label in enumerate(labels)}


def evaluate_model_scopes(params: Params, name: str, models_dir: Path, features_root: Path, metrics_dir: Path,
                          plots_dir: Path) -> dict[str, dict[str, Any]]:
    """Evaluate one model on each of its test sets.

    Writes <metrics_dir>/<scope>.json and <plots_dir>/<scope>.{csv,png}. A test
    set without clips (e.g. a source corpus used only for training) is skipped,
    logged, and recorded as {"skipped": reason}, so the metrics say so too.
    """
    from ser.checkpoint import META

    if name not in params.models:
        raise KeyError(f"unknown model {name!r}; params.yaml `models` defines: {sorted(params.models)}")
    mp = params.models[name]
    model_dir, metrics_dir, plots_dir = Path(models_dir) / name, Path(metrics_dir), Path(plots_dir)
    store_root = Path(features_root) / mp.input / mp.study
    fingerprint = model_fingerprint(model_dir)
    records: dict[str, dict[str, Any]] = {}
    for scope in model_scopes(params, name):
        base = {"model": name, "scope": scope.name, "test_set": scope.test_set, "corpus": scope.corpus,
                "model_fingerprint": fingerprint}
        index = _test_rows(store_root, scope.corpus)
        if not index:
            reason = (f"no test clips of {scope.corpus or 'any corpus'} in {store_root}: "
                      f"splits.{mp.study}.{scope.corpus or '<corpus>'} lists no test speakers")
            log.warning("%s: skipping %s evaluation (%s)", name, scope.name, reason)
            records[scope.name] = {**base, "skipped": reason}
            write_metrics_json(metrics_dir / f"{scope.name}.json", records[scope.name])
            continue
        metrics, y_true, y_pred = evaluate_model(model_dir, features_root, "test", scope.corpus,
                                                 device=params.train.device)
        record = metrics_record(metrics, y_true, y_pred, model=name, test_set=scope.test_set,
                                n_boot=params.evaluation.bootstrap, ci=params.evaluation.ci, seed=params.seed)
        record = {**base, **record}
        write_metrics_json(metrics_dir / f"{scope.name}.json", record)
        # Per utterance, with ids and speakers: DVC's confusion template reads actual/predicted,
        # summarize's paired tests align models by utt_id and resample by speaker.
        write_predictions_csv(plots_dir / f"{scope.name}.csv", Predictions(
            [r.utt_id for r in index], [r.speaker for r in index], y_true, y_pred, metrics["labels"]))
        warn = f", predicts only {record['single_class']}" if record.get("single_class") else ""
        plot_confusion(plots_dir / f"{scope.name}.png", metrics["confusion"], metrics["labels"],
                       f"{name} on {scope.test_set}: UAR {metrics['uar']:.3f}{warn}")
        log.info("%s on %s: accuracy %.3f, UAR %.3f (n=%d)%s", name, scope.test_set, metrics["accuracy"],
                 metrics["uar"], metrics["n"], warn)
        records[scope.name] = record
    if not any("skipped" not in r for r in records.values()):
        raise ValueError(f"model {name!r} has no test data in any of its test sets ({store_root}); "
                         f"list test speakers under splits.{mp.study}")
    if not (model_dir / META).is_file():
        raise FileNotFoundError(f"{model_dir / META} is missing: train {name!r} first (`dvc repro`)")
    return records


# --------------------------------------------------------------------------- summary
def _pct(record: Optional[dict], key: str) -> str:
    if not record or record.get(key) is None:
        return "—"
    ci = next((v for k, v in record.items() if k.startswith(f"{key}_ci") and v and None not in v), None)
    text = f"{100 * record[key]:.1f}%"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


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


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _timing(live_dir: Optional[Path], name: str) -> Optional[float]:
    """Training seconds from <live_dir>/<name>/timing.json (kept out of the cached model directory)."""
    record = _read_json(Path(live_dir) / name / "timing.json") if live_dir else None
    value = (record or {}).get("train_seconds")
    return float(value) if isinstance(value, (int, float)) else None


def _cell(record: Optional[dict], key: str) -> str:
    if record and record.get("skipped"):
        return "no test data"
    text = _pct(record, key)
    if record and record.get("single_class") and key == "uar":
        text += f" (predicts only {record['single_class']})"
    return text


def prune_stale_outputs(params: Params, dirs: Sequence[Path]) -> list[Path]:
    """Remove per-model folders (metrics, plots, DVCLive) of models params.yaml no longer defines.

    Their stages are gone, so nothing would overwrite them: left in place they
    would be saved into the next experiment as if they were its results.
    """
    removed = []
    for root in map(Path, dirs):
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name not in params.models:
                log.info("removing %s: model %r is not in params.yaml `models`", child, child.name)
                shutil.rmtree(child)
                removed.append(child)
    return removed


def paired_comparisons(params: Params, metrics_dir: Path, plots_dir: Path) -> list[dict[str, Any]]:
    """Paired tests between every two models evaluated on the same test clips.

    Models are grouped by (study, scope, corpus); within a group every pair
    gets a speaker-clustered paired bootstrap of the UAR and accuracy
    differences and McNemar's exact test, Holm-corrected over the group's pairs
    (ser.stats.compare_models).
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for name in params.models:
        for scope in model_scopes(params, name):
            record = _read_json(Path(metrics_dir) / name / f"{scope.name}.json")
            path = Path(plots_dir) / name / f"{scope.name}.csv"
            if record is None or record.get("skipped") or not path.is_file():
                continue
            group = groups.setdefault((scope.study, scope.name, scope.corpus), {})
            group[name] = read_predictions_csv(path, record.get("labels") or params.study(scope.study).labels)
    rows = []
    for (study, scope, corpus), preds in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len(preds) < 2:
            continue
        speakers = len(set(next(iter(preds.values())).speaker.tolist()))
        # Resampling 2-4 speakers gives a handful of distinct replicates: intervals of zero width and
        # p values that mean nothing. Below MIN_SPEAKERS the clips are resampled, and the row says so.
        cluster = "speaker" if speakers >= MIN_CLUSTER_SPEAKERS else None
        if cluster is None:
            log.warning("%s/test [%s]: %d test speaker(s), fewer than %d: paired bootstrap over clips, which "
                        "treats clips of one speaker as independent", study, corpus or "all corpora", speakers,
                        MIN_CLUSTER_SPEAKERS)
        for row in compare_models(preds, n_boot=params.evaluation.bootstrap, seed=params.seed, cluster=cluster,
                                  ci=params.evaluation.ci):
            rows.append({"study": study, "scope": scope, "corpus": corpus, "test_speakers": speakers, **row})
    return rows


def _comparison_lines(rows: Sequence[dict[str, Any]], ci: float) -> list[str]:
    if not rows:
        return []
    level = round(100 * ci)
    lines = ["## Paired comparisons", "",
             f"Every two models evaluated on the same test clips. Differences are A - B with a {level}% paired "
             "bootstrap interval that resamples speakers (clips of one speaker are not independent); p values are "
             "Holm-corrected over the pairs of each test set; McNemar's exact test compares correct/incorrect per "
             "clip (it assumes independent clips). **bold**: significant at 0.05 after correction.", "",
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


def write_summary(params: Params, metrics_dir: Path, models_dir: Path, out: Path,
                  live_dir: Optional[Path] = None, plots_dir: Optional[Path] = None,
                  comparisons_out: Optional[Path] = None) -> str:
    """Markdown results table (one row per model in params.models), written to `out`.

    Reads <metrics_dir>/<model>/<scope>.json, models/<model>/meta.json
    (parameter counts) and <live_dir>/<model>/timing.json. Refuses metrics
    written for another version of a model (their `model_fingerprint` differs),
    so the table never mixes runs. With `plots_dir` (the per-utterance
    predictions) it adds the paired comparisons, also written as JSON to
    `comparisons_out`.
    """
    from ser.checkpoint import META

    metrics_dir, models_dir = Path(metrics_dir), Path(models_dir)
    lines = ["| Model | Study | In-domain test set | In-domain accuracy | In-domain UAR | Target test set "
             "| Target accuracy | Target UAR | Parameters (total) | Parameters (trainable) | Training time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, mp in params.models.items():
        meta = _read_json(models_dir / name / META)
        if meta is None:
            raise FileNotFoundError(f"{models_dir / name / META} is missing: train {name!r} first (`dvc repro`)")
        fingerprint = model_fingerprint(models_dir / name)
        records: dict[str, Optional[dict]] = {}
        for scope in model_scopes(params, name):
            path = metrics_dir / name / f"{scope.name}.json"
            record = _read_json(path)
            if record is None:
                raise FileNotFoundError(f"{path} is missing: evaluate {name!r} first (`dvc repro`)")
            if record.get("model_fingerprint") != fingerprint:
                raise ValueError(f"{path} describes another version of {models_dir / name}; "
                                 f"re-run its evaluation (`dvc repro`)")
            records[scope.name] = record
        in_domain, target = records.get("in_domain"), records.get("target")
        counts = meta.get("parameters", {})
        lines.append(
            f"| {name} | {mp.study} | {(in_domain or {}).get('test_set', '—')} | {_cell(in_domain, 'accuracy')} "
            f"| {_cell(in_domain, 'uar')} | {(target or {}).get('test_set', '—')} | {_cell(target, 'accuracy')} "
            f"| {_cell(target, 'uar')} | {_count(counts.get('total'))} | {_count(counts.get('trainable'))} "
            f"| {_duration(_timing(live_dir, name))} |")
    ci = round(100 * params.evaluation.ci)
    text = "\n".join([
        "# Results", "",
        f"Accuracy and UAR on each model's test sets, with {ci}% percentile bootstrap intervals "
        f"({params.evaluation.bootstrap} resamples) in brackets. In-domain: the study's test split (the source "
        "corpus of a cross-corpus study, all corpora otherwise). Target: a cross-corpus study's target corpus "
        "(— where the model is not cross-corpus). \"predicts only X\" marks a model that gives one class to "
        "every clip: its interval is then no measure of certainty.", "",
        *lines, ""])
    if plots_dir is not None:
        rows = paired_comparisons(params, metrics_dir, plots_dir)
        text += "\n" + "\n".join(_comparison_lines(rows, params.evaluation.ci))
        if comparisons_out is not None:
            write_metrics_json(Path(comparisons_out), {"comparisons": rows})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log.info("wrote %s", out)
    return text
