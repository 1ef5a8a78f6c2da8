"""Aggregation over folds and seeds, and paired significance tests between models.

Pure numpy/scipy (no torch), so the summary and `ser report` can import it cheaply.

Two ways to summarise a cross-validated model are both reported, because they
answer different questions (s3prl issue 528):

- `aggregate`: the mean and sample standard deviation (ddof=1) of the per-run
  metrics over folds and seeds (`mean_over_runs`, `std_over_runs`). The std
  mixes fold difficulty and training noise; it is not a confidence interval.
- `pooled`: the metrics of the concatenated predictions of all folds of one
  seed, each clip counted once (`pooled`), with a bootstrap CI over test clips.
  With several seeds, the folds of each seed are pooled, the pooled metrics are
  computed per seed (`pooled_per_seed`) and the headline is their mean; the CI
  resamples the same clips (or speakers) for every seed in each replicate and
  averages over seeds, so it is the CI of that seed-averaged pooled metric.
  It covers test-set sampling only, not training variance (see `aggregate`).

Paired tests compare two models on the same test clips (aligned by utt_id):

- `paired_bootstrap` of the UAR or accuracy difference A - B. Each replicate
  resamples with replacement either clips (`cluster=None`: assumes clips are
  independent draws) or speakers, taking all clips of a drawn speaker
  (`cluster="speaker"`, the default: assumes speakers are independent draws
  from a population of speakers, clips of one speaker may be correlated). Both
  assume the two trained models are fixed: they test the test-set sampling,
  not the training seed. With few speakers the cluster bootstrap is coarse
  (a test set of 2 speakers has only 3 distinct resamples), and it refuses one.
  The p-value is two-sided and inverts the percentile interval:
  p = min(1, 2 * (min(#{d* <= 0}, #{d* >= 0}) + 1) / (n_boot + 1)), where d*
  are the bootstrap differences. Ties at 0 count on both sides (conservative),
  so identical models give exactly p = 1, and the +1 (Davison & Hinkley 1997,
  eq. 4.11) keeps p >= 2 / (n_boot + 1): a bootstrap never proves p = 0.
- `mcnemar_exact`: the exact binomial test on the discordant clips (one model
  right, the other wrong), two-sided, under H0 that each discordant clip is
  equally likely to favour either model. Assumes independent clips (it has no
  speaker clustering), and says nothing about UAR: it tests accuracy.
- `holm`: Holm-Bonferroni step-down adjustment over a family of comparisons;
  `compare_models` applies it per test (one family per bootstrapped metric,
  one for McNemar) across all model pairs.
"""
from __future__ import annotations

import csv
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["compute_metrics", "bootstrap_ci", "Predictions", "align_to", "fuse", "read_predictions_csv", "write_predictions_csv",
           "concat", "point_metrics", "metrics_from_confusion", "aggregate",
           "pooled", "paired_bootstrap", "mcnemar_exact", "holm", "compare_models", "METRIC_NAMES"]

METRIC_NAMES = ("accuracy", "uar", "macro_f1", "cohen_kappa")
CSV_COLUMNS = ("utt_id", "speaker", "actual", "predicted")
SCORE_PREFIX = "score_"  # optional per-class score columns of the predictions CSV
_BOOT_CHUNK = 256  # replicates per matrix product: bounds memory at _BOOT_CHUNK x clusters counts


# --------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class Predictions:
    """Per-utterance predictions of one model on one test set: class indices into `labels`, and
    optionally the model's scores [n, len(labels)] (probabilities, or an SVM's decision values)."""
    utt_id: np.ndarray   # str, unique
    speaker: np.ndarray  # str
    y_true: np.ndarray   # int64
    y_pred: np.ndarray   # int64
    labels: tuple[str, ...]
    scores: Optional[np.ndarray] = None  # float64 [n, K]

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("utt_id", np.asarray(self.utt_id, dtype=str))
        set_("speaker", np.asarray(self.speaker, dtype=str))
        set_("y_true", np.asarray(self.y_true, dtype=np.int64))
        set_("y_pred", np.asarray(self.y_pred, dtype=np.int64))
        set_("labels", tuple(self.labels))
        n = len(self.utt_id)
        if self.scores is not None:
            set_("scores", np.asarray(self.scores, dtype=np.float64))
            if self.scores.shape != (n, len(self.labels)):
                raise ValueError(f"scores have shape {self.scores.shape}, expected ({n}, {len(self.labels)})")
        lengths = {k: len(getattr(self, k)) for k in ("utt_id", "speaker", "y_true", "y_pred")}
        if any(v != n for v in lengths.values()):
            raise ValueError(f"Predictions columns differ in length: {lengths}")
        ids, counts = np.unique(self.utt_id, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"duplicate utt_id in predictions: {ids[counts > 1][:5].tolist()}")
        k = len(self.labels)
        for name in ("y_true", "y_pred"):
            values = getattr(self, name)
            if n and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{name} indices must be in [0, {k}) for labels {list(self.labels)}")

    def __len__(self) -> int:
        return len(self.utt_id)

    def subset(self, keep: np.ndarray) -> "Predictions":
        """The rows where `keep` (a boolean mask or indices) holds, scores included."""
        return Predictions(self.utt_id[keep], self.speaker[keep], self.y_true[keep], self.y_pred[keep], self.labels,
                           None if self.scores is None else self.scores[keep])

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred


