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
from ser.data.corpora import CorpusNotFound, ScanBuilder, ScanResult, is_hidden, iter_files, nested_hint
from ser.data.labels import label_table, to_canonical

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
    table = label_table(cfg.adapter or "tess", cfg.label_map)
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
