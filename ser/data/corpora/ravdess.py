"""RAVDESS speech: <root>/Actor_NN/MM-CC-EE-II-SS-RR-AA.wav (or .flac / .ogg, as mirrors ship it).

Name fields: modality (01 audio-video, 02 video-only, 03 audio-only), vocal
channel (01 speech, 02 song), emotion, intensity, statement, repetition, actor
(odd = male). Only audio-only speech is used: song and video files are counted
as ignored, so merging the song or video archives into the same folders is harmless.
"""
from __future__ import annotations

import re
from pathlib import Path

from ser.config import CorpusParams
from ser.data.corpora.base import (Corpus, CorpusNotFound, CorpusSource, ScanBuilder, ScanResult, is_audio,
                                   is_hidden, iter_files, nested_hint)
from ser.data.synth import (STYLES, Channel, Clip, DemoSpec, Plan, balanced, check_capacity, make_voice, rng_for,
                            vowels_for)

NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
ACTOR_DIR = re.compile(r"^Actor_(\d\d)$", re.IGNORECASE)
EMOTION_CODES = {f"{i:02d}" for i in range(1, 9)}
BINARY_CODES = {"01", "02"}  # intensity, statement and repetition are each 01 or 02


def _not_found(name: str, root: Path) -> CorpusNotFound:
    hint = nested_hint(root, lambda p: p.is_dir() and bool(ACTOR_DIR.match(p.name)), f"corpora.{name}.path")
    return CorpusNotFound(
        f"RAVDESS expected at {root} (Actor_01..Actor_24). Download Audio_Speech_Actors_01-24.zip "
        f"from Zenodo record 1188976 or set corpora.{name}.path in params.yaml.{hint}")


def scan(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    if not root.is_dir():
        raise _not_found(name, root)
    actors = sorted(p for p in root.iterdir() if p.is_dir() and ACTOR_DIR.match(p.name))
    if not actors:
        raise _not_found(name, root)
    out = ScanBuilder(name)
    candidates = []
    for folder in actors:
        for path in iter_files(folder):
            if is_hidden(path):
                out.ignore("hidden files (._*, .*)")
                continue
            m = NAME.match(path.stem)
            if m and m.group(1) in ("01", "02"):
                out.ignore("video files (modality 01/02)")
            elif m and m.group(2) == "02":
                out.ignore("song files (vocal channel 02)")
            elif not is_audio(path):
                out.ignore(f"non-audio files ({path.suffix or 'no extension'})")
            else:
                candidates.append((path, m))
    for path, m in out.progress(candidates):
        if m is None:
            out.skip(path, "name does not match MM-CC-EE-II-SS-RR-AA.wav|.flac (7 two-digit fields)")
            continue
        modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
        if modality != "03" or channel != "01":
            out.skip(path, f"unknown modality/channel {modality}-{channel} (expected 03-01 for audio speech)")
        elif emotion not in EMOTION_CODES:
            out.skip(path, f"unknown emotion code {emotion} (expected 01..08)")
        elif not {intensity, statement, repetition} <= BINARY_CODES:
            out.skip(path, "intensity, statement and repetition must each be 01 or 02")
        else:
            out.add(path, native_id=path.stem, speaker=actor, raw_label=emotion,
                    gender="M" if int(actor) % 2 else "F", text=statement)
    return out.result()


# --------------------------------------------------------------------------- labels (as data)
EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                    "05": "angry", "06": "fear", "07": "disgust", "08": "surprise"}


# --------------------------------------------------------------------------- a complete copy
# No checksum is listed: none is published for these files, and an invented one
# would be worse than the lock file (which pins what was actually fetched).
SOURCE = CorpusSource(
    title="RAVDESS (speech, audio only)",
    url="https://zenodo.org/records/1188976/files/Audio_Speech_Actors_01-24.zip?download=1",
    expected_files=1440,
    where="Audio_Speech_Actors_01-24.zip from Zenodo record 1188976 "
          "(https://zenodo.org/records/1188976)",
    layout="Actor_01..Actor_24/03-01-EE-II-SS-RR-AA.wav")


def missing(root: Path, audio: list[str]) -> list[str]:
    actors = {p.split("/")[0] for p in audio if "/" in p}
    return [a for a in (f"Actor_{i:02d}" for i in range(1, 25)) if a not in actors]


# --------------------------------------------------------------------------- the demo
RAVDESS_STYLE = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                 "05": "angry", "06": "fear", "07": "disgust", "08": "surprise"}
RAVDESS_INTENSITY = {"01": 0.85, "02": 1.25}  # normal, strong
# "Kids are talking by the door", "Dogs are sitting by the door": 7 syllables each.
RAVDESS_STATEMENTS = {"01": ("Kids are talking by the door", 7), "02": ("Dogs are sitting by the door", 7)}


def _ravdess_plan(seed: int, n: int, faults: bool) -> Plan:
    rng = rng_for(seed, "ravdess", 0)
    pools = []
    for emo in RAVDESS_STYLE:
        levels = ("01",) if emo == "01" else ("01", "02")  # neutral has no strong intensity
        pools.append([(emo, lv, st, rep) for lv in levels for st in ("01", "02") for rep in ("01", "02")])
    check_capacity("ravdess", n, sum(map(len, pools)))
    clips = []
    for actor in range(1, 25):
        voice = make_voice(rng_for(seed, "ravdess", 1, actor), "M" if actor % 2 else "F")  # odd = male
        shuffled = [[p[i] for i in rng.permutation(len(p))] for p in pools]
        for emo, lv, st, rep in balanced(shuffled, n, (actor - 1) * n):
            style = STYLES["neutral"].toward(STYLES[RAVDESS_STYLE[emo]], RAVDESS_INTENSITY[lv])
            text, syll = RAVDESS_STATEMENTS[st]
            clips.append(Clip(rel=f"Actor_{actor:02d}/03-01-{emo}-{lv}-{st}-{rep}-{actor:02d}.wav",
                               label=emo, speaker=f"{actor:02d}", style=style, voice=voice,
                               vowels=vowels_for(text, syll)))
    return Plan(clips, set(), set(), [])


DEMO = DemoSpec(48000, Channel(level_db=0.0, noise_db=-82.0, noise_slope=0.0, band=None),
                   _ravdess_plan, tuple(f"Actor_{a:02d}" for a in range(1, 25)))

CORPUS = Corpus(name="ravdess", display="RAVDESS", scan=scan, labels=EMOTIONS, source=SOURCE,
                top_folder=r"Actor_\d+", missing=missing, demo=DEMO)
