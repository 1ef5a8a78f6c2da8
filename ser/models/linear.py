"""The classical SER baseline: a linear SVM or logistic regression on openSMILE functionals.

Arch `linear` in params.yaml (section `classical:`, see ser.config.ClassicalParams),
input `egemaps` (88 eGeMAPSv02 functionals) or `compare` (6373 ComParE_2016
functionals), read from the stores of `stages/precompute.py --kind egemaps|compare`.

Protocol:
  * Standardisation. "global": z-score with the train split's per-feature
    mean/std. "speaker": z-score every speaker's clips with that speaker's own
    mean/std (the per-speaker normalisation common in the SER literature); it
    uses features only, never labels, so it applies to test speakers as well
    (statistics over the speaker's clips in the split being scored). A feature
    that does not vary (or a speaker with one clip) is only centred.
  * Model selection. One fit on the train split per C of the grid; the C
    with the best validation UAR is kept (ties: the smaller C). The kept model
    is the train-only fit: there is no refit on train + val, so validation
    stays an honest selector and the test split is never touched.
    Deterministic: random_state is params `seed`.
  * Checkpoint. Both classifiers are linear, so the model is W [n_classes,
    n_features] and b [n_classes] plus the train-split mean/std, saved as
    models/<name>/model.safetensors (float64) + meta.json (format
    "ser-linear/1"; never pickled). Prediction is argmax((x - mean) / std @ W.T + b),
    exactly sklearn's. Scores: softmax of that for logistic regression (its
    predict_proba); the raw decision values for the SVM, which has no
    probabilities (`scores` in meta.json says which). A class with no train
    rows gets bias -1e30: never predicted.
  * `ser predict` scores a whole file (no windows: the functionals summarise
    the clip). A file has no speaker statistics, so a "speaker" model falls
    back to the global train statistics there, with a warning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ser.config import ClassicalParams, Params
from ser.errors import CheckpointError
from ser.features.stores import FeatureStore, fold_root
from ser.fsutil import write_json_atomic
from ser.models.base import EpochCallback, Fitted, Learner, read_meta
from ser.stats import compute_metrics

__all__ = ["FORMAT", "LinearModel", "LinearFitted", "LinearLearner", "fit_stats", "standardise",
           "speaker_standardise", "train_classical", "load_linear", "save_linear"]

log = logging.getLogger(__name__)

FORMAT = "ser-linear/1"
WEIGHTS = "model.safetensors"
META = "meta.json"
ABSENT_BIAS = -1e30  # bias of a class the train split lacks: never the argmax


# --------------------------------------------------------------------------- standardisation
def fit_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature float64 mean and std of [n, F] rows; a std that is ~0
    (relative to the feature's scale) becomes 1, so that feature is only centred."""
    x = np.asarray(x, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return mean, std


def standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - mean) / std


