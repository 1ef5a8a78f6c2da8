"""The classical SER heads on openSMILE functionals: logistic regression, linear SVM, RBF-kernel SVM.

Arch `classical` in params.yaml (section `classical:`, see ser.config.ClassicalParams),
input `egemaps` (88 eGeMAPSv02 functionals) or `compare` (6373 ComParE_2016
functionals), read from the stores of `stages/precompute.py --kind egemaps|compare`.

Protocol:
  * Standardisation (ser.features.scaling). "global": z-score with the train
    split's per-feature mean/std. "speaker": z-score every speaker's clips with
    that speaker's own mean/std (the per-speaker normalisation common in the SER
    literature; features only, never labels, so test speakers too).
  * Model selection. One fit on the train split per C (and, for rbf_svm, per
    gamma) of the grid; the fit with the best validation UAR is kept (ties: the
    smaller C, then the smaller gamma). The kept model is the train-only fit:
    there is no refit on train + val, so validation stays an honest selector and
    the test split is never touched. Deterministic: random_state is params `seed`.
  * Checkpoint, never pickled: models/<name>/model.safetensors (float64) + meta.json.
    logreg and svm are linear: W [n_classes, n_features] and b [n_classes] plus
    the train-split mean/std (format "ser-linear/1"); prediction is
    argmax((x - mean) / std @ W.T + b), exactly sklearn's. rbf_svm stores what
    libsvm does (support vectors, one-vs-one dual coefficients and intercepts,
    gamma; format "ser-rbf/1"); its decision values are sklearn's
    SVC.decision_function, recomputed in numpy. Scores: softmax for logistic
    regression (its predict_proba); the decision values for the SVMs, which have
    no probabilities (`scores` in meta.json says which). A class with no train
    rows is never predicted (decision -1e30).
  * Calibration (`calibrate: temperature`): after selection, one temperature T
    is fitted on the validation split, minimising the log-loss of
    softmax(decision / T) (temperature scaling, Guo et al. 2017); the scores are
    then those probabilities (`temperature` in meta.json). The argmax is the
    same, so labels and metrics are too; an SVM so calibrated is a fusion member.
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
from ser.features.scaling import Standardiser, fit_stats, speaker_keys
from ser.features.stores import FeatureStore, fold_root
from ser.fsutil import apply_umask, write_json_atomic
from ser.logutil import open_live
from ser.models.base import META, WEIGHTS, EpochCallback, Fitted, Learner, read_meta
from ser.stats import compute_metrics

__all__ = ["FORMAT", "RBF_FORMAT", "LinearModel", "KernelModel", "ClassicalFitted", "ClassicalLearner",
           "fit_temperature", "train_classical", "load_linear", "save_linear"]

log = logging.getLogger(__name__)

FORMAT = "ser-linear/1"  # logreg, svm: W and b
RBF_FORMAT = "ser-rbf/1"  # rbf_svm: support vectors and dual coefficients
ABSENT_BIAS = -1e30  # bias of a class the train split lacks: never the argmax


# --------------------------------------------------------------------------- the models
class _Scored:
    """What the classical models share: standardisation in, argmax of `decision` out."""
    mean: np.ndarray
    std: np.ndarray
    standardisation: str  # "global" | "speaker" | "speaker_rank"
    scores: str  # "softmax" (logistic regression, calibrated models) | "decision" (SVMs)
    temperature: float  # divides the decision values before the softmax (1: none fitted)

    def prepare(self, x: np.ndarray, speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        """Standardised rows: per speaker for a "speaker" model given speakers, else global."""
        return Standardiser(self.standardisation, self.mean, self.std).apply(x, speakers)

    def decision(self, xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, xs: np.ndarray) -> np.ndarray:
        return self.decision(xs).argmax(axis=1)

    def score(self, xs: np.ndarray) -> np.ndarray:
        """[n, K] softmax probabilities of decision / temperature, or decision values (uncalibrated SVMs)."""
        d = self.decision(xs)
        if self.scores == "decision":
            return d
        z = d / self.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class LinearModel(_Scored):
    """W [K, F], b [K] on standardised features; mean/std: the train split's statistics."""
    W: np.ndarray
    b: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    standardisation: str
    scores: str
    temperature: float = 1.0
    FORMAT = FORMAT

    def decision(self, xs: np.ndarray) -> np.ndarray:
        return xs @ self.W.T + self.b

    def tensors(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "b": self.b, "mean": self.mean, "std": self.std}

    @property
    def size(self) -> int:
        return int(self.W.size + self.b.size)


