"""`ser report`: one markdown table and one chart of every model's UAR, in the
workspace and in DVC experiments.

Sources:
  workspace    <metrics_dir>/aggregate.json as written by the summarize stage
               (ser.eval.summary): per model and scope (in_domain, target = a
               cross-corpus study's target corpus, named in `corpus`) the mean
               and std over runs (folds x seeds) and the pooled metrics with
               their bootstrap confidence intervals (`pooled.uar_ci95`, ...).
               Matrix-study models (scopes named after corpora) are in
               metrics/summary.md's corpus matrix, not in this report;
  experiments  `dvc exp show --json` (dvc 3.x): a list of baseline commits, each
               with `experiments: [{name, executor, revs: [{rev, data: {params,
               metrics}}]}]`. Only finished experiments are read (queued,
               running and failed ones have no results). `dvc exp show` leaves
               list values out of metrics, so the intervals are read from the
               experiment's commit itself (`git show <rev>:<file>`: the metrics
               are git-tracked, `cache: false`).

An experiment contributes the models whose metrics differ from those of the
commit it was based on (all of them if that commit has none), labelled with
the experiment's name and the params it changed.
"""
from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from ser.eval.evaluate import SCOPES

__all__ = ["Row", "read_workspace", "parse_exp_show", "read_experiments", "render_markdown", "plot_rows",
           "write_report", "SCOPE_TITLES"]

log = logging.getLogger(__name__)

SCOPE_TITLES = {"in_domain": "in-domain", "target": "cross-corpus (target)"}
WORKSPACE = "workspace"
AGGREGATE = "aggregate.json"
_METRIC_FILE = re.compile(r"(?:^|/)aggregate\.json$")


@dataclass
class Row:
    """One model in one run (the workspace or an experiment): its aggregate record per scope."""
    run: str
    model: str
    changed: str = ""  # "lambda_domain=0.3, ..." for experiments
    scopes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def value(self, scope: str, key: str = "uar", part: str = "pooled") -> Optional[float]:
        """`key` of the pooled predictions (part "pooled"), or its mean or std over runs
        (part "mean_over_runs" / "std_over_runs")."""
        value = (self.scopes.get(scope, {}).get(part) or {}).get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def interval(self, scope: str, key: str = "uar") -> Optional[tuple[float, float]]:
        """The pooled confidence interval of `key` (`<key>_ci<level>`), if the record has one."""
        for name, value in (self.scopes.get(scope, {}).get("pooled") or {}).items():
            if (name.startswith(f"{key}_ci") and isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(v, (int, float)) for v in value)):
                return float(value[0]), float(value[1])
        return None

    @property
    def label(self) -> str:
        return self.model if self.run == WORKSPACE else f"{self.model} @ {self.run}" + (
            f" ({self.changed})" if self.changed else "")


def _ci_level(rows: Iterable[Row]) -> str:
    for row in rows:
        for record in row.scopes.values():
            for name in record.get("pooled") or {}:
                match = re.fullmatch(r"uar_ci(\d+)", name)
                if match:
                    return match.group(1)
    return "95"


