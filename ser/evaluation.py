"""Metrics, bootstrap confidence intervals, confusion matrices and the results table.

UAR (unweighted average recall) is the mean per-class recall over the classes
present in y_true: the SER convention, robust to the class imbalance of
IEMOCAP. A class that is never predicted still counts (recall 0); a class
absent from the test set is left out rather than counted as 0 or 1.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from sklearn.metrics import cohen_kappa_score, f1_score
from tqdm.auto import tqdm

from ser.config import Params
from ser.data import FeatureDataset, make_loader, max_samples_for
from ser.stores import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["compute_metrics", "bootstrap_ci", "evaluate_model", "metrics_record", "write_metrics_json",
           "write_confusion_csv", "plot_confusion", "evaluate_scope", "write_summary", "resolve_device", "SCOPES"]

SCOPES = ("in_domain", "ravdess")


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
    from ser.training import BACKBONE_CACHE

    model_dir, features_root = Path(model_dir), Path(features_root)
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
    return _plain(record)


def write_metrics_json(path: Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(record), indent=2) + "\n")
    log.info("wrote %s", path)


def write_confusion_csv(path: Path, y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> None:
    """One row per utterance (actual, predicted): the input of DVC's `confusion` plot template."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((labels[t], labels[p]) for t, p in zip(y_true, y_pred))
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
def scope_targets(params: Params, scope: str) -> list[tuple[str, Optional[str]]]:
    """(model name, corpus filter or None) pairs evaluated in a scope.

    in_domain: every model on its study's test split, restricted to the source
    corpus when the study has a target (else all corpora); ravdess: the
    cross-corpus models (studies with a target) on the target corpus.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {list(SCOPES)}")
    targets = []
    for name, mp in params.models.items():
        study = params.study(mp.study)
        if scope == "in_domain":
            targets.append((name, study.source if study.target else None))
        elif study.target:
            targets.append((name, study.target))
    return targets


def evaluate_scope(params: Params, scope: str, models_dir: Path, features_root: Path, metrics_dir: Path,
                   plots_dir: Path) -> dict[str, dict[str, Any]]:
    """Evaluate every model of `scope`; write <metrics_dir>/<model>.json and <plots_dir>/<model>.{csv,png}."""
    records = {}
    for name, corpus in scope_targets(params, scope):
        study = params.models[name].study
        test_set = f"{study}/test" + (f" [{corpus}]" if corpus else " [all corpora]")
        metrics, y_true, y_pred = evaluate_model(Path(models_dir) / name, features_root, "test", corpus,
                                                 device=params.train.device)
        record = metrics_record(metrics, y_true, y_pred, model=name, test_set=test_set,
                                n_boot=params.evaluation.bootstrap, ci=params.evaluation.ci, seed=params.seed)
        write_metrics_json(Path(metrics_dir) / f"{name}.json", record)
        write_confusion_csv(Path(plots_dir) / f"{name}.csv", y_true, y_pred, metrics["labels"])
        plot_confusion(Path(plots_dir) / f"{name}.png", metrics["confusion"], metrics["labels"],
                       f"{name} on {test_set}: UAR {metrics['uar']:.3f}")
        log.info("%s on %s: accuracy %.3f, UAR %.3f (n=%d)", name, test_set, metrics["accuracy"],
                 metrics["uar"], metrics["n"])
        records[name] = record
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


def write_summary(params: Params, metrics_dir: Path, models_dir: Path, out: Path) -> str:
    """Markdown results table (one row per model in params.models), written to `out`.

    Reads metrics/<scope>/<model>.json and models/<model>/meta.json (parameter
    counts, training time).
    """
    from ser.checkpoint import META

    metrics_dir, models_dir = Path(metrics_dir), Path(models_dir)
    lines = ["| Model | Study | In-domain accuracy | In-domain UAR | RAVDESS accuracy | RAVDESS UAR "
             "| Parameters (total) | Parameters (trainable) | Training time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, mp in params.models.items():
        in_domain = _read_json(metrics_dir / "in_domain" / f"{name}.json")
        target = _read_json(metrics_dir / "ravdess" / f"{name}.json")
        meta = _read_json(models_dir / name / META)
        if meta is None:
            raise FileNotFoundError(f"{models_dir / name / META} is missing: train {name!r} first (`dvc repro`)")
        counts = meta.get("parameters", {})
        lines.append(f"| {name} | {mp.study} | {_pct(in_domain, 'accuracy')} | {_pct(in_domain, 'uar')} "
                     f"| {_pct(target, 'accuracy')} | {_pct(target, 'uar')} | {_count(counts.get('total'))} "
                     f"| {_count(counts.get('trainable'))} | {_duration(meta.get('train_seconds'))} |")
    ci = round(100 * params.evaluation.ci)
    text = "\n".join([
        "# Results", "",
        f"Accuracy and UAR on each study's test split, with {ci}% percentile bootstrap intervals "
        f"({params.evaluation.bootstrap} resamples) in brackets. In-domain: the source corpus of a "
        "cross-corpus study, all corpora otherwise. RAVDESS: the cross-corpus models on the target "
        "corpus's held-out actors (— where the model is not cross-corpus).", "",
        *lines, ""])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log.info("wrote %s", out)
    return text
