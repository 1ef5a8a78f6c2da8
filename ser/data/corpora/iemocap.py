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

import logging
import re
from pathlib import Path

from ser.config import CorpusParams
from ser.data.corpora import CorpusNotFound, ScanBuilder, ScanResult, is_hidden, iter_files, nested_hint

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