def speaker_standardise(x: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Each speaker's rows z-scored with that speaker's own statistics (fit_stats)."""
    x = np.asarray(x, dtype=np.float64)
    speakers = np.asarray(speakers)
    out = np.empty_like(x)
    for spk in np.unique(speakers):
        rows = speakers == spk
        out[rows] = standardise(x[rows], *fit_stats(x[rows]))
    return out


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class LinearModel:
    """W [K, F], b [K] on standardised features; mean/std: the train split's statistics."""
    W: np.ndarray
    b: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    standardisation: str  # "global" | "speaker"
    scores: str  # "softmax" (logistic regression) | "decision" (SVM)

    def prepare(self, x: np.ndarray, speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        """Standardised rows: per speaker for a "speaker" model given speakers, else global."""
        if self.standardisation == "speaker" and speakers is not None:
            return speaker_standardise(x, speakers)
        return standardise(x, self.mean, self.std)

    def decision(self, xs: np.ndarray) -> np.ndarray:
        return xs @ self.W.T + self.b

    def predict(self, xs: np.ndarray) -> np.ndarray:
        return self.decision(xs).argmax(axis=1)

    def score(self, xs: np.ndarray) -> np.ndarray:
        """[n, K] softmax probabilities (logreg) or decision values (SVM)."""
        d = self.decision(xs)
        if self.scores == "decision":
            return d
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _classifier(cp: ClassicalParams, C: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    weight = None if cp.class_weight == "none" else "balanced"
    if cp.classifier == "svm":
        return LinearSVC(C=C, class_weight=weight, max_iter=cp.max_iter, random_state=seed, dual="auto")
    return LogisticRegression(C=C, class_weight=weight, max_iter=cp.max_iter, random_state=seed)


def _weights(clf: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) over all n_classes from a fitted sklearn linear classifier.

    A two-class fit has one decision row (positive: classes_[1]); it becomes
    rows (0, w) and biases (0, c), whose argmax is sklearn's `decision > 0`
    and whose softmax is its sigmoid.
    """
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(clf.intercept_, dtype=np.float64))
    classes = np.asarray(clf.classes_, dtype=np.int64)
    W = np.zeros((n_classes, coef.shape[1]))
    b = np.full(n_classes, ABSENT_BIAS)
    if coef.shape[0] == 1 and len(classes) == 2:
        W[classes[1]], b[classes[1]], b[classes[0]] = coef[0], intercept[0], 0.0
    else:
        W[classes], b[classes] = coef, intercept
    return W, b


# --------------------------------------------------------------------------- data
def _split(store_root: Path, split: str, labels: Sequence[str], kind: str,
           corpus: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Any]]:
    """(features [n, F] float32, labels, speaker keys, store meta) of one split, in index order."""
    store = FeatureStore(store_root, split, corpus=corpus)
    if store.meta.get("kind") != kind:
        raise ValueError(f"{store_root}/meta.json: kind {store.meta.get('kind')!r}, the model needs {kind!r}")
    if "labels" in store.meta and list(store.meta["labels"]) != list(labels):
        raise ValueError(f"{store_root}/meta.json: labels {store.meta['labels']} differ from {list(labels)}; "
                         "re-run the precompute stage (`dvc repro`)")
    if len(store) == 0:
        raise ValueError(f"{store_root}/{split}.csv has no rows" + (f" for corpus {corpus!r}" if corpus else ""))
    x = store.stack()
    # corpus/speaker: speaker ids are only unique within a corpus
    return x, store.labels(labels), [f"{r.corpus}/{r.speaker}" for r in store.index], store.meta


# --------------------------------------------------------------------------- checkpoint
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_linear(model: LinearModel, out_dir: Path, meta: dict[str, Any]) -> None:
    """model.safetensors (W, b, mean, std) + meta.json; a new out_dir appears by one rename."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tensors = {"W": model.W, "b": model.b, "mean": model.mean, "std": model.std}
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()},
                  str(tmp / WEIGHTS), metadata={"format": FORMAT})
        doc = {**meta, "format": FORMAT, "standardise": model.standardisation, "scores": model.scores,
               "weights_sha256": _sha256(tmp / WEIGHTS)}
        write_json_atomic(tmp / META, doc)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved linear model (%d classes x %d features) to %s", *model.W.shape, out_dir)


def load_linear(model_dir: Path) -> tuple[LinearModel, dict[str, Any]]:
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / META, model_dir / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{model_dir}: not a checkpoint (expected {META} and {WEIGHTS}); "
                              "run the model's train stage (`dvc repro`)")
    meta = read_meta(model_dir)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if _sha256(weights_path) != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} does not match {meta_path} (sha256): re-run training")
    t = load_file(str(weights_path))
    n_features = len(meta["features"]["feature_names"])
    if t["W"].shape != (len(meta["labels"]), n_features) or t["mean"].shape != (n_features,):
        raise CheckpointError(f"{weights_path}: W {t['W'].shape} does not fit {len(meta['labels'])} labels x "
                              f"{n_features} features of {meta_path}")
    return LinearModel(t["W"], t["b"], t["mean"], t["std"], meta["standardise"], meta["scores"]), meta


