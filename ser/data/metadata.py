"""build-metadata: corpora -> one manifest per study, plus a report of every decision.

For each study: scan its corpora (each corpus once, however many studies use
it), drop duplicate audio, map raw labels to the study's label set, assign the
split protocol, validate (no speaker in two splits), and count everything that
was skipped, excluded or dropped, so a reader of data/reports/metadata.json
can tell exactly how the raw folders became the manifest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tqdm import tqdm

from ser.config import Params
from ser.data.corpora import ScanResult, display_name, label_table, scan_corpus, to_canonical
from ser.data.manifest import ManifestError, Utterance, manifest_path, validate, write_manifest
from ser.data.splits import LISTED_SPLITS, assign_splits, fold_count
from ser.errors import SerError
from ser.fsutil import write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["MetadataError", "build_manifests", "write_outputs", "corpus_roots", "find_duplicates",
           "file_sha1", "hash_files", "study_fold_count"]

CHUNK = 1 << 20


class MetadataError(ValueError, SerError):
    """A study cannot be built from its corpora; the message says what to change."""


# --------------------------------------------------------------------------- roots
def corpus_roots(params: Params, verify_report: Optional[str | Path] = None) -> dict[str, Path]:
    """Where each corpus lives: the download-verify report's `root`, else `corpora.<name>.path`."""
    reported: dict[str, str] = {}
    if verify_report is not None:
        path = Path(verify_report)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise MetadataError(f"{path}: not found; run `dvc repro download-verify` first "
                                f"(or omit --verify-report to use corpora.<name>.path)") from None
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{path}: not valid JSON ({exc})") from None
        corpora = data.get("corpora") if isinstance(data, dict) else None
        if not isinstance(corpora, dict):
            raise MetadataError(f"{path}: expected {{\"corpora\": {{<name>: {{\"root\": <path>}}}}}}")
        reported = {name: str(entry["root"]) for name, entry in corpora.items()
                    if isinstance(entry, dict) and entry.get("root")}
    roots = {}
    for name, cfg in params.corpora.items():
        roots[name] = Path(reported.get(name, cfg.path))
        if verify_report is not None and name not in reported:
            log.info("%s: not in %s; using corpora.%s.path = %s", name, verify_report, name, cfg.path)
    return roots


# --------------------------------------------------------------------------- duplicates
def file_sha1(path: str | Path) -> str:
    """sha1 of a file's bytes, read in 1 MiB chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(paths: Sequence[str], workers: int = 2) -> dict[str, str]:
    """path -> sha1 for every path; two threads keep the disk busy while one hashes."""
    if not paths:
        return {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(tqdm(pool.map(file_sha1, paths), total=len(paths), desc="hash audio",
                            unit="file", mininterval=1.0, leave=False, disable=None))
    return dict(zip(paths, digests))


def find_duplicates(rows: Sequence[Utterance], hashes: dict[str, str],
                    label_of: Callable[[Utterance], str]) -> tuple[list[dict[str, Any]], set[str]]:
    """Groups of byte-identical clips and the utt_ids to drop.

    A group whose labels agree keeps its first copy (in `rows` order); a group
    whose labels conflict is dropped entirely, since no one can tell which
    label the recording deserves.
    """
    by_hash: dict[str, list[Utterance]] = defaultdict(list)
    for row in rows:
        by_hash[hashes[row.path]].append(row)
    groups, drop = [], set()
    for digest, members in by_hash.items():
        if len(members) < 2:
            continue
        labels = [label_of(m) for m in members]
        if len(set(labels)) > 1:
            drop.update(m.utt_id for m in members)
            action = "dropped all copies: labels conflict"
        else:
            drop.update(m.utt_id for m in members[1:])
            action = f"kept {members[0].utt_id}"
        groups.append({"sha1": digest, "utt_ids": [m.utt_id for m in members],
                       "paths": [m.path for m in members], "raw_labels": [m.raw_label for m in members],
                       "labels": labels, "action": action})
    return groups, drop


# --------------------------------------------------------------------------- build
def _missing_label_messages(corpus: str, labels: Sequence[str], rows: Sequence[Utterance],
                            table: dict[str, str], scanned: ScanResult) -> list[str]:
    """Study labels this corpus contributes no clip to, each with the reason."""
    have = Counter(r.emotion for r in rows)
    # A CSV corpus has no table: its classes are whatever its emotion column holds.
    classes = set(table.values()) if table else {to_canonical(u.raw_label, table) for u in scanned.utterances}
    name = display_name(corpus)
    return [f"{name} has no {label} class" if label not in classes else f"{name}: no {label} clips kept"
            for label in labels if not have[label]]


def _keep_labeled(params: Params, sname: str, corpus: str, scan: ScanResult, table: Any, dropped: set,
                  root: str | Path) -> tuple[list[Utterance], dict[str, Any]]:
    """The clips of one corpus whose label is in the study's set (duplicates dropped), and its report."""
    study = params.studies[sname]
    kept, excluded, maps_to = [], Counter(), {}
    n_dup = 0
    for u in scan.utterances:
        if u.utt_id in dropped:
            n_dup += 1
            continue
        label = to_canonical(u.raw_label, table)
        if label in study.labels:
            kept.append(dataclasses.replace(u, emotion=label))
        else:
            excluded[u.raw_label] += 1
            maps_to[u.raw_label] = label
    if not kept:
        raise MetadataError(
            f"study {sname}: no {display_name(corpus)} clip has a label in {list(study.labels)} "
            f"({len(scan.utterances)} readable, {len(scan.skipped)} skipped, excluded by raw label "
            f"{dict(excluded)}); check corpora.{corpus} and studies.{sname}.labels")
    entry = {
        "adapter": params.corpora[corpus].adapter or corpus,
        "root": str(root),
        "protocol": params.splits[sname][corpus].protocol,
        "files_found": scan.files_found,
        "readable": len(scan.utterances),
        "skipped": [{"path": p, "reason": why} for p, why in scan.skipped],
        "ignored": dict(scan.ignored),
        "duplicates_dropped": n_dup,
        "excluded_by_raw_label": {raw: {"maps_to": maps_to[raw], "count": n} for raw, n in sorted(excluded.items())},
        "kept": len(kept),
        "missing_labels": _missing_label_messages(corpus, study.labels, kept, table, scan),
        "folds": {},
    }
    for msg in entry["missing_labels"]:
        log.warning("study %s: %s", sname, msg)
    return kept, entry


