"""IEMOCAP: <root>/Session{1..5}/sentences/wav/<dialog>/<utt>.wav (or .flac / .ogg).

Labels come from <root>/Session{n}/dialog/EmoEvaluation/<dialog>.txt, of
which only the consensus category line of each turn is read:
    [6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
(the per-annotator C-E*/A-E* lines and the Categorical/, Attribute/ and
Self-evaluation/ subfolders are not labels of the turn). Each session has one
female and one male actor; the speaker is the session plus the gender letter
of the id's last part (Ses01F_impro01_M000 is Ses01's male actor).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np

from ser.config import CorpusParams
from ser.data.corpora.base import (Corpus, CorpusNotFound, CorpusSource, ScanBuilder, ScanResult, is_hidden,
                                   iter_files, nested_hint)
from ser.data.synth import STYLES, Channel, Clip, DemoSpec, Plan, make_voice, rng_for

log = logging.getLogger(__name__)

SESSION_DIR = re.compile(r"^Session(\d)$", re.IGNORECASE)
CATEGORY_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\S+)\s+(\S+)\s+\[")
UTT_ID = re.compile(r"^Ses(\d\d)[FM]_\S+_([FM])[^_]*$")


def _not_found(name: str, root: Path, detail: str = "") -> CorpusNotFound:
    return CorpusNotFound(
        f"IEMOCAP expected at {root} (Session1..Session5, each with sentences/wav/ and "
        f"dialog/EmoEvaluation/).{detail} IEMOCAP is licensed: request it from USC SAIL "
        f"(sail.usc.edu/iemocap), extract it, and set corpora.{name}.path in params.yaml.")


def read_labels(folder: Path) -> tuple[dict[str, str], set[str]]:
    """Turn id -> category from the EmoEvaluation/*.txt files of one session.

    Returns the labels and the ids whose category lines disagree (those turns
    cannot be labelled and are skipped by the caller).
    """
    labels: dict[str, str] = {}
    conflicting: set[str] = set()
    for path in iter_files(folder):
        if is_hidden(path) or path.suffix.lower() != ".txt":
            continue
        for line in path.read_text(errors="replace").splitlines():
            m = CATEGORY_LINE.match(line.strip())
            if m is None:
                continue
            utt, label = m.group(1), m.group(2).lower()
            if labels.get(utt, label) != label:
                conflicting.add(utt)
            labels.setdefault(utt, label)
    return labels, conflicting


def scan(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    if not root.is_dir():
        raise _not_found(name, root)
    sessions = sorted((int(m.group(1)), p) for p in root.iterdir()
                      if p.is_dir() and (m := SESSION_DIR.match(p.name)))
    if not sessions:
        hint = nested_hint(root, lambda p: p.is_dir() and bool(SESSION_DIR.match(p.name)), f"corpora.{name}.path")
        raise _not_found(name, root, f" No Session<n> folder in {root}.{hint}")
    out = ScanBuilder(name)
    candidates = []
    for number, folder in sessions:
        wav_root, label_dir = folder / "sentences" / "wav", folder / "dialog" / "EmoEvaluation"
        if not wav_root.is_dir():
            log.warning("IEMOCAP: %s has no sentences/wav folder; session %d skipped", folder, number)
            continue
        labels, conflicting = read_labels(label_dir) if label_dir.is_dir() else ({}, set())
        if not label_dir.is_dir():
            log.warning("IEMOCAP: %s is missing: session %d has no labels", label_dir, number)
        seen: set[str] = set()
        for dialog in sorted(p for p in wav_root.iterdir() if p.is_dir()):
            if is_hidden(dialog):
                out.ignore("hidden files (._*, .*)")
                continue
            for path in out.audio_files(dialog):
                seen.add(path.stem)
                candidates.append((path, number, labels, conflicting, label_dir / f"{dialog.name}.txt"))
        unheard = len(set(labels) - seen)
        if unheard:
            log.warning("IEMOCAP session %d: %d labelled turn(s) have no audio file", number, unheard)
            out.ignore("labelled turns without an audio file", unheard)
    if not candidates:
        raise _not_found(name, root, " No audio files (.wav/.flac/.ogg) under Session*/sentences/wav/.")
    for path, number, labels, conflicting, label_file in out.progress(candidates):
        m = UTT_ID.match(path.stem)
        if m is None:
            out.skip(path, "name does not match Ses0N<F|M>_<dialog>_<F|M>NNN.wav|.flac")
        elif int(m.group(1)) != number:
            out.skip(path, f"id says session {int(m.group(1))} but the file is in Session{number}")
        elif path.stem in conflicting:
            out.skip(path, f"conflicting category lines for {path.stem} in {label_file.parent}")
        elif path.stem not in labels:
            out.skip(path, f"no category line for {path.stem} in {label_file}")
        else:
            gender = m.group(2)
            out.add(path, native_id=path.stem, speaker=f"Ses{number:02d}{gender}",
                    raw_label=labels[path.stem], gender=gender, session=str(number),
                    text=path.parent.name)
    return out.result()