def read_predictions_csv(path: Union[str, Path], labels: Optional[Sequence[str]] = None) -> Predictions:
    """Read a per-utterance CSV (utt_id,speaker,actual,predicted; label names).

    `labels` fixes the class order (and rejects unknown names); without it the
    sorted names found in `actual` and `predicted` are used.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected {list(CSV_COLUMNS)}")
        rows = list(reader)
    names = list(labels) if labels is not None else sorted({r["actual"] for r in rows} | {r["predicted"] for r in rows})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(({r["actual"] for r in rows} | {r["predicted"] for r in rows}) - set(index))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not in {names}")
    return Predictions(utt_id=[r["utt_id"] for r in rows], speaker=[r["speaker"] for r in rows],
                       y_true=[index[r["actual"]] for r in rows], y_pred=[index[r["predicted"]] for r in rows],
                       labels=names, scores=_read_scores(path, reader.fieldnames or [], rows, names))


def _read_scores(path: Path, columns: Sequence[str], rows: list[dict[str, str]],
                 names: Sequence[str]) -> Optional[np.ndarray]:
    """The score_<label> columns in `names` order; None when the file has none (written before scores were)."""
    present = [c[len(SCORE_PREFIX):] for c in columns if c.startswith(SCORE_PREFIX)]
    if not present:
        return None
    if sorted(present) != sorted(names):
        raise ValueError(f"{path}: score columns for {present}, but the labels are {list(names)}")
    try:
        return np.array([[float(r[SCORE_PREFIX + name]) for name in names] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: a score is not a number ({exc})") from None


def write_predictions_csv(path: Union[str, Path], preds: Predictions) -> None:
    """One row per utterance with label names; DVC's `confusion` template reads `actual`/`predicted`.
    With scores, one score_<label> column per class follows (repr of the float64: read back exactly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = preds.scores if preds.scores is not None else np.zeros((len(preds), 0))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS + (tuple(SCORE_PREFIX + name for name in preds.labels) if scores.size else ()))
        writer.writerows((u, s, preds.labels[t], preds.labels[p], *map(repr, row.tolist()))
                         for u, s, t, p, row in zip(preds.utt_id, preds.speaker, preds.y_true, preds.y_pred, scores))
    log.info("wrote %s (%d utterances)", path, len(preds))


def concat(folds: Sequence[Predictions]) -> Predictions:
    """The pooled predictions of several folds; each clip must be tested in exactly one fold."""
    if not folds:
        raise ValueError("no predictions to pool")
    labels = folds[0].labels
    for i, f in enumerate(folds[1:], start=1):
        if f.labels != labels:
            raise ValueError(f"fold {i} has labels {list(f.labels)}, fold 0 has {list(labels)}")
    ids = np.concatenate([f.utt_id for f in folds])
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"utterances in the test set of more than one fold: {uniq[counts > 1][:5].tolist()}")
    scored = all(f.scores is not None for f in folds)
    return Predictions(utt_id=ids, speaker=np.concatenate([f.speaker for f in folds]),
                       y_true=np.concatenate([f.y_true for f in folds]),
                       y_pred=np.concatenate([f.y_pred for f in folds]), labels=labels,
                       scores=np.concatenate([f.scores for f in folds]) if scored else None)