def _study_folds(params: Params, sname: str, kept_by_corpus: dict[str, list[Utterance]],
                 corpora_report: dict[str, Any]) -> tuple[dict[int, list[Utterance]], dict[str, Any]]:
    """Every fold's validated manifest rows of a study, and the per-fold report."""
    study = params.studies[sname]
    folds: dict[int, list[Utterance]] = {}
    folds_report: dict[str, Any] = {}
    for fold in range(1, study_fold_count(params, sname, kept_by_corpus) + 1):
        rows = _fold_rows(params, sname, fold, kept_by_corpus, corpora_report)
        empty = [lab for lab in study.labels if not any(r.emotion == lab for r in rows)]
        if empty:
            raise MetadataError(f"study {sname}: label(s) {empty} have no clips in any of "
                                f"{list(study.corpora)}; fix studies.{sname}.labels or the corpora's label_map")
        exempt = [c for c in study.corpora if params.splits[sname][c].protocol == "held_out_words"]
        try:
            validate(rows, labels=study.labels, where=f"study {sname} fold {fold}", leak_exempt=exempt)
        except ManifestError as exc:
            raise ManifestError(f"{exc}\nA speaker must be in one split only: fix splits.{sname} "
                                f"in params.yaml (or the corpus's speaker/session columns)") from None
        folds[fold] = rows
        folds_report[str(fold)] = {
            "kept": len(rows),
            "splits": {s: n for s in LISTED_SPLITS if (n := sum(r.split == s for r in rows))},
            "labels_by_split": {s: {lab: n for lab in study.labels
                                    if (n := sum(r.split == s and r.emotion == lab for r in rows))}
                                for s in LISTED_SPLITS if any(r.split == s for r in rows)},
        }
    return folds, folds_report


def build_manifests(params: Params, roots: dict[str, Path]) -> tuple[dict[str, list[Utterance]], dict]:
    """One validated manifest per study, and the JSON-able report of how it was built."""
    scans: dict[str, ScanResult] = {}
    hashes: dict[str, str] = {}
    manifests: dict[str, list[Utterance]] = {}
    report: dict[str, Any] = {"studies": {}}
    for sname, study in params.studies.items():
        root = {c: roots.get(c, params.corpora[c].path) for c in study.corpora}
        for corpus in study.corpora:
            if corpus not in scans:
                scans[corpus] = scan_corpus(corpus, params.corpora[corpus], Path(root[corpus]))
        tables = {c: label_table(params.corpora[c].adapter or c, params.corpora[c].label_map)
                  for c in study.corpora}
        scanned = [u for c in study.corpora for u in scans[c].utterances]
        hashes.update(hash_files([u.path for u in scanned if u.path not in hashes]))
        groups, dropped = find_duplicates(scanned, hashes,
                                          lambda u: to_canonical(u.raw_label, tables[u.corpus]))
        for g in groups:
            log.warning("study %s: identical audio %s (labels %s): %s",
                        sname, ", ".join(g["utt_ids"]), g["labels"], g["action"])
        kept_by_corpus: dict[str, list[Utterance]] = {}
        corpora_report: dict[str, Any] = {}
        for corpus in study.corpora:
            kept_by_corpus[corpus], corpora_report[corpus] = _keep_labeled(
                params, sname, corpus, scans[corpus], tables[corpus], dropped, root[corpus])
        folds, folds_report = _study_folds(params, sname, kept_by_corpus, corpora_report)
        manifests[sname] = folds
        report["studies"][sname] = {
            "labels": list(study.labels),
            "design": study.design,
            "n_folds": len(folds),
            "corpora": corpora_report,
            "duplicate_groups": groups,
            "clips": len({r.utt_id for rows in folds.values() for r in rows}),
            "folds": folds_report,
        }
        _log_summary(sname, report["studies"][sname])
    return manifests, report