# --------------------------------------------------------------------------- labels (as data)
# IEMOCAP: `exc` merged into happy (the usual 4-class protocol); `oth`/`xxx`
# (no agreement) map to nothing and are excluded.
EMOTIONS = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad",
                    "ang": "angry", "fru": "frustrated", "fea": "fear", "sur": "surprise",
                    "dis": "disgust", "oth": "", "xxx": ""}


# --------------------------------------------------------------------------- a complete copy
# No checksum is listed: none is published for these files, and an invented one
# would be worse than the lock file (which pins what was actually fetched).
SOURCE = CorpusSource(
    title="IEMOCAP",
    url=None,
    expected_files=None,
    where="USC SAIL, on request (release form at https://sail.usc.edu/iemocap/)",
    layout="Session1..Session5/sentences/wav/<dialog>/<utt>.wav",
    licensed=True)


def missing(root: Path, audio: list[str]) -> list[str]:
    missing = []
    for s in range(1, 6):
        if not any(p.startswith(f"Session{s}/sentences/wav/") for p in audio):
            missing.append(f"Session{s}/sentences/wav/")
        if not (root / f"Session{s}" / "dialog" / "EmoEvaluation").is_dir():
            missing.append(f"Session{s}/dialog/EmoEvaluation/")
    return missing


# --------------------------------------------------------------------------- the demo
IEMOCAP_STYLE = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad",
                 "ang": "angry", "fru": "frustrated"}
IEMOCAP_EVALUATOR = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
                     "ang": "Anger", "fru": "Frustration", "oth": "Other"}
# Typical mean evaluator ratings (valence, activation, dominance), 1-5.
IEMOCAP_VAD = {"neu": (3, 2.5, 2.5), "hap": (4, 3, 3), "exc": (4, 3.5, 3), "sad": (2, 2, 2),
               "ang": (1.5, 4, 4), "fru": (2, 3, 3.5), "oth": (3, 3, 3), "xxx": (2.5, 3, 3)}
IEMOCAP_DIALOGS = ("{s}F_impro01", "{s}M_impro03", "{s}F_script01_1", "{s}M_script02_2")
SAMPLE_RATE = 16000  # the real corpus's rate
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
IEMOCAP_INTENSITY = 0.75  # improvised/scripted dyadic speech is milder than acted corpora
IEMOCAP_FAULT_LABELS = ("neu", "hap", "exc", "sad", "ang")


