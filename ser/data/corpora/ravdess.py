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
from ser.data.corpora import CorpusNotFound, ScanBuilder, ScanResult, is_audio, is_hidden, iter_files, nested_hint

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
