"""The one manifest schema every corpus adapter emits, with boundary validation."""
from __future__ import annotations

import csv
import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ser.errors import SerError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "adapt", "unassigned")


class ManifestError(ValueError, SerError):
    """A manifest breaks the schema; the message names the file or rows at fault."""


@dataclass(frozen=True)
class Utterance:
    """One labelled clip.

    `utt_id` is unique across corpora (prefixed by the corpus name), `speaker`
    is the corpus-local speaker id, `emotion` the study's canonical label (empty
    before a study's label map is applied), `raw_label` the corpus's own code,
    and `split` one of SPLITS (`adapt` is unlabeled target-domain data for DANN).
    """
    utt_id: str
    corpus: str
    speaker: str
    path: str
    duration_s: float
    sample_rate: int
    raw_label: str
    emotion: str = ""
    gender: str = ""  # "F", "M" or "" where unknown
    session: str = ""  # IEMOCAP session, generic corpora's optional column
    split: str = "unassigned"
    text: str = ""  # sentence / word id where the corpus has one (TESS held-out words)


FIELDS = tuple(f.name for f in dataclasses.fields(Utterance))


def write_manifest(rows: Iterable[Utterance], path: str | Path) -> int:
    """Write rows as CSV atomically (temp file + rename); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))
            n += 1
    tmp.replace(path)
    return n


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read a manifest CSV written by `write_manifest`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run `dvc repro build-metadata`)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise ManifestError(f"{path}: missing columns {sorted(missing)}")
        rows = []
        for i, rec in enumerate(reader, start=2):
            try:
                rows.append(Utterance(**{
                    **{k: rec[k] for k in FIELDS},
                    "duration_s": float(rec["duration_s"]),
                    "sample_rate": int(rec["sample_rate"]),
                }))
            except ValueError as exc:
                raise ManifestError(f"{path}:{i}: {exc}") from None
    return rows


def validate(rows: Sequence[Utterance], labels: Optional[Sequence[str]] = None,
             where: str = "manifest", leak_exempt: Iterable[str] = ()) -> None:
    """Check the schema's invariants; raise ManifestError listing what is wrong.

    Unique ids, known labels (when `labels` is given), positive durations,
    known split names, and no speaker in two splits of one corpus (the
    speaker-leakage check). Corpora in `leak_exempt` are split by a protocol
    that is not speaker-independent by design (TESS's held-out words, whose two
    speakers appear in every split; see README).
    """
    problems: list[str] = []
    seen: dict[str, int] = {}
    for row in rows:
        if row.utt_id in seen:
            problems.append(f"duplicate utt_id {row.utt_id!r}")
        seen[row.utt_id] = 1
        if not row.duration_s > 0:
            problems.append(f"{row.utt_id}: duration_s must be > 0, got {row.duration_s}")
        if row.split not in SPLITS:
            problems.append(f"{row.utt_id}: unknown split {row.split!r} (known: {list(SPLITS)})")
        if labels is not None and row.emotion not in labels:
            problems.append(f"{row.utt_id}: emotion {row.emotion!r} not in study labels {list(labels)}")
    problems.extend(speaker_leaks(rows, leak_exempt))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(f"{where}: {len(problems)} problem(s):\n  {shown}{more}")


def speaker_leaks(rows: Iterable[Utterance], exempt: Iterable[str] = ()) -> list[str]:
    """Messages for every speaker that appears in more than one split of its corpus."""
    exempt = set(exempt)
    splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        if row.corpus in exempt or row.split == "unassigned":
            continue
        splits[(row.corpus, row.speaker)].add(row.split)
    return [f"speaker leakage: {corpus} speaker {spk!r} is in splits {sorted(s)}"
            for (corpus, spk), s in sorted(splits.items()) if len(s) > 1]


def manifest_path(manifests_dir: str | Path, study: str, fold: int) -> Path:
    """data/manifests/<study>/f<fold>.csv: one fold's manifest."""
    return Path(manifests_dir) / study / f"f{fold}.csv"


def study_folds(manifests_dir: str | Path, study: str) -> list[int]:
    """The folds a study's manifests define (1..k), from the files build-metadata wrote."""
    found = sorted(int(p.stem[1:]) for p in (Path(manifests_dir) / study).glob("f*.csv") if p.stem[1:].isdigit())
    if not found:
        raise ManifestError(f"{Path(manifests_dir) / study}: no fold manifests (f1.csv, ...); "
                            "run `dvc repro build-metadata`")
    return found
