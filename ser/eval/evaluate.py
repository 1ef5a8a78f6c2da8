"""Metrics, bootstrap confidence intervals, confusion matrices and the results table.

UAR (unweighted average recall) is the mean per-class recall over the classes
present in y_true: the SER convention, robust to the class imbalance of
IEMOCAP. A class that is never predicted still counts (recall 0); a class
absent from the test set is left out rather than counted as 0 or 1.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ser.config import Params
from ser.features.stores import fold_root, read_index
from ser.models.base import WEIGHTS, read_meta
from ser.models.learner import load_fitted
from ser.runtime import resolve_device
from ser.stats import Predictions, bootstrap_ci, compute_metrics, write_predictions_csv

log = logging.getLogger(__name__)

__all__ = ["evaluate_model", "metrics_record", "write_metrics_json",
           "plot_confusion", "Scope", "model_scopes", "evaluate_model_scopes",
           "model_fingerprint", "SCOPES", "MIN_CLUSTER_SPEAKERS"]

SCOPES = ("in_domain", "target")
MIN_CLUSTER_SPEAKERS = 5  # fewer test speakers: the paired bootstrap resamples clips (see paired_comparisons)


# --------------------------------------------------------------------------- inference
def evaluate_model(model_dir: Path, features_root: Path, split: str = "test", corpus: Optional[str] = None,
                   *, device: str = "auto", batch_size: Optional[int] = None
                   ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run a saved model (any family) on one split (optionally one corpus) of its feature store.

    Returns (compute_metrics(...), y_true, y_pred) in store order.
    """
    metrics, y_true, y_pred, _ = _run_split(model_dir, features_root, split, corpus, device=device,
                                            batch_size=batch_size)
    return metrics, y_true, y_pred


def _run_split(model_dir: Path, features_root: Path, split: str, corpus: Optional[str], *, device: str = "auto",
               batch_size: Optional[int] = None) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """evaluate_model's result and the per-clip scores [n, n_classes] (ser.models.base.Fitted.scores)."""
    fitted = load_fitted(Path(model_dir), resolve_device(device))
    y_true, y_pred, scores = fitted.predict_split(Path(features_root), split, corpus, batch_size=batch_size)
    return compute_metrics(y_true, y_pred, fitted.labels), y_true, y_pred, scores


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


LAYER_WEIGHTS = "layer_weights"  # <metrics dir>/layer_weights.json and <plots dir>/layer_weights.png


def layer_weights_of(model_dir: Path) -> Optional[list[float]]:
    """The softmax-normalised layer weights of a `layers: weighted` encoder checkpoint (None otherwise):
    which hidden states (0 = CNN / embedding output) the emotion head reads."""
    from safetensors import safe_open

    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as fh:
        if "layer_pool.weights" not in fh.keys():
            return None
        return torch.softmax(fh.get_tensor("layer_pool.weights").float(), 0).tolist()


def plot_layer_weights(path: Path, mean: Sequence[float], title: str, std: Optional[Sequence[float]] = None) -> None:
    """Bar chart of the layer weights per hidden state (error bars: std over runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(mean) + 2), 3.2), constrained_layout=True)
    ax.bar(range(len(mean)), mean, yerr=std, color="tab:blue", capsize=2)
    ax.axhline(1 / len(mean), color="grey", lw=0.8, ls="--", label="uniform")
    ax.set(xlabel="hidden state (0 = CNN / embedding output)", ylabel="softmax weight", title=title)
    ax.legend(loc="upper right", fontsize=8)
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
    cross-corpus study's target corpus, named in `corpus`). Scopes named after a
    corpus hold that corpus's test split alone: in a `matrix` study, in a pooled
    study of several corpora (beside the pooled `in_domain`), and for each source
    of a multi-source cross-corpus study."""
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
    if study.design == "matrix":
        return [Scope(corpus, mp.study, corpus) for corpus in study.corpora]
    if not study.target:  # pooled: all corpora, then each corpus alone (an easy corpus must not hide the others)
        each = study.corpora if len(study.corpora) > 1 else ()
        return [Scope("in_domain", mp.study, None), *(Scope(corpus, mp.study, corpus) for corpus in each)]
    sources = study.source or tuple(c for c in study.corpora if c != study.target)
    if len(sources) == 1:
        scopes = [Scope("in_domain", mp.study, sources[0])]
    else:  # multi-source: each source's own test split
        scopes = [Scope(corpus, mp.study, corpus) for corpus in sources]
    return [*scopes, Scope("target", mp.study, study.target)]


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


