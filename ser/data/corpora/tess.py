"""TESS: <root>/<OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav (or .flac / .ogg).

Two female speakers (OAF older, YAF younger) say 200 words in 7 emotions.
Real copies spell folders and files inconsistently ("OAF_Fear",
"OAF_Pleasant_surprise", "YAF_pleasant_surprised", files ending in "_ps"), so
names are compared lower-cased with spaces, hyphens and repeated underscores
folded to one underscore. The folder is the label's authority; the file's own
emotion token, when it has one, must mean the same (after the label table) or
the file is skipped with both spellings in the reason.
"""
from __future__ import annotations

import re
from pathlib import Path

from ser.config import CorpusParams
from ser.data.corpora.base import (Corpus, CorpusNotFound, CorpusSource, ScanBuilder, ScanResult, is_hidden,
                                   iter_files, nested_hint, to_canonical)
from ser.data.synth import STYLES, Channel, Clip, DemoSpec, Plan, check_capacity, make_voice, rng_for, vowels_for

SPEAKERS = ("oaf", "yaf")
FOLDER = re.compile(r"^(OAF|YAF)[_\s-]+(.+)$", re.IGNORECASE)


def normalize(token: str) -> str:
    """'Pleasant surprise' / 'pleasant-Surprise' / 'pleasant__surprise' -> 'pleasant_surprise'."""
    return re.sub(r"[\s\-_]+", "_", token.strip()).strip("_").lower()


def _not_found(name: str, root: Path) -> CorpusNotFound:
    hint = nested_hint(root, lambda p: p.is_dir() and bool(FOLDER.match(p.name)), f"corpora.{name}.path")
    return CorpusNotFound(
        f"TESS expected at {root} (folders OAF_angry .. YAF_sad). Download the Toronto Emotional "
        f"Speech Set from the University of Toronto Dataverse (doi:10.5683/SP2/E8H2MF) or set "
        f"corpora.{name}.path in params.yaml.{hint}")


def parse_file(stem: str, table: dict[str, str]) -> tuple[str, str, str | None] | str:
    """(speaker, word, emotion token or None) from a file stem, or the reason it fails.

    The emotion is the longest trailing run of tokens that the label table
    knows ("pleasant_surprised" before "surprised"); TESS words are single tokens.
    """
    parts = normalize(stem).split("_")
    if len(parts) < 2 or parts[0] not in SPEAKERS:
        return "name does not match <OAF|YAF>_<word>_<emotion>.wav|.flac"
    rest = parts[1:]
    for i in range(1, len(rest)):
        token = "_".join(rest[i:])
        if token in table:
            return parts[0], "_".join(rest[:i]), token
    if len(rest) == 1:
        return parts[0], rest[0], None  # no emotion in the name: the folder says it
    return f"emotion token {rest[-1]!r} in the file name is not a TESS emotion (known: {sorted(table)})"


def scan(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    if not root.is_dir():
        raise _not_found(name, root)
    folders = [(p, FOLDER.match(p.name)) for p in sorted(root.iterdir()) if p.is_dir() and not is_hidden(p)]
    if not any(m for _, m in folders):
        raise _not_found(name, root)
    table = {**EMOTIONS, **(cfg.label_map or {})}
    out = ScanBuilder(name)
    for path in iter_files(root):
        out.ignore("hidden files (._*, .*)" if is_hidden(path) else "files outside speaker folders")
    candidates = []
    for folder, m in folders:
        if m is None:
            out.ignore("folders not named <OAF|YAF>_<emotion>")
            continue
        for path in out.audio_files(folder):
            candidates.append((path, m.group(1).lower(), normalize(m.group(2))))
    for path, folder_speaker, folder_emotion in out.progress(candidates):
        if folder_emotion not in table:
            out.skip(path, f"folder emotion {folder_emotion!r} is not a TESS emotion (known: {sorted(table)})")
            continue
        parsed = parse_file(path.stem, table)
        if isinstance(parsed, str):
            out.skip(path, parsed)
            continue
        speaker, word, token = parsed
        if speaker != folder_speaker:
            out.skip(path, f"file speaker {speaker.upper()} but folder speaker {folder_speaker.upper()}")
            continue
        if token is not None and to_canonical(token, table) != to_canonical(folder_emotion, table):
            out.skip(path, f"file emotion {token!r} ({to_canonical(token, table) or 'unmapped'}) "
                           f"disagrees with folder emotion {folder_emotion!r} "
                           f"({to_canonical(folder_emotion, table) or 'unmapped'})")
            continue
        raw = token or folder_emotion
        out.add(path, native_id=f"{speaker.upper()}_{word}_{raw}", speaker=speaker.upper(),
                raw_label=raw, gender="F", text=word)
    return out.result()


# --------------------------------------------------------------------------- labels (as data)
# Keys are lower-cased with spaces/hyphens as underscores; real copies of TESS
# spell folders and files inconsistently (OAF_Fear, YAF_pleasant_surprised).
EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
                 "neutral": "neutral", "sad": "sad", "ps": "surprise",
                 "pleasant_surprise": "surprise", "pleasant_surprised": "surprise",
                 "surprise": "surprise", "surprised": "surprise"}