def study_fold_count(params: Params, sname: str, rows: dict[str, list[Utterance]]) -> int:
    """Folds of a study: the number of training corpora (design matrix), else the common
    fold count of its fold protocols (1 when every corpus has a single split)."""
    study = params.studies[sname]
    if study.design == "matrix":
        return len(study.corpora)
    counts = {c: fold_count(rows[c], params.splits[sname][c], c, f"splits.{sname}.{c}") for c in study.corpora}
    multi = {c: k for c, k in counts.items() if k > 1}
    if len(set(multi.values())) > 1:
        raise MetadataError(f"splits.{sname}: the fold protocols of one study must have the same number of folds, "
                            f"got {multi}; set the same `folds:` for each (loso has one per session)")
    return max(counts.values())


def _fold_rows(params: Params, sname: str, fold: int, kept: dict[str, list[Utterance]],
               corpora_report: dict[str, Any]) -> list[Utterance]:
    """The manifest rows of one fold of a study: every corpus's clips with their split in this fold."""
    study = params.studies[sname]
    rows: list[Utterance] = []
    for i, corpus in enumerate(study.corpora, start=1):
        sp = params.splits[sname][corpus]
        where = f"splits.{sname}.{corpus}" + (f" (fold {fold})" if sp.protocol == "loso" or sp.k else "")
        split_rows = assign_splits(kept[corpus], corpus, sp, where=where, fold=fold,
                                   implicit_train=corpus != study.target or study.train_on_target)
        if study.design == "matrix" and i != fold:  # another corpus's run: only its test clips are used
            split_rows = [r if r.split == "test" else dataclasses.replace(r, split="unassigned") for r in split_rows]
        final = [r for r in split_rows if r.split != "unassigned"]
        rows.extend(final)
        speakers: dict[str, set[str]] = defaultdict(set)
        for r in final:
            speakers[r.split].add(r.speaker)
        corpora_report[corpus]["folds"][str(fold)] = {
            "unassigned": len(split_rows) - len(final),
            "splits": {s: n for s in LISTED_SPLITS if (n := sum(r.split == s for r in final))},
            "speakers": {s: len(speakers[s]) for s in LISTED_SPLITS if speakers[s]},
            "labels": {lab: n for lab in study.labels if (n := sum(r.emotion == lab for r in final))},
        }
    return rows


def _log_summary(sname: str, study: dict[str, Any]) -> None:
    """A small table per study and fold: what was found, what went, where the rest landed."""
    head = f"{'corpus':<10} {'fold':>4} {'found':>6} {'skip':>5} {'dup':>4} {'excl':>5} {'unasg':>5} " \
           + " ".join(f"{s:>6}" for s in LISTED_SPLITS)
    lines = [f"study {sname} {study['labels']}: {study['clips']} clips, {study['n_folds']} fold(s)", head]
    for corpus, c in study["corpora"].items():
        excluded = sum(e["count"] for e in c["excluded_by_raw_label"].values())
        for fold, f in c["folds"].items():
            lines.append(f"{corpus:<10} {fold:>4} {c['files_found']:>6} {len(c['skipped']):>5} "
                         f"{c['duplicates_dropped']:>4} {excluded:>5} {f['unassigned']:>5} "
                         + " ".join(f"{f['splits'].get(s, 0):>6}" for s in LISTED_SPLITS))
        if c["excluded_by_raw_label"]:
            lines.append("    excluded: " + ", ".join(f"{raw} ({e['maps_to'] or 'dropped by label_map'}) x{e['count']}"
                                                      for raw, e in c["excluded_by_raw_label"].items()))
    log.info("\n".join(lines))


# --------------------------------------------------------------------------- outputs
def write_outputs(manifests: dict[str, dict[int, list[Utterance]]], report: dict, out_dir: str | Path,
                  report_path: str | Path) -> None:
    """data/manifests/<study>/f<k>.csv for each study and fold, and the report JSON (all atomic)."""
    out_dir = Path(out_dir)
    for sname, folds in manifests.items():
        for stale in (out_dir / sname).glob("f*.csv"):
            if stale.stem[1:].isdigit() and int(stale.stem[1:]) not in folds:
                stale.unlink()
        for fold, rows in folds.items():
            path = manifest_path(out_dir, sname, fold)
            n = write_manifest(rows, path)
            log.info("wrote %s (%d rows)", path, n)
    write_json_atomic(report_path, report, sort_keys=False)
    log.info("wrote %s", report_path)