# ---------------------------------------------------------------------- reading
def _scope_records(doc: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """{(model, scope): record} of an aggregate.json document (in_domain and target scopes only)."""
    out = {}
    models = doc.get("models") if isinstance(doc, dict) else None
    for model, scopes in (models or {}).items():
        for scope, record in (scopes or {}).items():
            if scope in SCOPES and isinstance(record, dict):
                out[(model, scope)] = record
    return out


def read_workspace(metrics_dir: str | Path) -> list[Row]:
    """Rows of <metrics_dir>/aggregate.json (sorted by model); none when it does not exist."""
    path = Path(metrics_dir) / AGGREGATE
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a metrics JSON file ({exc}); re-run `dvc repro summarize`") from None
    rows: dict[str, Row] = {}
    for (model, scope), record in _scope_records(doc).items():
        rows.setdefault(model, Row(WORKSPACE, model)).scopes[scope] = record
    return [rows[name] for name in sorted(rows)]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _params(data: dict[str, Any]) -> dict[str, Any]:
    """Flat {dotted.key: value} over every params file (keys of files other than params.yaml are prefixed)."""
    flat: dict[str, Any] = {}
    for fname, entry in (data.get("params") or {}).items():
        values = _flatten((entry or {}).get("data") or {})
        flat.update(values if fname == "params.yaml" else {f"{fname}:{k}": v for k, v in values.items()})
    return flat


MAX_CHANGED_SHOWN = 4  # params per experiment label; the rest are counted


def _short_key(key: str, keys: Iterable[str]) -> str:
    """The shortest dotted suffix of `key` that no other key ends with (`models.dann.optim.lr` -> `dann.optim.lr`)."""
    parts = key.split(".")
    others = [k for k in keys if k != key]
    for n in range(1, len(parts) + 1):
        suffix = ".".join(parts[-n:])
        if not any(k == suffix or k.endswith("." + suffix) for k in others):
            return suffix
    return key


def _short_value(value: Any) -> str:
    text = "∅" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def describe_changes(base: dict[str, Any], experiments: dict[str, dict[str, Any]]) -> dict[str, str]:
    """A compact label per experiment of one baseline: what distinguishes it.

    With several experiments, params that every one of them changed to the same
    value are left out (they distinguish none of them) unless nothing else is
    left; keys are shortened to their shortest unambiguous suffix, values to 24
    characters, and at most MAX_CHANGED_SHOWN are listed (`+N more`).
    """
    changed = {name: {k: params.get(k) for k in sorted(set(params) | set(base)) if params.get(k) != base.get(k)}
               for name, params in experiments.items()}
    shared: dict[str, Any] = {}
    if len(changed) > 1:
        first, *rest = changed.values()
        shared = {k: v for k, v in first.items() if all(k in c and c[k] == v for c in rest)}
    all_keys = set(base).union(*experiments.values()) if experiments else set(base)
    labels = {}
    for name, diff in changed.items():
        own = {k: v for k, v in diff.items() if k not in shared} or diff
        items = [f"{_short_key(k, all_keys)}={_short_value(v)}" for k, v in own.items()]
        more = len(items) - MAX_CHANGED_SHOWN
        labels[name] = ", ".join(items[:MAX_CHANGED_SHOWN]) + (f", +{more} more" if more > 0 else "")
    return labels


def _records(data: dict[str, Any]) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """{(model, scope): (file, record)} from the aggregate metrics file of one revision."""
    out = {}
    for path, entry in (data.get("metrics") or {}).items():
        if _METRIC_FILE.search(path):
            out.update({key: (path, record) for key, record in _scope_records((entry or {}).get("data")).items()})
    return out


def _comparable(record: dict[str, Any]) -> tuple:
    return tuple((record.get(part) or {}).get(k) for part in ("pooled", "mean_over_runs")
                 for k in ("accuracy", "uar", "macro_f1"))


def _finished(exp: dict[str, Any]) -> bool:
    revs = exp.get("revs") or []
    return ((exp.get("executor") or {}).get("state", "success") == "success" and bool(revs)
            and not revs[0].get("error") and bool(revs[0].get("data")))


def parse_exp_show(doc: list[dict[str, Any]],
                   full_record: Optional[Callable[[str, str], Optional[dict]]] = None) -> list[Row]:
    """Rows of the finished experiments in `dvc exp show --json` output.

    full_record(rev, path) -> dict or None: the whole metrics file of a
    revision (exp show drops list values such as the confidence intervals).
    """
    rows: list[Row] = []
    for baseline in doc:
        if baseline.get("rev") == WORKSPACE:
            continue
        base_data = baseline.get("data") or {}
        base_params, base_records = _params(base_data), _records(base_data)
        finished = [e for e in baseline.get("experiments") or [] if _finished(e)]
        labels = describe_changes(base_params, {e.get("name") or "?": _params(e["revs"][0]["data"])
                                                for e in finished})
        for exp in baseline.get("experiments") or []:
            name = exp.get("name") or "?"
            state = (exp.get("executor") or {}).get("state", "success")
            revs = exp.get("revs") or []
            if state != "success" or not revs or revs[0].get("error") or not revs[0].get("data"):
                log.info("experiment %s: %s, no results to report", name, state if state != "success" else "failed")
                continue
            rev, data = revs[0]["rev"], revs[0]["data"]
            changed = labels.get(name, "")
            records = _records(data)
            for model in sorted({m for m, _ in records}):
                scopes = {scope: records[(m, scope)] for m, scope in records if m == model}
                if all((model, scope) in base_records
                       and _comparable(base_records[(model, scope)][1]) == _comparable(record)
                       for scope, (_, record) in scopes.items()):
                    continue  # the experiment did not re-run this model
                row = Row(name, model, changed)
                for scope, (path, record) in sorted(scopes.items()):
                    full = full_record(rev, path) if full_record is not None else None
                    full = _scope_records(full).get((model, scope)) if isinstance(full, dict) else None
                    row.scopes[scope] = full or record
                rows.append(row)
    return rows


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    # The dvc of this interpreter's environment, whatever is first on PATH.
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=300)


