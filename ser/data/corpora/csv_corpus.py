"""Generic corpus described by a metadata CSV: add a corpus without writing code.

params.yaml:
    corpora:
      emodb: {source: local, path: data/raw/emodb, adapter: csv, csv: metadata.csv}

The CSV (relative to `path` unless absolute) has columns path, speaker,
emotion and optionally session, gender, text; `path` is relative to the
corpus folder. `emotion` is kept as the raw label and, with no `label_map`,
used lower-cased as the canonical name. A broken CSV is an error listing every
bad row (file, line, problem) rather than a silently smaller corpus; a clip
whose audio header cannot be read is skipped with the reason, as in every adapter.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from ser.config import CorpusParams
from ser.data.corpora.base import Corpus, CorpusNotFound, ScanBuilder, ScanResult
from ser.errors import SerError

REQUIRED = ("path", "speaker", "emotion")
OPTIONAL = ("session", "gender", "text")
GENDERS = {"f": "F", "female": "F", "w": "F", "woman": "F",
           "m": "M", "male": "M", "man": "M",
           "": "", "u": "", "unknown": "", "na": "", "n/a": ""}
MAX_SHOWN = 20


class CsvCorpusError(ValueError, SerError):
    """A corpus metadata CSV is malformed; the message names the file, lines and problems."""


def native_id(path: str) -> str:
    """A clip's id within the corpus: its CSV path without the extension (a.wav and a.flac would collide)."""
    return Path(path).with_suffix("").as_posix().lstrip("/")


def metadata_path(name: str, cfg: CorpusParams, root: Path) -> Path:
    if not cfg.csv:
        raise CsvCorpusError(f"corpora.{name}: adapter 'csv' needs `csv:` naming the metadata file "
                             f"(columns {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
    path = Path(cfg.csv)
    return path if path.is_absolute() else root / path


def scan(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    table = metadata_path(name, cfg, root)
    if not root.is_dir():
        raise CorpusNotFound(f"{name}: corpus folder {root} not found; set corpora.{name}.path in params.yaml")
    if not table.is_file():
        raise CorpusNotFound(f"{name}: metadata CSV {table} not found; set corpora.{name}.csv "
                             f"(relative to corpora.{name}.path, or absolute) in params.yaml")
    entries, problems = [], []
    with table.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {(c or "").strip().lower(): c for c in reader.fieldnames or ()}
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise CsvCorpusError(f"{table}: missing column(s) {missing}; found {sorted(columns)}. "
                                 f"Needed: {', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
        first_line: dict[str, int] = {}
        first_id: dict[str, tuple[str, int]] = {}
        for rec in reader:
            line = reader.line_num
            v = {k: (rec.get(columns[k]) or "").strip() for k in REQUIRED + OPTIONAL if k in columns}
            if not any(v.values()):
                continue  # a row of bare commas, as spreadsheets export
            bad = []
            for col in ("path", "speaker", "emotion"):
                if not v[col]:
                    bad.append(f"empty {col}")
            gender = v.get("gender", "")
            if gender.lower() not in GENDERS:
                bad.append(f"gender {gender!r} is not F/M/female/male (or empty for unknown)")
            if v["path"]:
                audio = root / v["path"]  # an absolute path in the CSV stays absolute
                key = os.path.normpath(audio)
                clip_id = native_id(v["path"])
                if key in first_line:
                    bad.append(f"duplicate path {v['path']!r} (first on line {first_line[key]})")
                elif clip_id in first_id:
                    other, other_line = first_id[clip_id]
                    bad.append(f"{v['path']!r} and {other!r} (line {other_line}) would share the clip id "
                               f"{clip_id!r} (the path without its extension); rename one of the files")
                else:
                    first_line[key] = line
                    first_id[clip_id] = (v["path"], line)
                    if not audio.is_file():
                        bad.append(f"audio file {audio} not found")
            if bad:
                problems.extend(f"{table}: line {line}: {b}" for b in bad)
            else:
                entries.append((audio, v))
    if problems:
        shown = "\n  ".join(problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise CsvCorpusError(f"{table}: {len(problems)} problem(s); fix the CSV (line 1 is the header):"
                             f"\n  {shown}{more}")
    if not entries:
        raise CorpusNotFound(f"{name}: metadata CSV {table} has no rows")
    out = ScanBuilder(name)
    for audio, v in out.progress(entries):
        out.add(audio, native_id=native_id(v["path"]),
                speaker=v["speaker"], raw_label=v["emotion"], session=v.get("session", ""),
                gender=GENDERS[v.get("gender", "").lower()], text=v.get("text", ""))
    return out.result()


# No label map (the CSV's emotion column is canonical unless `label_map` maps it), no download, no demo.
CORPUS = Corpus(name="csv", display="CSV corpus", scan=scan)