def evaluate_model_scopes(params: Params, name: str, model_dir: Path, features_root: Path, metrics_dir: Path,
                          plots_dir: Path) -> dict[str, dict[str, Any]]:
    """Evaluate one run of a model (its saved `model_dir`) on each of its test sets.

    Writes <metrics_dir>/<scope>.json and <plots_dir>/<scope>.{csv,png}. A test
    set without clips (e.g. a source corpus used only for training) is skipped,
    logged, and recorded as {"skipped": reason}, so the metrics say so too.
    """
    mp = params.model(name)
    model_dir, metrics_dir, plots_dir = Path(model_dir), Path(metrics_dir), Path(plots_dir)
    run = read_meta(model_dir)
    fold, seed = int(run.get("fold", 1)), int(run.get("seed", 0))
    store_root = fold_root(features_root, mp.input, mp.study, fold, mp.store_key)
    fingerprint = model_fingerprint(model_dir)
    records: dict[str, dict[str, Any]] = {}
    pooled: Optional[tuple[list, Predictions]] = None  # the all-corpora scope's rows and predictions
    for scope in model_scopes(params, name):
        base = {"model": name, "scope": scope.name, "test_set": scope.test_set, "corpus": scope.corpus,
                "fold": fold, "seed": seed, "model_fingerprint": fingerprint}
        index = _test_rows(store_root, scope.corpus)
        if not index:
            reason = (f"no test clips of {scope.corpus or 'any corpus'} in {store_root}: "
                      f"splits.{mp.study}.{scope.corpus or '<corpus>'} lists no test speakers")
            log.warning("%s: skipping %s evaluation (%s)", name, scope.name, reason)
            records[scope.name] = {**base, "skipped": reason}
            write_metrics_json(metrics_dir / f"{scope.name}.json", records[scope.name])
            continue
        if scope.corpus is not None and pooled is not None:  # a corpus of the pooled test set: its rows of it
            preds = pooled[1].subset(np.array([r.corpus == scope.corpus for r in pooled[0]]))
            metrics = compute_metrics(preds.y_true, preds.y_pred, list(preds.labels))
        else:
            metrics, y_true, y_pred, scores = _run_split(model_dir, features_root, "test", scope.corpus,
                                                         device=params.train.device)
            preds = Predictions([r.utt_id for r in index], [r.speaker for r in index], y_true, y_pred,
                                metrics["labels"], scores)
            if scope.corpus is None:
                pooled = (index, preds)
        y_true, y_pred = preds.y_true, preds.y_pred
        record = metrics_record(metrics, y_true, y_pred, model=name, test_set=scope.test_set,
                                n_boot=params.evaluation.bootstrap, ci=params.evaluation.ci,
                                seed=params.evaluation.seed)
        record = {**base, **record}
        write_metrics_json(metrics_dir / f"{scope.name}.json", record)
        # Per utterance, with ids, speakers and scores: DVC's confusion template reads actual/predicted,
        # summarize's paired tests align models by utt_id and resample by speaker.
        write_predictions_csv(plots_dir / f"{scope.name}.csv", preds)
        warn = f", predicts only {record['single_class']}" if record.get("single_class") else ""
        plot_confusion(plots_dir / f"{scope.name}.png", metrics["confusion"], metrics["labels"],
                       f"{name} (fold {fold}, seed {seed}) on {scope.test_set}: UAR {metrics['uar']:.3f}{warn}")
        log.info("%s on %s: accuracy %.3f, UAR %.3f (n=%d)%s", name, scope.test_set, metrics["accuracy"],
                 metrics["uar"], metrics["n"], warn)
        records[scope.name] = record
    weights = layer_weights_of(model_dir)
    if weights is not None:
        top = int(np.argmax(weights))
        write_metrics_json(metrics_dir / f"{LAYER_WEIGHTS}.json", {
            "model": name, "fold": fold, "seed": seed, "model_fingerprint": fingerprint,
            "layer_weights": weights, "top_layer": top})
        plot_layer_weights(plots_dir / f"{LAYER_WEIGHTS}.png", weights,
                           f"{name} (fold {fold}, seed {seed}): layer weights, top {top}")
        log.info("%s: layer weights %s (top: hidden state %d)", name, [round(w, 3) for w in weights], top)
    if not any("skipped" not in r for r in records.values()):
        raise ValueError(f"model {name!r} has no test data in any of its test sets ({store_root}); "
                         f"list test speakers under splits.{mp.study}")
    return records