@dataclass(frozen=True)
class KernelModel(_Scored):
    """An RBF-kernel SVM as libsvm stores it: support vectors `sv` [n_sv, F] grouped by class
    (`n_support` per class of `classes`, the label indices the train split has), one-vs-one
    dual coefficients `dual` [k-1, n_sv] and intercepts [k(k-1)/2], kernel width `gamma`.

    `decision` is sklearn's SVC.decision_function (one-vs-rest shape: one-vs-one votes plus
    their confidences scaled into (-1/3, 1/3)) over all `n_classes` labels; a label without
    train rows gets ABSENT_BIAS. Its argmax is SVC(break_ties=True).predict.
    """
    sv: np.ndarray
    dual: np.ndarray
    intercept: np.ndarray
    n_support: np.ndarray
    classes: np.ndarray
    gamma: float
    n_classes: int
    mean: np.ndarray
    std: np.ndarray
    standardisation: str
    scores: str = "decision"
    temperature: float = 1.0
    FORMAT = RBF_FORMAT

    def decision(self, xs: np.ndarray) -> np.ndarray:
        xs = np.asarray(xs, dtype=np.float64)
        d2 = (xs ** 2).sum(1)[:, None] + (self.sv ** 2).sum(1)[None, :] - 2.0 * xs @ self.sv.T
        kmat = np.exp(-self.gamma * np.maximum(d2, 0.0))
        starts = np.concatenate([[0], np.cumsum(self.n_support)])
        k = len(self.classes)
        pairs = []
        for i in range(k):
            for j in range(i + 1, k):
                si, sj = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                pairs.append(kmat[:, si] @ self.dual[j - 1, si] + kmat[:, sj] @ self.dual[i, sj])
        ovo = np.stack(pairs, axis=1) + self.intercept
        out = np.full((len(xs), self.n_classes), ABSENT_BIAS)
        out[:, self.classes] = _ovr_decision(ovo, k)
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        return {"sv": self.sv, "dual": self.dual, "intercept": self.intercept, "mean": self.mean, "std": self.std,
                "n_support": self.n_support, "classes": self.classes, "gamma": np.array([self.gamma])}

    @property
    def size(self) -> int:
        return int(self.sv.size + self.dual.size + self.intercept.size)


def _ovr_decision(ovo: np.ndarray, k: int) -> np.ndarray:
    """One-vs-one decision values [n, k(k-1)/2] (positive: the pair's first class) -> sklearn's
    one-vs-rest shape [n, k]: votes plus the summed confidences scaled into (-1/3, 1/3)."""
    votes = np.zeros((len(ovo), k))
    confidence = np.zeros((len(ovo), k))
    p = 0
    for i in range(k):
        for j in range(i + 1, k):
            confidence[:, i] += ovo[:, p]
            confidence[:, j] -= ovo[:, p]
            votes[ovo[:, p] >= 0, i] += 1
            votes[ovo[:, p] < 0, j] += 1
            p += 1
    return votes + confidence / (3 * (np.abs(confidence) + 1))


def _classifier(cp: ClassicalParams, C: float, seed: int, gamma: Optional[float] = None) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC, LinearSVC

    weight = None if cp.class_weight == "none" else "balanced"
    if cp.classifier == "svm":
        return LinearSVC(C=C, class_weight=weight, max_iter=cp.max_iter, random_state=seed, dual="auto")
    if cp.classifier == "rbf_svm":
        return SVC(C=C, kernel="rbf", gamma=gamma, class_weight=weight, max_iter=cp.max_iter, random_state=seed,
                   decision_function_shape="ovr", break_ties=True)
    return LogisticRegression(C=C, class_weight=weight, max_iter=cp.max_iter, random_state=seed)