def align_to(a: Predictions, b: Predictions) -> Predictions:
    """b reordered to a's utt_id order; ValueError naming what differs when they are not the same clips."""
    if set(a.labels) != set(b.labels):
        raise ValueError(f"models use different labels: {list(a.labels)} vs {list(b.labels)}")
    ids_a, ids_b = set(a.utt_id.tolist()), set(b.utt_id.tolist())
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise ValueError(f"the models were not evaluated on the same clips: {len(only_a)} only in A "
                         f"(e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]})")
    order = np.argsort(b.utt_id)[np.searchsorted(b.utt_id, a.utt_id, sorter=np.argsort(b.utt_id))]
    remap = np.array([a.labels.index(name) for name in b.labels], dtype=np.int64)
    scores = None
    if b.scores is not None:  # b's columns into a's label order
        scores = np.empty_like(b.scores)
        scores[:, remap] = b.scores[order]
    out = Predictions(utt_id=b.utt_id[order], speaker=b.speaker[order], y_true=remap[b.y_true[order]],
                      y_pred=remap[b.y_pred[order]], labels=a.labels, scores=scores)
    for name in ("y_true", "speaker"):
        differs = getattr(a, name) != getattr(out, name)
        if differs.any():
            raise ValueError(f"{name} of the same clip differs between the models' predictions, "
                             f"e.g. {a.utt_id[differs][:3].tolist()}")
    return out


def fuse(members: Mapping[str, Predictions], atol: float = 1e-4) -> Predictions:
    """Late fusion: per clip, the mean of the members' class probabilities (in the first member's clip
    and label order), then the argmax (ties: the first label). ValueError naming the member whose
    scores are missing or are not probabilities (rows summing to 1), or whose clips differ."""
    if len(members) < 2:
        raise ValueError(f"fuse needs two or more models, got {list(members)}")
    names = list(members)
    first = members[names[0]]
    parts = []
    for name in names:
        try:
            part = first if name == names[0] else align_to(first, members[name])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if part.scores is None:
            raise ValueError(f"{name}: its predictions carry no per-class scores (written before scores were; "
                             "re-run its evaluation)")
        if len(part) and not np.allclose(part.scores.sum(axis=1), 1.0, atol=atol):
            raise ValueError(f"{name}: its scores are not class probabilities (rows do not sum to 1: an SVM's "
                             "decision values?); fuse models that score with probabilities")
        parts.append(part.scores)
    scores = np.mean(parts, axis=0)
    return Predictions(first.utt_id, first.speaker, first.y_true, scores.argmax(axis=1), first.labels, scores)


# --------------------------------------------------------------------------- metrics from confusion counts
def metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, UAR, macro-F1 and kappa of a batch of (possibly weighted) confusion matrices (..., k, k).

    The one implementation of these metrics (ser.stats.compute_metrics uses
    it too): UAR averages the classes present in y_true; macro-F1 the classes
    present in y_true or y_pred (F1 0 when never right), as sklearn's
    f1_score(average="macro"); kappa is Cohen's, NaN when one class fills both
    y_true and y_pred; all NaN for an empty matrix.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum(axis=(-2, -1))
    diag = np.diagonal(cm, axis1=-2, axis2=-1)
    rows, cols = cm.sum(axis=-1), cm.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(rows > 0, diag / rows, np.nan)
        f1 = np.where(rows + cols > 0, 2 * diag / (rows + cols), np.nan)
        accuracy = diag.sum(axis=-1) / total
        expected = (rows * cols).sum(axis=-1) / total ** 2
        kappa = np.where(expected < 1, (accuracy - expected) / (1 - expected), np.nan)
    return {"accuracy": accuracy, "uar": _nanmean(recall), "macro_f1": _nanmean(f1), "cohen_kappa": kappa}


