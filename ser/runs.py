"""Runs: one (model, fold, seed) cell of the experiment matrix, and where its outputs live.

Every model of params.yaml runs once per fold in `folds` and seed in `seeds`
(DVC `matrix` stages train@<model>-<fold>-<seed>, evaluate@<model>-<fold>-<seed>).
A cell writes under `<root>/<model>/f<fold>-s<seed>/` (models, checkpoints,
DVCLive, metrics, plots), so each is cached and re-run on its own: adding a
seed adds cells and leaves the others untouched.

`folds` is one list for every study; a study with fewer folds (a single-split
study has one) does not run the cells beyond its count: they record
`not_run.json` with the reason and finish at once, and the summary skips them.

The `bind` stage writes data/bind/<model>.json for every model (`write_binds`):
which store the model reads, that store's content fingerprint and the model's
run spec (the part of params.yaml its runs read, `Params.run_spec`). A run's
stages depend on its model's file instead of on params keys (a matrix stage
cannot look up its model's input, study or objective), so they re-run for their
own features and settings only: `dvc exp run -S lambda_domain=0.3` rewrites
every file, changes only the DANN models' and so reaches the DANN models alone.
One stage for all models, not one per model: DVC spends seconds on each stage
it runs, and any params change re-runs the bind step.
train@ and evaluate@ refuse to run when params.yaml no longer matches the spec
(`check_spec`), so a result never depends on a value DVC did not track.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ser.errors import SerError
from ser.fsutil import write_json_atomic

if TYPE_CHECKING:
    from ser.config import Params

log = logging.getLogger(__name__)

__all__ = ["run_name", "parse_run_name", "NOT_RUN", "bind_record", "write_bind", "write_binds", "read_bind", "check_spec", "not_run_reason",
           "mark_not_run", "is_not_run", "BindError"]

NOT_RUN = "not_run.json"


class BindError(FileNotFoundError, SerError):
    """A bind file is missing or does not match params.yaml."""


def run_name(fold: int, seed: int) -> str:
    """The folder of one run under a model's folder: f<fold>-s<seed>."""
    return f"f{fold}-s{seed}"


def parse_run_name(name: str) -> Optional[tuple[int, int]]:
    """(fold, seed) of a run folder name, None for anything else."""
    fold, sep, seed = name.partition("-s")
    if not sep or not fold.startswith("f") or not fold[1:].isdigit():
        return None
    try:
        return int(fold[1:]), int(seed)
    except ValueError:
        return None


def bind_record(model: str, input_kind: str, study: str, store: Path,
                spec: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What data/bind/<model>.json holds: the store's path, folds, content fingerprint and the sha256 of its
    whole meta.json, and the model's run spec (`Params.run_spec`); BindError when the store has not been built.

    The meta hash makes a run depend on everything the model's meta.json copies from the store (an
    embedding store's stamp with its code hash, the front end, the openSMILE version), not only on the
    feature values: a store rebuilt with equal values but another stamp re-runs its models too."""
    meta_path = Path(store) / "meta.json"
    if not meta_path.is_file():
        raise BindError(f"{meta_path}: missing (model {model!r} reads {input_kind}/{study}); run the precompute "
                        f"stage for {input_kind} first (`dvc repro`)")
    meta = json.loads(meta_path.read_text())
    meta_sha256 = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return {"model": model, "input": input_kind, "study": study, "store": str(store),
            "folds": meta.get("folds", [1]), "content_sha256": meta.get("content_sha256"),
            "meta_sha256": meta_sha256, "spec": spec}


def write_bind(model: str, input_kind: str, study: str, store: Path, out: Path,
               spec: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """data/bind/<model>.json (`bind_record`), written atomically."""
    return _publish(bind_record(model, input_kind, study, store, spec), out)


def _publish(record: dict[str, Any], out: Path) -> dict[str, Any]:
    write_json_atomic(out, record)
    log.info("%s reads %s (folds %s)", record["model"], record["store"], record["folds"])
    return record


def write_binds(params: "Params", features: Path, out_dir: Path) -> list[dict[str, Any]]:
    """data/bind/<model>.json for every model of params.yaml, and no other file in out_dir: a model taken
    out of params.yaml leaves no bind file behind. Every record is made before any file is written, so a
    missing store fails without touching the folder."""
    out_dir = Path(out_dir)
    records = []
    for name, mp in params.models.items():
        store = Path(features) / mp.input / mp.study
        records.append(bind_record(name, mp.input, mp.study, store / mp.store_key if mp.store_key else store,
                                   spec=params.run_spec(name)))
    for record in records:
        _publish(record, out_dir / f"{record['model']}.json")
    for old in out_dir.glob("*.json"):
        if old.stem not in params.models:
            log.info("removing %s: no model %r in params.yaml", old, old.stem)
            old.unlink()
    return records


def read_bind(path: Path, model: str, input_kind: str, study: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BindError(f"{path}: missing; run `dvc repro bind` first")
    record = json.loads(path.read_text())
    if (record.get("input"), record.get("study")) != (input_kind, study):
        raise BindError(f"{path}: binds {record.get('input')}/{record.get('study')}, but params.yaml gives "
                        f"{model} input {input_kind!r} and study {study!r}; run `dvc repro bind`")
    return record


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    return [] if a == b else [f"{where.lstrip('.')}: {_short(b)} in the bind file, {_short(a)} in params.yaml"]


def check_spec(bind: dict[str, Any], spec: dict[str, Any], path: Path) -> None:
    """Raise BindError unless the bind file's run spec is `spec` (params.yaml's, now)."""
    if bind.get("spec") == spec:
        return
    if not bind.get("spec"):
        why = "it records no run spec (written by an older version)"
    else:
        diff = _differences(spec, bind["spec"])
        why = "params.yaml changed since: " + "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
    raise BindError(f"{path}: {why}; run `dvc repro`, which re-runs the bind stage first")


def not_run_reason(bind: dict[str, Any], fold: int) -> Optional[str]:
    """Why cell `fold` of a model is not run (None: it is run)."""
    folds = bind.get("folds") or [1]
    if fold in folds:
        return None
    return (f"study {bind['study']} has {len(folds)} fold(s) ({', '.join(map(str, folds))}); fold {fold} of "
            f"the top-level `folds` list does not exist there")


def mark_not_run(reason: str, dirs: Sequence[Path], files: Sequence[Path] = (),
                 empty_dirs: Sequence[Path] = ()) -> None:
    """Write the not-run marker into every output folder (and as every output file) of a cell;
    `empty_dirs` (plots folders, whose every file DVC would read as a plot) are only emptied."""
    record = {"not_run": reason}
    for d in [*dirs, *empty_dirs]:
        d.mkdir(parents=True, exist_ok=True)
        for stale in d.iterdir():  # an earlier run of this cell (the study had more folds then)
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for d in dirs:
        write_json_atomic(d / NOT_RUN, record)
    for f in files:
        write_json_atomic(f, record)
    log.info("not run: %s", reason)


def is_not_run(run_dir: Path) -> bool:
    return (Path(run_dir) / NOT_RUN).is_file()