def _git_show(repo: Path, rev: str, path: str) -> Optional[dict[str, Any]]:
    # "<rev>:./<path>": relative to `repo`, also when the DVC root is a subdirectory of the git root.
    proc = subprocess.run(["git", "show", f"{rev}:./{path}"], cwd=repo, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None


def read_experiments(repo: str | Path = ".") -> list[Row]:
    """Rows of the finished DVC experiments of `repo` (empty, with a warning, where there are none)."""
    repo = Path(repo)
    try:
        proc = _dvc(repo, "exp", "show", "--json")
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("could not run `dvc exp show` in %s (%s): reporting the workspace only", repo, exc)
        return []
    if proc.returncode != 0:
        log.warning("`dvc exp show --json` failed in %s: %s; reporting the workspace only", repo,
                    (proc.stderr.strip().splitlines() or ["(no message)"])[-1])
        return []
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ValueError(f"`dvc exp show --json` in {repo} printed no JSON ({exc}): {proc.stdout[:200]!r}") from None
    rows = parse_exp_show(doc, lambda rev, path: _git_show(repo, rev, path))
    log.info("read %d model result(s) from %d DVC experiment(s) in %s", len(rows), len({r.run for r in rows}), repo)
    return rows


# ---------------------------------------------------------------------- writing
def _pct(row: Row, scope: str, key: str) -> str:
    record = row.scopes.get(scope, {})
    if record.get("skipped"):
        return "no test data"
    value = row.value(scope, key)
    if value is None:
        return "—"
    ci = row.interval(scope, key)
    text = f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
    if scope == "target" and record.get("corpus"):
        text += f" on {record['corpus']}"
    if record.get("single_class_runs") and key == "uar":
        text += f" (single class in {', '.join(record['single_class_runs'])})"
    return text


def _runs(row: Row, scope: str, key: str) -> str:
    """mean ± std over runs (folds x seeds), and how many runs."""
    mean, std = row.value(scope, key, "mean_over_runs"), row.value(scope, key, "std_over_runs")
    if mean is None:
        return "—"
    n = row.scopes.get(scope, {}).get("n_runs")
    return f"{100 * mean:.1f}%" + (f" ± {100 * std:.1f}" if std is not None else "") + (f" (n={n})" if n else "")


def render_markdown(rows: Sequence[Row], image: Optional[str] = "report.png") -> str:
    level = _ci_level(rows)
    head = ["Run", "Changed params", "Model", "Computed with"]
    for scope in SCOPES:
        head += [f"{SCOPE_TITLES[scope]} UAR over runs", f"{SCOPE_TITLES[scope]} pooled UAR [{level}% CI]",
                 f"{SCOPE_TITLES[scope]} pooled accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        computed = next((r["computed_with"] for r in row.scopes.values() if r.get("computed_with")), "—")
        cells = [row.run, row.changed or "—", row.model, computed]
        for scope in SCOPES:
            cells += [_runs(row, scope, "uar"), _pct(row, scope, "uar"), _pct(row, scope, "accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    n_exps = len({r.run for r in rows if r.run != WORKSPACE})
    text = ["# SER report", "",
            "UAR and accuracy on each model's test sets: the mean ± sample std over runs (folds x seeds, n runs), "
            f"and the metrics of all runs' pooled predictions with {level}% bootstrap confidence intervals. "
            "In-domain: the study's own test split (the source corpus of the cross-corpus study); "
            "cross-corpus: the target corpus's test speakers, named in each cell (— where a model is "
            "not cross-corpus). "
            "Rows: the workspace's models" + (f", then {n_exps} DVC experiment(s), each with the models "
                                              "whose metrics it changed." if n_exps else ".") + " "
            "Computed with: the torch threads, device and precision of the runs (runs are bit-for-bit "
            "comparable only when these are equal; classical models record none).", ""]
    if image:
        text += [f"![pooled UAR per model with {level}% confidence intervals]({image})", ""]
    return "\n".join(text + lines) + "\n"


def plot_rows(rows: Sequence[Row], path: str | Path) -> None:
    """Horizontal bars: per row, in-domain and cross-corpus UAR side by side, CI error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = _ci_level(rows)
    height = 0.8 / len(SCOPES)
    colors = {"in_domain": "#4C72B0", "target": "#DD8452"}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.55 * len(rows) * len(SCOPES) / 2), constrained_layout=True)
    for k, scope in enumerate(SCOPES):
        ys, values, errs = [], [], [[], []]
        for i, row in enumerate(rows):
            value = row.value(scope)
            if value is None:
                continue
            lo, hi = row.interval(scope) or (value, value)
            ys.append(i + (k - (len(SCOPES) - 1) / 2) * height)
            values.append(value)
            errs[0].append(max(0.0, value - lo))
            errs[1].append(max(0.0, hi - value))
        ax.barh(ys, values, height=height, xerr=errs, capsize=3, color=colors.get(scope),
                label=f"{SCOPE_TITLES[scope]} UAR", error_kw={"elinewidth": 1})
        for y, v in zip(ys, values):
            ax.text(0.005, y, f"{v:.2f}", va="center", ha="left", fontsize=7, color="white")
    # Chance UAR is 1 / number of classes (4 cross-corpus, 7 multi-corpus): a bar near it learned nothing.
    chance = [(i, 1.0 / rec["n_classes"]) for i, row in enumerate(rows)
              for rec in list(row.scopes.values())[:1] if isinstance(rec.get("n_classes"), int) and rec["n_classes"]]
    if chance:
        ax.scatter([c for _, c in chance], [i for i, _ in chance], marker="|", s=400, color="black",
                   linewidths=1.5, zorder=3, label="chance (1 / classes)")
    boundary = next((i for i, r in enumerate(rows) if r.run != WORKSPACE), None)
    if boundary:
        ax.axhline(boundary - 0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"pooled UAR over all runs (error bars: {level}% bootstrap CI)")
    ax.grid(axis="x", alpha=0.3)
    # Outside the axes: bars can reach any UAR, a legend inside could hide one.
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=len(SCOPES) + 1, fontsize=8,
               markerscale=0.5)
    ax.set_title("Unweighted average recall: in-domain vs cross-corpus")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    log.info("wrote %s", path)


def _experiment_order(rows: Sequence[Row]) -> list[Row]:
    """Experiments grouped by model (workspace order), best cross-corpus UAR first."""
    def key(row: Row) -> tuple:
        cross = row.value("target")
        return (row.model, cross is None, -(cross or 0.0), -(row.value("in_domain") or 0.0), row.run)
    return sorted(rows, key=key)


def write_report(metrics_dir: str | Path = "metrics", out_dir: str | Path = "reports", repo: str | Path = ".",
                 experiments: bool = True) -> tuple[Path, Path]:
    """Write out_dir/report.md and out_dir/report.png; returns their paths."""
    out_dir = Path(out_dir)
    rows = read_workspace(metrics_dir)
    exp_rows = read_experiments(repo) if experiments else []
    if not rows and not exp_rows:
        raise FileNotFoundError(f"nothing to report: no {Path(metrics_dir) / AGGREGATE} and no finished DVC "
                                "experiments; run `dvc repro` first")
    rows = rows + _experiment_order(exp_rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, png = out_dir / "report.md", out_dir / "report.png"
    md.write_text(render_markdown(rows, png.name))
    log.info("wrote %s (%d rows)", md, len(rows))
    plot_rows(rows, png)
    return md, png