def _model_of(clf: Any, proto: LinearModel, cp: ClassicalParams, n_classes: int,
              gamma: Optional[float]) -> "LinearModel | KernelModel":
    """Our numpy model of a fitted sklearn classifier (the same decisions)."""
    if cp.classifier != "rbf_svm":
        return dataclasses.replace(proto, **dict(zip(("W", "b"), _weights(clf, n_classes))))
    # sklearn flips libsvm's signs for two classes (its decision is then positive for classes_[1]);
    # the model keeps libsvm's one-vs-one convention (positive: the pair's first class).
    sign = -1.0 if len(clf.classes_) == 2 else 1.0
    return KernelModel(sv=np.asarray(clf.support_vectors_, dtype=np.float64),
                       dual=sign * np.asarray(clf.dual_coef_, dtype=np.float64),
                       intercept=sign * np.asarray(clf.intercept_, dtype=np.float64),
                       n_support=np.asarray(clf.n_support_, dtype=np.int64),
                       classes=np.asarray(clf.classes_, dtype=np.int64), gamma=float(gamma), n_classes=n_classes,
                       mean=proto.mean, std=proto.std, standardisation=proto.standardisation)


def fit_temperature(decision: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises the mean log-loss of softmax(decision / T) on labels `y` (temperature
    scaling): a bounded search over log T in [-7, 7]. Classes absent from training (decision -1e30)
    keep probability 0; a row whose label is such a class adds the log-loss of probability 1e-12."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    decision, rows = np.asarray(decision, dtype=np.float64), np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-np.maximum(log_softmax(decision / np.exp(log_t), axis=1)[rows, y], np.log(1e-12)).mean())

    return float(np.exp(minimize_scalar(loss, bounds=(-7.0, 7.0), method="bounded").x))


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
    return x, store.labels(labels), speaker_keys(store), store.meta


# --------------------------------------------------------------------------- checkpoint
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_linear(model: "LinearModel | KernelModel", out_dir: Path, meta: dict[str, Any]) -> None:
    """model.safetensors (W, b or the support vectors; mean, std) + meta.json; a new out_dir appears by one
    rename."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file({k: np.ascontiguousarray(v, dtype=np.int64 if v.dtype.kind == "i" else np.float64)
                   for k, v in model.tensors().items()}, str(tmp / WEIGHTS), metadata={"format": model.FORMAT})
        doc = {**meta, "format": model.FORMAT, "standardise": model.standardisation, "scores": model.scores,
               **({"temperature": model.temperature} if model.temperature != 1.0 else {}),
               "weights_sha256": _sha256(tmp / WEIGHTS)}
        write_json_atomic(tmp / META, doc)
        apply_umask(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %s model (%d labels x %d features) to %s", meta.get("classifier"), len(meta["labels"]),
             len(model.mean), out_dir)


def load_linear(model_dir: Path) -> tuple["LinearModel | KernelModel", dict[str, Any]]:
    """The classical model saved in `model_dir` and its meta (CheckpointError when damaged)."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    meta_path, weights_path = model_dir / META, model_dir / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{model_dir}: not a checkpoint (expected {META} and {WEIGHTS}); "
                              "run the model's train stage (`dvc repro`)")
    meta = read_meta(model_dir)
    if meta.get("format") not in (FORMAT, RBF_FORMAT):
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r} or {RBF_FORMAT!r}")
    if _sha256(weights_path) != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} does not match {meta_path} (sha256): re-run training")
    t = load_file(str(weights_path))
    temperature = meta.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise CheckpointError(f"{meta_path}: temperature must be a number > 0, got {temperature!r}")
    n_features, n_labels = len(meta["features"]["feature_names"]), len(meta["labels"])
    if meta["format"] == RBF_FORMAT:
        model: "LinearModel | KernelModel" = KernelModel(
            sv=t["sv"], dual=t["dual"], intercept=t["intercept"], n_support=t["n_support"], classes=t["classes"],
            gamma=float(t["gamma"][0]), n_classes=n_labels, mean=t["mean"], std=t["std"],
            standardisation=meta["standardise"], scores=meta["scores"], temperature=temperature)
        shape_ok = t["sv"].shape[1:] == (n_features,) and int(t["n_support"].sum()) == len(t["sv"])
    else:
        model = LinearModel(t["W"], t["b"], t["mean"], t["std"], meta["standardise"], meta["scores"], temperature)
        shape_ok = t["W"].shape == (n_labels, n_features)
    if not shape_ok or t["mean"].shape != (n_features,):
        raise CheckpointError(f"{weights_path}: its tensors do not fit {n_labels} labels x {n_features} features "
                              f"of {meta_path}")
    return model, meta