def _nanmean(x: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(x)
    n = defined.sum(axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.where(defined, x, 0).sum(axis=-1) / n, np.nan)


def point_metrics(preds: Predictions) -> dict[str, float]:
    """Accuracy, UAR, macro-F1 and Cohen's kappa of one model's predictions."""
    k = len(preds.labels)
    cm = np.bincount(preds.y_true * k + preds.y_pred, minlength=k * k).reshape(k, k)
    return {name: float(v) for name, v in metrics_from_confusion(cm).items()}


def _cluster_tables(preds: Predictions, cluster: Optional[str]) -> tuple[np.ndarray, int]:
    """Per-cluster flattened confusion counts (clusters x k*k) and the number of clusters.

    A clip is its own cluster when `cluster` is None; with "speaker" a bootstrap
    replicate draws speakers, so all clips of a drawn speaker come together.
    """
    k = len(preds.labels)
    if cluster is None:
        ids = np.arange(len(preds))
    elif cluster == "speaker":
        ids = np.unique(preds.speaker, return_inverse=True)[1].reshape(-1)
    else:
        raise ValueError(f"cluster must be 'speaker' or None, got {cluster!r}")
    m = int(ids.max()) + 1 if len(ids) else 0
    table = np.bincount(ids * k * k + preds.y_true * k + preds.y_pred, minlength=m * k * k).reshape(m, k * k)
    return table.astype(np.float64), m


def _boot_confusions(tables: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Bootstrap confusion matrices (n_boot, k, k) of each table, all under the same cluster resamples."""
    m, kk = tables[0].shape
    k = math.isqrt(kk)
    rng = np.random.default_rng(seed)
    out = [np.empty((n_boot, kk)) for _ in tables]
    for start in range(0, n_boot, _BOOT_CHUNK):
        b = min(_BOOT_CHUNK, n_boot - start)
        draws = rng.integers(0, m, size=(b, m))
        counts = np.bincount((np.arange(b)[:, None] * m + draws).ravel(), minlength=b * m).reshape(b, m)
        for table, o in zip(tables, out):
            o[start:start + b] = counts @ table  # how often each cluster was drawn x its confusion counts
    return [o.reshape(n_boot, k, k) for o in out]


def _check_clusters(m: int, cluster: Optional[str]) -> None:
    if m < 2:
        raise ValueError(f"a bootstrap needs at least 2 {'speakers' if cluster else 'clips'}, got {m}")
    if cluster and m < 5:
        log.warning("only %d speakers: the speaker-clustered bootstrap is coarse", m)


def _interval(stats: np.ndarray, ci: float) -> list[Optional[float]]:
    tail = (1.0 - ci) / 2.0
    if np.isnan(stats).all():
        return [None, None]
    lo, hi = np.nanquantile(stats, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def _ci_key(name: str, ci: float) -> str:
    return f"{name}_ci{round(ci * 100)}"  # as in ser.eval.evaluate.metrics_record, so the summary reads both


def _float_or_none(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


# --------------------------------------------------------------------------- aggregation
def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) of per-run metrics over folds and seeds.

    `runs` are metrics records (ser.eval.evaluate.metrics_record) with "fold" and
    "seed" added, all of one model and test set. A metric undefined (null) in
    any run gets a null mean: averaging the others would hide the failed run.
    std is null with a single run.
    """
    if not runs:
        raise ValueError("no runs to aggregate")
    for i, run in enumerate(runs):
        missing = [key for key in ("fold", "seed", *METRIC_NAMES) if key not in run]
        if missing:
            raise KeyError(f"run {i} lacks {missing}; each run needs fold, seed and {list(METRIC_NAMES)}")
    keys = [(run["fold"], run["seed"]) for run in runs]
    dupes = sorted({key for key in keys if keys.count(key) > 1}, key=str)
    if dupes:
        raise ValueError(f"(fold, seed) given more than once: {dupes}")
    for field in ("model", "test_set"):
        values = {run[field] for run in runs if field in run}
        if len(values) > 1:
            raise ValueError(f"runs mix several {field}s: {sorted(values)}; aggregate one model and test set")
    mean, std = {}, {}
    for name in METRIC_NAMES:
        values = [run[name] for run in runs]
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            log.warning("%s is undefined in some runs: its mean over runs is null", name)
            mean[name] = std[name] = None
            continue
        x = np.asarray(values, dtype=np.float64)
        mean[name] = float(x.mean())
        std[name] = float(x.std(ddof=1)) if len(x) > 1 else None
    return {"n_runs": len(runs), "runs": [{"fold": f, "seed": s} for f, s in keys],
            "mean_over_runs": mean, "std_over_runs": std}


def pooled(preds: Union[Sequence[Predictions], Mapping[Hashable, Sequence[Predictions]]], n_boot: int = 1000,
           ci: float = 0.95, seed: int = 0, cluster: Optional[str] = "speaker") -> dict[str, Any]:
    """Metrics of the pooled predictions of all folds, with a bootstrap CI over test clips (or speakers).

    `preds`: the folds of one seed, or {seed: folds} (then `pooled_per_seed`
    lists each seed's pooled metrics, without CIs). The folds of each seed are
    concatenated (each clip tested once); every seed must then cover the same
    clips. The headline metric is the mean over seeds of the per-seed pooled
    metric; each bootstrap replicate draws one resample of clips (speakers) and
    applies it to every seed, so the CI is that of the seed mean, over test
    sampling only.
    """
    by_seed = dict(preds) if isinstance(preds, Mapping) else {None: preds}
    pools = {s: concat(folds) for s, folds in by_seed.items()}
    first_seed, first = next(iter(pools.items()))
    aligned = {s: (p if s == first_seed else align_to(first, p)) for s, p in pools.items()}
    per_seed = {s: point_metrics(p) for s, p in aligned.items()}
    point = {name: float(np.mean([m[name] for m in per_seed.values()])) for name in METRIC_NAMES}
    # the speaker column is identical across seeds (checked by align_to), so clusters match across seeds
    tables = [_cluster_tables(p, cluster)[0] for p in aligned.values()]
    _check_clusters(len(tables[0]), cluster)
    boot = [metrics_from_confusion(cm) for cm in _boot_confusions(tables, n_boot, seed)]
    result: dict[str, Any] = {}
    for name in METRIC_NAMES:
        result[name] = _float_or_none(point[name])
        result[_ci_key(name, ci)] = _interval(np.mean([b[name] for b in boot], axis=0), ci)
    out: dict[str, Any] = {"pooled": result}
    if isinstance(preds, Mapping):
        out["pooled_per_seed"] = {str(s): {k: _float_or_none(v) for k, v in m.items()} for s, m in per_seed.items()}
    return {**out, "n_seeds": len(pools), "n_folds": {str(s): len(f) for s, f in by_seed.items()}
            if isinstance(preds, Mapping) else len(preds), "n_clips": len(first),
            "n_speakers": int(len(np.unique(first.speaker))), "cluster": cluster, "n_boot": n_boot, "ci": ci}


# --------------------------------------------------------------------------- paired tests
def _bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p-value from the share of bootstrap differences on either side of 0 (see module doc)."""
    diffs = diffs[~np.isnan(diffs)]
    below, above = int((diffs <= 0).sum()), int((diffs >= 0).sum())
    return min(1.0, 2.0 * (min(below, above) + 1) / (len(diffs) + 1))


def paired_bootstrap(a: Predictions, b: Predictions, metric: str = "uar", n_boot: int = 1000, seed: int = 0,
                     cluster: Optional[str] = "speaker", ci: float = 0.95) -> dict[str, Any]:
    """Paired bootstrap of metric(A) - metric(B) on the same clips (aligned by utt_id).

    Returns diff (on all clips), its percentile CI and a two-sided p-value. The
    same resamples are applied to both models. cluster="speaker" resamples
    whole speakers (the default: clips of one speaker are not independent);
    None resamples clips.
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; known: {list(METRIC_NAMES)}")
    b = align_to(a, b)
    (table_a, m), (table_b, _) = _cluster_tables(a, cluster), _cluster_tables(b, cluster)
    _check_clusters(m, cluster)
    boot_a, boot_b = _boot_confusions([table_a, table_b], n_boot, seed)
    diffs = metrics_from_confusion(boot_a)[metric] - metrics_from_confusion(boot_b)[metric]
    diff = point_metrics(a)[metric] - point_metrics(b)[metric]
    return {"metric": metric, "diff": _float_or_none(diff), "ci": _interval(diffs, ci), "ci_level": ci,
            "p_value": _bootstrap_p(diffs), "n_boot": n_boot, "cluster": cluster, "n_clips": len(a),
            "n_clusters": m}


def mcnemar_exact(a: Predictions, b: Predictions) -> dict[str, Any]:
    """McNemar's exact test on correct/incorrect of two models on the same clips.

    b01: clips A gets wrong and B right; b10: A right, B wrong. p is the
    two-sided binomial test of b10 successes in b01 + b10 trials at 1/2; 1 when
    there are no discordant clips.
    """
    from scipy.stats import binomtest  # here: scipy.stats costs every train/evaluate stage ~0.5 s to import

    b = align_to(a, b)
    b01 = int((~a.correct & b.correct).sum())
    b10 = int((a.correct & ~b.correct).sum())
    p = binomtest(b10, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    return {"b01": b01, "b10": b10, "n_clips": len(a), "p_value": float(min(1.0, p))}


def holm(p_values: Mapping[Hashable, float], alpha: float = 0.05) -> dict[Hashable, dict[str, Any]]:
    """Holm-Bonferroni step-down adjustment of a family of p-values.

    Sorted ascending, the i-th (from 0) of m is multiplied by m - i; adjusted
    values are made monotone (running maximum) and capped at 1. A comparison is
    significant when its adjusted p <= alpha, which controls the family-wise
    error rate at alpha without assuming independence.
    """
    for key, p in p_values.items():
        if p is None or not 0 <= p <= 1:
            raise ValueError(f"p-value of {key!r} must be in [0, 1], got {p}")
    order = sorted(p_values, key=lambda key: p_values[key])
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        out[key] = {"p": float(p_values[key]), "p_holm": running, "significant": running <= alpha}
    return {key: out[key] for key in p_values}


def compare_models(preds: Mapping[str, Predictions], metrics: Sequence[str] = ("uar", "accuracy"),
                   n_boot: int = 1000, seed: int = 0, cluster: Optional[str] = "speaker", ci: float = 0.95,
                   alpha: float = 0.05) -> list[dict[str, Any]]:
    """Both paired tests for every pair of models evaluated on the same clips, Holm-adjusted.

    One flat row per pair (a, b in sorted name order; differences are A - B),
    sorted by (a, b). Holm runs over all pairs separately for each bootstrapped
    metric and for McNemar. Pairs on different clips are skipped and logged.
    For cross-validated models pass `concat(folds)` of one seed.
    """
    rows = []
    for name_a, name_b in itertools.combinations(sorted(preds), 2):
        a, b = preds[name_a], preds[name_b]
        if set(a.utt_id.tolist()) != set(b.utt_id.tolist()):
            log.info("not comparing %s and %s: they were evaluated on different clips", name_a, name_b)
            continue
        row: dict[str, Any] = {"a": name_a, "b": name_b, "n_clips": len(a)}
        for metric in metrics:
            test = paired_bootstrap(a, b, metric, n_boot=n_boot, seed=seed, cluster=cluster, ci=ci)
            row.update({f"{metric}_diff": test["diff"], _ci_key(f"{metric}_diff", ci): test["ci"],
                        f"{metric}_p": test["p_value"]})
        test = mcnemar_exact(a, b)
        row.update({"mcnemar_b01": test["b01"], "mcnemar_b10": test["b10"], "mcnemar_p": test["p_value"]})
        row["cluster"] = cluster
        rows.append(row)
    for family in [*metrics, "mcnemar"]:
        adjusted = holm({i: row[f"{family}_p"] for i, row in enumerate(rows)}, alpha)
        for i, row in enumerate(rows):
            row[f"{family}_p_holm"] = adjusted[i]["p_holm"]
            row[f"{family}_significant"] = adjusted[i]["significant"]
    return rows


# --------------------------------------------------------------------------- per-run metrics
def _confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


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
    # one implementation of the headline metrics, shared with the bootstrap (ser.stats)
    headline = {name: float(v) for name, v in metrics_from_confusion(cm).items()}
    return {
        **headline,
        "per_class_recall": recall,
        "support": {name: int(support[c]) for c, name in enumerate(labels)},
        "confusion": cm.tolist(),
        "labels": list(labels),
        "n": int(len(y_true)),
    }


def bootstrap_ci(y_true: Sequence[int], y_pred: Sequence[int],
                 metric: Union[str, Callable[[np.ndarray, np.ndarray], float]] = "uar",
                 n: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric` (a name of ser.stats.METRIC_NAMES, computed as
    metrics_from_confusion does, or a callable (y_true, y_pred) -> float) over utterances."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0 or n < 1:
        return float("nan"), float("nan")
    if isinstance(metric, str):
        k = int(max(y_true.max(), y_pred.max())) + 1

        def fn(t: np.ndarray, p: np.ndarray) -> float:
            return float(metrics_from_confusion(_confusion(t, p, k))[metric])
    else:
        fn = metric
    rng = np.random.default_rng(seed)
    stats = np.empty(n)
    for b in range(n):
        idx = rng.integers(0, len(y_true), len(y_true))
        stats[b] = fn(y_true[idx], y_pred[idx])
    tail = (1.0 - ci) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail])
    return float(lo), float(hi)
