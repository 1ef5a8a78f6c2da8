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

import numpy as np

from ser.config import CorpusParams
from ser.data.corpora.base import Corpus, CorpusNotFound, CorpusSource, ScanBuilder, ScanResult, nested_hint
from ser.data.synth import (STYLES, Channel, Clip, DemoSpec, Plan, balanced, check_capacity, make_voice, rng_for,
                            vowels_for)

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


# --------------------------------------------------------------------------- labels (as data)
EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear",
                    "HAP": "happy", "NEU": "neutral", "SAD": "sad"}


# --------------------------------------------------------------------------- a complete copy
# No checksum is listed: none is published for these files, and an invented one
# would be worse than the lock file (which pins what was actually fetched).
SOURCE = CorpusSource(
    title="CREMA-D",
    url="https://github.com/CheyneyComputerScience/CREMA-D.git",
    expected_files=7442,
    where="the AudioWAV folder of https://github.com/CheyneyComputerScience/CREMA-D "
          "(stored in git-lfs: `git lfs pull --include 'AudioWAV/**'`)",
    layout="AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav",
    git_include="AudioWAV")


def missing(root: Path, audio: list[str]) -> list[str]:
    names = [p[len("AudioWAV/"):] for p in audio if p.startswith("AudioWAV/")]
    if not names:
        return ["AudioWAV/"]
    actors = {n.split("_")[0] for n in names}
    return [f"AudioWAV/{a}_*.wav" for a in range(1001, 1092) if str(a) not in actors]


# --------------------------------------------------------------------------- the demo
CREMA_D_STYLE = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMA_D_INTENSITY = {"LO": 0.6, "MD": 0.9, "HI": 1.2, "XX": 0.9}
CREMA_D_SENTENCES = {  # code: (sentence, syllables)
    "IEO": ("It's eleven o'clock", 5), "TIE": ("That is exactly what happened", 8),
    "IOM": ("I'm on my way to the meeting", 8), "IWW": ("I wonder what this is about", 8),
    "TAI": ("The airplane is almost full", 7), "MTI": ("Maybe tomorrow it will be cold", 9),
    "IWL": ("I would like a new alarm clock", 8), "ITH": ("I think I have a doctor's appointment", 10),
    "DFA": ("Don't forget a jacket", 6), "ITS": ("I think I've seen this before", 7),
    "TSI": ("The surface is slick", 5), "WSI": ("We'll stop in a couple of minutes", 9),
}
CREMA_D_ACTORS = range(1001, 1092)
CREMA_D_MALE = 48  # 48 male, 43 female actors


def _crema_d_plan(seed: int, n: int, faults: bool) -> Plan:
    rng = rng_for(seed, "crema_d", 0)
    pools = []
    for emo in CREMA_D_STYLE:
        # Only "It's eleven o'clock" was recorded at three intensities; neutral and
        # the other sentences are unspecified (XX).
        combos = [(s, "XX") for s in CREMA_D_SENTENCES if s != "IEO"]
        combos += [("IEO", lv) for lv in (("XX",) if emo == "NEU" else ("LO", "MD", "HI"))]
        pools.append([(emo, s, lv) for s, lv in combos])
    check_capacity("crema_d", n, sum(map(len, pools)))
    is_male = np.zeros(len(CREMA_D_ACTORS), bool)
    is_male[rng.permutation(len(CREMA_D_ACTORS))[:CREMA_D_MALE]] = True
    ages = rng.integers(20, 75, len(CREMA_D_ACTORS))
    clips = []
    for i, actor in enumerate(CREMA_D_ACTORS):
        voice = make_voice(rng_for(seed, "crema_d", 1, actor), "M" if is_male[i] else "F", float(ages[i]))
        shuffled = [[p[j] for j in rng.permutation(len(p))] for p in pools]
        for emo, sent, lv in balanced(shuffled, n, i * n):
            text, syll = CREMA_D_SENTENCES[sent]
            clips.append(Clip(rel=f"AudioWAV/{actor}_{sent}_{emo}_{lv}.wav", label=emo, speaker=str(actor),
                               style=STYLES["neutral"].toward(STYLES[CREMA_D_STYLE[emo]], CREMA_D_INTENSITY[lv]),
                               voice=voice, vowels=vowels_for(text, syll)))
    duplicates = []
    if faults:  # the first later clip with another label becomes a byte copy of clip 0
        other = next((j for j, c in enumerate(clips) if c.label != clips[0].label), None)
        duplicates = [(0, other)] if other is not None else []

    def write_demographics(root: Path, lengths: list[int]) -> None:
        # VideoDemographics.csv as in the real release (gender is not in file names).
        races = ["Caucasian", "African American", "Asian", "Unknown"]
        demo_rng = rng_for(seed, "crema_d", 4)
        rows = ["ActorID,Age,Sex,Race,Ethnicity"]
        for i, actor in enumerate(CREMA_D_ACTORS):
            race = races[int(demo_rng.choice(4, p=[0.6, 0.25, 0.1, 0.05]))]
            eth = "Hispanic" if demo_rng.random() < 0.1 else "Not Hispanic"
            rows.append(f"{actor},{ages[i]},{'Male' if is_male[i] else 'Female'},{race},{eth}")
        (root / "VideoDemographics.csv").write_text("\n".join(rows) + "\n")

    return Plan(clips, set(), set(), duplicates, write_demographics, ("VideoDemographics.csv",))


DEMO = DemoSpec(16000, Channel(level_db=-3.0, noise_db=-46.0, noise_slope=0.3, band=(250.0, 3800.0),
                                  band_order=4, rt60=0.12, drr_db=10.0),
                   _crema_d_plan, ("AudioWAV", "VideoDemographics.csv"))

CORPUS = Corpus(name="crema_d", display="CREMA-D", scan=scan, labels=EMOTIONS, source=SOURCE,
                top_folder=r"AudioWAV", missing=missing, demo=DEMO)
