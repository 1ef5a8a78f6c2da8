"""CREMA-D: <root>/AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav (or .flac / .ogg).

Actors 1001-1091, sentence codes (IEO, TIE, DFA, ...), EMO in ANG DIS FEA HAP
NEU SAD, level LO MD HI XX. Gender is not in the name: it comes from the
corpus's VideoDemographics.csv (columns ActorID, Sex) when that file is present
in <root>, and is left unknown otherwise.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from ser.config import CorpusParams
from ser.data.corpora import CorpusNotFound, ScanBuilder, ScanResult, nested_hint

log = logging.getLogger(__name__)

NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$", re.IGNORECASE)
DEMOGRAPHICS = "VideoDemographics.csv"
SEX = {"male": "M", "female": "F", "m": "M", "f": "F"}


def _not_found(name: str, root: Path) -> CorpusNotFound:
    hint = nested_hint(root, lambda p: p.is_dir() and p.name == "AudioWAV", f"corpora.{name}.path")
    return CorpusNotFound(
        f"CREMA-D expected at {root} (AudioWAV/1001_DFA_ANG_XX.wav ...). Clone "
        f"github.com/CheyneyComputerScience/CREMA-D with git-lfs (AudioWAV/ and {DEMOGRAPHICS}) "
        f"or set corpora.{name}.path in params.yaml to the folder that contains AudioWAV.{hint}")


def read_demographics(path: Path) -> dict[str, str]:
    """ActorID -> "M"/"F" from VideoDemographics.csv; {} (with a warning) if unusable."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {c.strip(): c for c in reader.fieldnames or ()}
            if "ActorID" not in cols or "Sex" not in cols:
                log.warning("%s: needs columns ActorID and Sex (found %s); CREMA-D gender left unknown",
                            path, sorted(cols))
                return {}
            return {row[cols["ActorID"]].strip(): SEX.get(row[cols["Sex"]].strip().lower(), "")
                    for row in reader if row.get(cols["ActorID"])}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: unreadable (%s); CREMA-D gender left unknown", path, exc)
        return {}


def scan(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    audio = root / "AudioWAV"
    if not audio.is_dir():
        raise _not_found(name, root)
    demographics = root / DEMOGRAPHICS
    sex = read_demographics(demographics) if demographics.is_file() else {}
    if not sex:
        log.info("CREMA-D: no usable %s in %s; gender left unknown", DEMOGRAPHICS, root)
    out = ScanBuilder(name)
    candidates = out.audio_files(audio)
    if not candidates:
        raise _not_found(name, root)
    for path in out.progress(candidates):
        m = NAME.match(path.stem)
        if m is None:
            out.skip(path, "name does not match <actor>_<sentence>_<EMO>_<level>.wav|.flac (e.g. 1001_DFA_ANG_XX.wav)")
            continue
        actor, sentence, emotion, _level = (g.upper() for g in m.groups())
        out.add(path, native_id=path.stem, speaker=actor, raw_label=emotion,
                gender=sex.get(actor, ""), text=sentence)
    return out.result()