# --------------------------------------------------------------------------- training
def _choose(grid: Sequence[tuple[float, float]]) -> int:
    """Index of the best (C, val UAR) pair: the highest UAR, ties to the smallest C
    (the most regularised model that does as well)."""
    return min(range(len(grid)), key=lambda i: (-grid[i][1], grid[i][0]))


def _write_timing(path: Path, name: str, seconds: float, fits: int) -> None:
    """Wall-clock time, outside the model directory (whose bytes it would change)."""
    write_json_atomic(path, {"model": name, "train_seconds": seconds, "fits": fits})
    log.info("wrote %s", path)


def train_classical(params: Params, name: str, features_root: Path, out_dir: Path, live_dir: Path, *,
                    timing_path: Optional[Path] = None) -> dict[str, Any]:
    """Fit model `name` (arch linear) per C of its grid, keep the best on val UAR, save it to out_dir.

    Returns the same shape of result as ser.train.loop.train_model (best_epoch 1:
    one fit) plus `C` and `val_uar_by_C`. DVCLive gets one step per C (in
    ascending order) and a summary whose `val` block is the chosen C's.
    """
    from dvclive import Live
    from sklearn.exceptions import ConvergenceWarning

    started = time.perf_counter()
    features_root, out_dir, live_dir = map(Path, (features_root, out_dir, live_dir))
    mp = params.models[name]
    cp = mp.classical
    if mp.arch != "linear" or cp is None:
        raise ValueError(f"models.{name}: train_classical needs arch 'linear' with a 'classical:' section")
    labels = list(params.study(mp.study).labels)
    store_root = fold_root(features_root, mp.input, mp.study, params.fold)
    x_tr, y_tr, spk_tr, store_meta = _split(store_root, "train", labels, mp.input)
    x_va, y_va, spk_va, _ = _split(store_root, "val", labels, mp.input)
    log.info("read %s: train %d, val %d clips x %d features; %s, standardise %s, C grid %s", store_root,
             len(y_tr), len(y_va), x_tr.shape[1], cp.classifier, cp.standardise, sorted(set(cp.C)))
    mean, std = fit_stats(x_tr)
    proto = LinearModel(np.zeros((0,)), np.zeros((0,)), mean, std, cp.standardise,
                        "softmax" if cp.classifier == "logreg" else "decision")
    xs_tr, xs_va = proto.prepare(x_tr, spk_tr), proto.prepare(x_va, spk_va)

    history: list[dict[str, float]] = []
    models: list[LinearModel] = []
    for C in sorted(set(cp.C)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = _classifier(cp, C, params.seed).fit(xs_tr, y_tr)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("%s C=%g: %s did not converge in max_iter=%d iterations", name, C, cp.classifier,
                        cp.max_iter)
        model = dataclasses.replace(proto, **dict(zip(("W", "b"), _weights(clf, len(labels)))))
        val = compute_metrics(y_va, model.predict(xs_va), labels)
        train_uar = compute_metrics(y_tr, model.predict(xs_tr), labels)["uar"]
        logs = {"C": float(C), "train/uar": train_uar, "val/uar": val["uar"], "val/accuracy": val["accuracy"],
                "val/macro_f1": val["macro_f1"]}
        history.append(logs)
        models.append(model)
        log.info("%s C=%g: train UAR %.4f, val UAR %.4f", name, C, train_uar, val["uar"])
    chosen = _choose([(h["C"], h["val/uar"]) for h in history])
    model, best_logs = models[chosen], history[chosen]
    best_uar, best_C = best_logs["val/uar"], best_logs["C"]
    by_C = {f"{h['C']:g}": h["val/uar"] for h in history}
    val_block = {k.split("/", 1)[1]: v for k, v in best_logs.items() if k.startswith("val/")}
    n_params = int(model.W.size + model.b.size)

    meta = {"model": name, "study": mp.study, "labels": labels, "input": mp.input, "features": store_meta,
            "fold": params.fold, "seed": params.seed, "model_params": dataclasses.asdict(mp), "classifier": cp.classifier,
            "C": best_C, "val_uar_by_C": by_C, "val": val_block, "best_epoch": 1,
            "parameters": {"total": n_params, "trainable": n_params},
            "refit": "train only (no train+val refit: validation selects C)"}
    save_linear(model, out_dir, meta)

    # dvcyaml=False: dvc.yaml declares <live_dir>/metrics.json itself.
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
    for logs in history:
        for key, value in logs.items():
            live.log_metric(key, value)
        live.next_step()
    # The summary (metrics.json) describes the chosen C, not the last step of the grid.
    live.summary.update({"C": best_C, "train": {"uar": best_logs["train/uar"]}, "val": val_block,
                         "val_uar_by_C": by_C})
    live.end()

    seconds = time.perf_counter() - started
    if timing_path is not None:
        _write_timing(Path(timing_path), name, seconds, len(history))
    log.info("finished %s: C=%g, val UAR %.4f; wrote %s and %s", name, best_C, best_uar, out_dir, live_dir)
    return {"model": name, "best_epoch": 1, "val": val_block, "epochs": 1, "epochs_run": 1,
            "resumed_from_epoch": 0, "train_seconds": seconds,
            "parameters": {"total": n_params, "trainable": n_params}, "history": history,
            "C": best_C, "val_uar_by_C": by_C}


# --------------------------------------------------------------------------- the learner
class LinearFitted(Fitted):
    """A saved linear model: whole-recording functionals in, scores out (ser.models.base.Fitted)."""

    FORMAT = FORMAT
    windowed = False  # functionals summarise a whole clip: `ser predict` scores whole files

    def __init__(self, model_dir: Path, meta: dict[str, Any], model: LinearModel) -> None:
        super().__init__(model_dir, meta)
        self.model = model

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> "LinearFitted":
        model, meta = load_linear(model_dir)
        return cls(model_dir, meta, model)

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        save_linear(self.model, out_dir, meta)

    def scores(self, x: np.ndarray, lengths: Optional[np.ndarray] = None,
               speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        return self.model.score(self.model.prepare(np.asarray(x), speakers))

    def predict_split(self, features_root: Path, split: str = "test", corpus: Optional[str] = None, *,
                      batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        store = self.open_store(features_root, split, corpus)
        speakers = [f"{r.corpus}/{r.speaker}" for r in store.index]  # speaker ids are unique per corpus
        log.info("evaluating %s on %s/%s%s (%d clips)", self.model_dir, store.root, split,
                 f" [{corpus}]" if corpus else "", len(store))
        return store.labels(self.labels), self.model.predict(self.model.prepare(store.stack(), speakers))

    def file_caveat(self) -> Optional[str]:
        if self.model.standardisation != "speaker":
            return None
        return (f"{self.model_dir} was trained with per-speaker standardisation; a single file has no speaker "
                "statistics, so its features are standardised with the global train statistics instead "
                "(expect lower accuracy than the model's evaluation)")

    def describe(self) -> str:
        return f"linear {self.meta['classifier']} ({self.model.scores} scores)"


class LinearLearner(Learner):
    """The classical baseline: sklearn fits per C, no epochs (resume_dir and on_epoch_end are unused)."""

    fitted = LinearFitted

    def fit(self, params: Params, name: str, features_root: Path, out_dir: Path, resume_dir: Path,
            live_dir: Path, *, on_epoch_end: Optional[EpochCallback] = None,
            timing_path: Optional[Path] = None) -> dict[str, Any]:
        return train_classical(params, name, features_root, out_dir, live_dir, timing_path=timing_path)