# --------------------------------------------------------------------------- a complete copy
# No checksum is listed: none is published for these files, and an invented one
# would be worse than the lock file (which pins what was actually fetched).
SOURCE = CorpusSource(
    title="TESS (Toronto emotional speech set)",
    url="https://borealisdata.ca/api/access/dataset/:persistentId/"
        "?persistentId=doi:10.5683/SP2/E8H2MF",
    expected_files=2800,
    where="the dataset zip of doi:10.5683/SP2/E8H2MF from the University of Toronto "
          "Dataverse on Borealis (https://doi.org/10.5683/SP2/E8H2MF)",
    layout="<OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav")


# Emotion tokens of file names -> the folder each belongs in (the completeness check's view).
_LAYOUT_EMOTIONS = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
                    "neutral": "neutral", "sad": "sad", "ps": "ps", "surprise": "ps", "surprised": "ps"}


def missing(root: Path, audio: list[str]) -> list[str]:
    found = set()
    for p in audio:
        parts = Path(p).stem.split("_")
        if len(parts) >= 2:
            found.add((parts[0].upper(), _LAYOUT_EMOTIONS.get(parts[-1].lower())))
    return [f"{spk}_{emo}" for spk in ("OAF", "YAF") for emo in sorted(set(_LAYOUT_EMOTIONS.values()))
            if (spk, emo) not in found]


# --------------------------------------------------------------------------- the demo
TESS_STYLE = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
              "neutral": "neutral", "ps": "surprise", "sad": "sad"}
# Folder names as spelled in the distributed copies (inconsistent case and wording).
TESS_FOLDERS = {
    "OAF": {"angry": "OAF_angry", "disgust": "OAF_disgust", "fear": "OAF_Fear", "happy": "OAF_happy",
            "neutral": "OAF_neutral", "ps": "OAF_Pleasant_surprise", "sad": "OAF_Sad"},
    "YAF": {"angry": "YAF_angry", "disgust": "YAF_disgust", "fear": "YAF_fear", "happy": "YAF_happy",
            "neutral": "YAF_neutral", "ps": "YAF_pleasant_surprised", "sad": "YAF_sad"},
}
TESS_AGES = {"OAF": 64.0, "YAF": 26.0}
# Short monosyllables like TESS's targets (words of the NU-6 auditory test),
# spoken in the carrier phrase "Say the word ___".
TESS_WORDS = tuple("""
back bar base bath bean beg bite boat bone book bought burn cab calm came cause chain chair chalk chat
check cheek chief choice cool dab date dead death deep dime dip ditch dodge dog doll door fail fall far
fat fit five food gap gas gaze germ get gin goal good goose gun half hall hash hate have haze hire hit
hole home hurl jail jar join judge jug juice keen keep keg kick kill king kite knock late laud lean
learn lease lid life limb live loaf long lore lose lot love luck make match merge mess met mill mob
mode mood moon mop mouse nag name near neat nice note numb pad page pain pass pearl peg perch phone
pick pike pole pool puff rag raid rain raise rat reach read red ring ripe road room rose rot rough
rush said sail search seize sell shack shall shawl sheep shirt should shout size soap soup sour south
sub such sure take talk tape team tell thin third thought thumb time tip tire ton tool tough turn
vine voice void vote wag walk wash week wheat when which whip white wife wire witch yearn yes young youth
""".split())


def _tess_plan(seed: int, n: int, faults: bool) -> Plan:
    emotions = list(TESS_STYLE)
    check_capacity("tess", n, len(TESS_WORDS) * len(emotions))
    carrier = vowels_for("Say the word", 3)
    clips = []
    for s_i, spk in enumerate(("OAF", "YAF")):
        voice = make_voice(rng_for(seed, "tess", 1, s_i), "F", TESS_AGES[spk])
        for i in range(n):  # word by word, every emotion: 84 clips = 12 words x 7 emotions
            word, emo = TESS_WORDS[i // len(emotions)], emotions[i % len(emotions)]
            clips.append(Clip(rel=f"{TESS_FOLDERS[spk][emo]}/{spk}_{word}_{emo}.wav", label=emo, speaker=spk,
                               style=STYLES[TESS_STYLE[emo]], voice=voice,
                               vowels=carrier + vowels_for(word, 1), pad=(0.2, 0.5)))
    return Plan(clips, set(), set(), [])


DEMO = DemoSpec(24414, Channel(level_db=3.0, noise_db=-80.0, noise_slope=0.0, band=None),
                _tess_plan, tuple(sorted({f for d in TESS_FOLDERS.values() for f in d.values()})))

CORPUS = Corpus(name="tess", display="TESS", scan=scan, labels=EMOTIONS, source=SOURCE,
                top_folder=r"(?i)(OAF|YAF)_.+", missing=missing, demo=DEMO)