# --------------------------------------------------------------------------- training
def _choose(grid: Sequence[tuple[float, ...]]) -> int:
    """Index of the best (C, val UAR[, gamma]) entry: the highest UAR, ties to the smallest C
    (the most regularised model that does as well), then to the smallest gamma (the smoothest)."""
    return min(range(len(grid)), key=lambda i: (-grid[i][1], grid[i][0], *grid[i][2:]))


def _write_timing(path: Path, name: str, seconds: float, fits: int) -> None:
    """Wall-clock time, outside the model directory (whose bytes it would change)."""
    write_json_atomic(path, {"model": name, "train_seconds": seconds, "fits": fits})
    log.info("wrote %s", path)


def _grid(cp: ClassicalParams, n_features: int) -> list[tuple[float, Optional[float]]]:
    """(C, gamma) pairs to fit: C ascending; gamma (rbf_svm) ascending, null: [1 / n_features]."""
    if cp.classifier != "rbf_svm":
        return [(C, None) for C in sorted(set(cp.C))]
    gammas = sorted(set(cp.gamma)) if cp.gamma is not None else [1.0 / n_features]
    return [(C, g) for C in sorted(set(cp.C)) for g in gammas]


def _fit_grid(params: Params, name: str, proto: LinearModel, data: tuple[np.ndarray, ...],
              labels: list[str]) -> tuple[list[dict[str, float]], list["LinearModel | KernelModel"]]:
    """One fit on train per (C, gamma); the history (train/val UAR per fit) and the fitted models."""
    from sklearn.exceptions import ConvergenceWarning

    cp = params.models[name].classical
    xs_tr, y_tr, xs_va, y_va = data
    history, models = [], []
    for C, gamma in _grid(cp, xs_tr.shape[1]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf = _classifier(cp, C, params.seed, gamma).fit(xs_tr, y_tr)
        what = f"C={C:g}" + (f", gamma={gamma:g}" if gamma is not None else "")
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("%s %s: %s did not converge in max_iter=%d iterations", name, what, cp.classifier,
                        cp.max_iter)
        model = _model_of(clf, proto, cp, len(labels), gamma)
        val = compute_metrics(y_va, model.predict(xs_va), labels)
        train_uar = compute_metrics(y_tr, model.predict(xs_tr), labels)["uar"]
        logs = {"C": float(C), **({"gamma": float(gamma)} if gamma is not None else {}), "train/uar": train_uar,
                "val/uar": val["uar"], "val/accuracy": val["accuracy"], "val/macro_f1": val["macro_f1"]}
        history.append(logs)
        models.append(model)
        log.info("%s %s: train UAR %.4f, val UAR %.4f", name, what, train_uar, val["uar"])
    return history, models


def _best(history: list[dict[str, float]]) -> int:
    return _choose([(h["C"], h["val/uar"], *([h["gamma"]] if "gamma" in h else [])) for h in history])


def _pseudo_rows(decision: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of the adapt clips to pseudo-label: per class, up to fraction * n / n_classes
    of the clips predicted as that class, highest decision value first (ties: the earlier row)."""
    n, k = decision.shape
    quota = int(fraction * n / k)
    pred = decision.argmax(axis=1)
    rows = [r[np.argsort(-decision[r, c], kind="stable")[:quota]] for c in range(k)
            for r in [np.flatnonzero(pred == c)]]
    picked = np.concatenate(rows).astype(np.int64)
    return picked, pred[picked]


def _self_train(params: Params, name: str, proto: LinearModel, data: tuple[np.ndarray, ...], xs_adapt: np.ndarray,
                labels: list[str], model: "LinearModel | KernelModel",
                history: list[dict[str, float]]) -> tuple["LinearModel | KernelModel", list[dict[str, Any]]]:
    """Rounds of pseudo-labeling the adapt clips and refitting the grid (ClassicalParams.self_train).
    Appends every round's fits to `history` (with their `round`); returns the last round's chosen
    model and a record per round (pseudo-labels per class, the chosen fit's validation UAR)."""
    st = params.models[name].classical.self_train
    xs_tr, y_tr, xs_va, y_va = data
    rounds = []
    for r in range(1, st.rounds + 1):
        rows, pseudo = _pseudo_rows(model.decision(xs_adapt), st.fraction)
        grown = (np.concatenate([xs_tr, xs_adapt[rows]]), np.concatenate([y_tr, pseudo]), xs_va, y_va)
        fits, models = _fit_grid(params, name, proto, grown, labels)
        chosen = _best(fits)
        model = models[chosen]
        history += [{**h, "round": float(r)} for h in fits]
        counts = {lab: int((pseudo == i).sum()) for i, lab in enumerate(labels)}
        rounds.append({"round": r, "pseudo_labels": counts, "val_uar": fits[chosen]["val/uar"]})
        log.info("%s self-training round %d: %d pseudo-labeled adapt clips %s, val UAR %.4f", name, r, len(rows),
                 counts, fits[chosen]["val/uar"])
    return model, rounds


def _grid_key(h: dict[str, float]) -> str:
    return f"{h['C']:g}" + (f"/{h['gamma']:g}" if "gamma" in h else "")


def train_classical(params: Params, name: str, features_root: Path, out_dir: Path, live_dir: Path, *,
                    timing_path: Optional[Path] = None) -> dict[str, Any]:
    """Fit model `name` (arch classical) per (C, gamma) of its grid, keep the best on val UAR, save it.

    Returns the same shape of result as the torch learner's (best_epoch 1: one fit) plus `C`,
    `gamma` (rbf_svm) and `val_uar_by_C` (keys "C" or "C/gamma"). DVCLive gets one step per
    fit (C ascending, then gamma) and a summary whose `val` block is the chosen fit's.
    """
    started = time.perf_counter()
    features_root, out_dir, live_dir = map(Path, (features_root, out_dir, live_dir))
    mp = params.models[name]
    cp = mp.classical
    if mp.arch != "classical" or cp is None:
        raise ValueError(f"models.{name}: train_classical needs arch 'classical' with a 'classical:' section")
    labels = list(params.study(mp.study).labels)
    store_root = fold_root(features_root, mp.input, mp.study, params.fold)
    x_tr, y_tr, spk_tr, store_meta = _split(store_root, "train", labels, mp.input)
    x_va, y_va, spk_va, _ = _split(store_root, "val", labels, mp.input)
    log.info("read %s: train %d, val %d clips x %d features; %s, standardise %s, C grid %s%s", store_root,
             len(y_tr), len(y_va), x_tr.shape[1], cp.classifier, cp.standardise, sorted(set(cp.C)),
             f", gamma grid {sorted(set(cp.gamma))}" if cp.gamma else "")
    mean, std = fit_stats(x_tr)
    proto = LinearModel(np.zeros((0,)), np.zeros((0,)), mean, std, cp.standardise,
                        "softmax" if cp.classifier == "logreg" else "decision")
    data = (proto.prepare(x_tr, spk_tr), y_tr, proto.prepare(x_va, spk_va), y_va)
    history, models = _fit_grid(params, name, proto, data, labels)
    chosen = _best(history)
    model, best, rounds = models[chosen], history[chosen], []
    if cp.self_train is not None:
        store = FeatureStore(store_root, "adapt")  # unlabeled target clips: their emotions are never read
        if len(store) == 0:
            raise ValueError(f"{store_root}/adapt.csv has no rows: models.{name}.classical.self_train needs "
                             "unlabeled target clips (list adaptation speakers under `adapt`)")
        model, rounds = _self_train(params, name, proto, data, proto.prepare(store.stack(), speaker_keys(store)),
                                    labels, model, history)
        last = [h for h in history if h.get("round") == len(rounds)]
        best = last[_best(last)]
    if cp.calibrate == "temperature":
        model = dataclasses.replace(model, scores="softmax", temperature=fit_temperature(model.decision(data[2]),
                                                                                         y_va))
        log.info("%s: temperature %.4g fitted on the validation split", name, model.temperature)
    by_C = {_grid_key(h): h["val/uar"] for h in history if h.get("round", 0) == len(rounds)}
    val_block = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("val/")}
    chosen_params = {k: best[k] for k in ("C", "gamma") if k in best}
    meta = {"model": name, "study": mp.study, "labels": labels, "input": mp.input, "features": store_meta,
            "fold": params.fold, "seed": params.seed, "model_params": dataclasses.asdict(mp), "classifier": cp.classifier,
            **chosen_params, "val_uar_by_C": by_C, "val": val_block, "best_epoch": 1,
            "parameters": {"total": model.size, "trainable": model.size},
            "refit": "train only (no train+val refit: validation selects C)" if not rounds else
                     "train + pseudo-labeled adapt clips (self_train; validation selects C)",
            **({"self_train": rounds} if rounds else {})}
    save_linear(model, out_dir, meta)

    live = open_live(live_dir)
    for logs in history:
        for key, value in logs.items():
            live.log_metric(key, value)
        live.next_step()
    # The summary (metrics.json) describes the chosen fit, not the last step of the grid.
    live.summary.update({**chosen_params, "train": {"uar": best["train/uar"]}, "val": val_block,
                         "val_uar_by_C": by_C})
    live.end()

    seconds = time.perf_counter() - started
    if timing_path is not None:
        _write_timing(Path(timing_path), name, seconds, len(history))
    log.info("finished %s: %s, val UAR %.4f; wrote %s and %s", name, _grid_key(best), best["val/uar"], out_dir,
             live_dir)
    return {"model": name, "best_epoch": 1, "val": val_block, "epochs": 1, "epochs_run": 1,
            "resumed_from_epoch": 0, "train_seconds": seconds,
            "parameters": {"total": model.size, "trainable": model.size}, "history": history,
            **chosen_params, "val_uar_by_C": by_C}


# --------------------------------------------------------------------------- the learner
class ClassicalFitted(Fitted):
    """A saved classical model: whole-recording functionals in, scores out (ser.models.base.Fitted)."""

    FORMATS = (FORMAT, RBF_FORMAT)
    windowed = False  # functionals summarise a whole clip: `ser predict` scores whole files

    def __init__(self, model_dir: Path, meta: dict[str, Any], model: "LinearModel | KernelModel") -> None:
        super().__init__(model_dir, meta)
        self.model = model

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> "ClassicalFitted":
        model, meta = load_linear(model_dir)
        return cls(model_dir, meta, model)

    def save(self, out_dir: Path, meta: dict[str, Any]) -> None:
        save_linear(self.model, out_dir, meta)

    def scores(self, x: np.ndarray, lengths: Optional[np.ndarray] = None,
               speakers: Optional[Sequence[str]] = None) -> np.ndarray:
        return self.model.score(self.model.prepare(np.asarray(x), speakers))

    def predict_split(self, features_root: Path, split: str = "test", corpus: Optional[str] = None, *,
                      batch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        store = self.open_store(features_root, split, corpus)
        speakers = speaker_keys(store)
        log.info("evaluating %s on %s/%s%s (%d clips)", self.model_dir, store.root, split,
                 f" [{corpus}]" if corpus else "", len(store))
        xs = self.model.prepare(store.stack(), speakers)
        return store.labels(self.labels), self.model.predict(xs), self.model.score(xs)

    def file_caveat(self) -> Optional[str]:
        m = self.model
        return Standardiser(m.standardisation, m.mean, m.std).file_caveat(self.model_dir)

    def describe(self) -> str:
        return f"classical {self.meta['classifier']} ({self.model.scores} scores)"


class ClassicalLearner(Learner):
    """The classical baseline: sklearn fits per C, no epochs (resume_dir and on_epoch_end are unused)."""

    fitted = ClassicalFitted

    def fit(self, params: Params, name: str, features_root: Path, out_dir: Path, resume_dir: Path,
            live_dir: Path, *, on_epoch_end: Optional[EpochCallback] = None,
            timing_path: Optional[Path] = None) -> dict[str, Any]:
        return train_classical(params, name, features_root, out_dir, live_dir, timing_path=timing_path)