def _iemocap_plan(seed: int, n: int, faults: bool) -> Plan:
    rng = rng_for(seed, "iemocap", 0)
    neutral = STYLES["neutral"]
    clips: list[Clip] = []
    turns: dict[tuple[int, str], list[tuple[str, int]]] = {}  # (session, dialog) -> [(gender, clip)]
    for s in range(1, 6):
        sess = f"Ses{s:02d}"
        dialogs = [d.format(s=sess) for d in IEMOCAP_DIALOGS]
        for g_i, gender in enumerate("FM"):
            spk = 2 * (s - 1) + g_i
            voice = make_voice(rng_for(seed, "iemocap", 1, spk), gender)
            # A few turns without a majority (xxx) or outside the categories (oth): the
            # pipeline's exclusion counts then have something to count.
            n_excl = max(1, round(0.08 * n)) if n >= 4 else 0
            cats = list(IEMOCAP_STYLE)
            # Each speaker continues the category cycle where the previous one stopped.
            labels = [cats[(spk * (n - n_excl) + i) % len(cats)] for i in range(n - n_excl)]
            labels += [("xxx", "oth")[(spk + i) % 2] for i in range(n_excl)]
            rng.shuffle(labels)
            for i, lab in enumerate(labels):
                if lab in IEMOCAP_STYLE:
                    style = STYLES[IEMOCAP_STYLE[lab]]
                elif lab == "oth":  # something outside the category set
                    style = STYLES[str(rng.choice(["fear", "surprise", "disgust", "calm"]))]
                else:  # evaluators disagreed: a blend of two categories
                    a, b = rng.choice(list(IEMOCAP_STYLE.values()), 2, replace=False)
                    style = STYLES[str(a)].toward(STYLES[str(b)], 0.5)
                dialog = dialogs[i % len(dialogs)]
                turns.setdefault((s, dialog), []).append((gender, len(clips)))
                clips.append(Clip(rel="", label=lab, speaker=f"{sess}{gender}",
                                   style=neutral.toward(style, IEMOCAP_INTENSITY),
                                   voice=voice, vowels=None, room=s))
    # Utterance ids number each speaker's turns within a dialog: _F000, _F001, _M000 ...
    final: list[Clip] = list(clips)
    dialog_turns: dict[tuple[int, str], list[int]] = {}
    for (s, dialog), items in turns.items():
        counters = {"F": 0, "M": 0}
        by_gender = [[c for g, c in items if g == gender] for gender in "FM"]
        # A conversation: the two speakers take turns.
        order = [lst[j] for j in range(max(map(len, by_gender))) for lst in by_gender if j < len(lst)]
        for c in order:
            gender = clips[c].speaker[-1]
            utt = f"{dialog}_{gender}{counters[gender]:03d}"
            counters[gender] += 1
            final[c] = dataclasses.replace(clips[c], rel=f"Session{s}/sentences/wav/{dialog}/{utt}.wav")
        dialog_turns[(s, dialog)] = order

    silent: set[int] = set()
    short: set[int] = set()
    if faults:
        eligible = [i for i, c in enumerate(final)
                    if c.label in IEMOCAP_FAULT_LABELS and c.room <= 3] or list(range(len(final)))
        if len(eligible) >= 2:
            a, b = rng.choice(eligible, 2, replace=False)
            silent, short = {int(a)}, {int(b)}

    def write_labels(root: Path, lengths: list[int]) -> None:
        _write_emo_evaluation(root, final, dialog_turns, lengths, seed)

    labels = tuple(f"Session{s}/dialog/EmoEvaluation/{dialog}.txt" for s, dialog in sorted(dialog_turns))
    return Plan(final, silent, short, [], write_labels, labels)


def _write_emo_evaluation(root: Path, clips: list[Clip], dialog_turns: dict[tuple[int, str], list[int]],
                          lengths: list[int], seed: int) -> None:
    """EmoEvaluation/<dialog>.txt in the real format, turn times from the written files."""
    rng = rng_for(seed, "iemocap", 4)
    sr = SAMPLE_RATE
    for (s, dialog), order in sorted(dialog_turns.items()):
        start = float(rng.uniform(1.0, 6.0))
        entries = []
        for c in order:
            clip = clips[c]
            end = start + lengths[c] / sr
            utt = Path(clip.rel).stem
            entries.append(_emo_entry(rng, start, end, utt, clip.label))
            start = end + float(rng.uniform(0.2, 2.5))
        path = root / f"Session{s}/dialog/EmoEvaluation/{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(IEMOCAP_HEADER + "\n\n" + "\n".join(entries))


def _emo_entry(rng: np.random.Generator, start: float, end: float, utt: str, label: str) -> str:
    """One turn: the consensus line, three categorical and two dimensional evaluators."""
    cats = list(IEMOCAP_EVALUATOR.values())
    if label == "xxx":  # no majority: three different answers
        votes = [str(v) for v in rng.choice(cats[:-1], 3, replace=False)]
    else:
        main = IEMOCAP_EVALUATOR[label]
        votes = [main, main, main if rng.random() < 0.6 else str(rng.choice(cats[:-1]))]
    notes = {"Other": "(" + str(rng.choice(["amused", "confused", "sarcastic", "bored"])) + ")"}
    ratings = np.clip(np.round(np.array(IEMOCAP_VAD[label]) + rng.normal(0, 0.6, (2, 3))), 1, 5).astype(int)
    v, a, d = ratings.mean(axis=0)
    lines = [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]"]
    lines += [f"C-E{j + 1}:\t{vote};\t{notes.get(vote, '()')}" for j, vote in enumerate(votes)]
    lines += [f"A-E{j + 1}:\tval {r[0]}; act {r[1]}; dom  {r[2]};\t()" for j, r in enumerate(ratings)]
    return "\n".join(lines) + "\n"


DEMO = DemoSpec(SAMPLE_RATE, Channel(level_db=-2.0, noise_db=-54.0, noise_slope=1.0, band=(90.0, 6500.0),
                                  rt60=0.4, drr_db=4.0, hum_db=-60.0),
                   _iemocap_plan, tuple(f"Session{s}" for s in range(1, 6)))

CORPUS = Corpus(name="iemocap", display="IEMOCAP", scan=scan, labels=EMOTIONS, source=SOURCE,
                top_folder=r"Session\d", missing=missing, demo=DEMO)
