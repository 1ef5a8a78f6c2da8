"""Synthetic demo corpora in the real corpora's exact on-disk layouts.

The pipeline's offline default: `generate_corpus("ravdess", root, ...)` writes a
small RAVDESS (or IEMOCAP, CREMA-D, TESS) that the real adapters, split lists
and label tables read unchanged: same folder structure, file names, label
files, speaker counts and sample rates as the real corpus (see design.md).
What to write is each corpus's `DEMO` plan, in its own file
(ser.data.corpora.<name>); the voices and channels come from ser.data.synth.

Each corpus has its own channel so the cross-corpus gap is real: IEMOCAP a
noisy room (synthetic reverb per session, pink background noise, 60 Hz hum,
90-6500 Hz band), RAVDESS a clean full-band studio, CREMA-D a band-limited
(250-3800 Hz), noisier channel, TESS clean, full band and louder.

Injected faults (`inject_faults=True`), for the pipeline's skip paths; the
labels of these files still parse and they are listed in the marker file:
  - IEMOCAP: one all-silent clip (digital zeros, normal length) and one
    too-short clip (0.1 s of speech); both carry a 4-class label (neu/hap/exc/
    sad/ang) in sessions 1-3, so a 4-class training set would otherwise keep them.
  - CREMA-D: one byte-identical duplicate pair under different emotion labels
    (the real corpus has 3 such pairs): the later file is a copy of the earlier.
No unreadable files are injected.

Determinism: every random draw comes from a generator seeded by (seed, corpus
name, purpose, index), so reruns are byte-identical and corpora do not depend
on each other. Completion: `<root>/.demo-partial.json` is written first and
`<root>/.demo-complete.json` (settings, file count, faults) last; a root whose
complete marker matches the settings (and whose wav count agrees) is left as
is; a root with either marker is regenerated, deleting only the files the
generator wrote (each marker lists them); a file it did not write (a user's
addition) stops the run with its name, so nothing of theirs is deleted; a root
with corpus-looking content but no marker is refused (it may be a real corpus).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from ser.data.corpora import CORPORA
from ser.data.synth import SHORT_FAULT_S, DemoSpec, apply_channel, render_speech, rng_for, room_ir
from ser.fsutil import write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["DEMO_CORPORA", "DEMOS", "MARKER", "PARTIAL_MARKER", "generate_corpus", "foreign_files"]

# corpus -> its demo plan (the `demo` of its ser.data.corpora entry)
DEMOS: dict[str, DemoSpec] = {name: c.demo for name, c in CORPORA.items() if c.demo is not None}
DEMO_CORPORA = tuple(DEMOS)
MARKER = ".demo-complete.json"
PARTIAL_MARKER = ".demo-partial.json"
# Bump when the generated audio or layout changes: old demo trees then regenerate.
GENERATOR_VERSION = 1


# --------------------------------------------------------------------------- driver
def _settings(name: str, seed: int, clips_per_speaker: int, inject_faults: bool) -> dict:
    return {"name": name, "seed": seed, "clips_per_speaker": clips_per_speaker,
            "inject_faults": inject_faults, "version": GENERATOR_VERSION}


def _read_marker(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _files_under(root: Path, entries: Optional[Sequence[str]] = None) -> list[str]:
    """Files and links under `root` (or only under its `entries`), relative, markers left out."""
    out: list[str] = []
    for top in ([root / e for e in entries] if entries is not None else [root]):
        if top.is_symlink() or top.is_file():
            out.append(top.relative_to(root).as_posix())
            continue
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow links
            here = Path(dirpath)
            links = [d for d in dirnames if (here / d).is_symlink()]
            out += [(here / f).relative_to(root).as_posix() for f in [*filenames, *links]]
    return sorted(set(out) - {MARKER, PARTIAL_MARKER})


def _written_by_us(root: Path) -> set[str]:
    """The files the markers in `root` say the generator wrote (a marker from before the
    file list existed: the files its settings produce)."""
    ours: set[str] = set()
    for marker in (MARKER, PARTIAL_MARKER):
        doc = _read_marker(root / marker) or {}
        if isinstance(doc.get("paths"), list):
            ours.update(map(str, doc["paths"]))
        elif doc.get("version") == GENERATOR_VERSION and doc.get("name") in DEMOS:
            try:
                ours.update(DEMOS[doc["name"]].plan(doc["seed"], doc["clips_per_speaker"],
                                                      doc["inject_faults"]).paths())
            except (KeyError, TypeError, ValueError):
                pass
    return ours


def foreign_files(root: str | Path) -> list[str]:
    """Files under a demo root that the demo generator did not write (a user's additions)."""
    root = Path(root)
    ours = _written_by_us(root)
    return [f for f in _files_under(root) if f not in ours]


def _prepare_root(name: str, root: Path, owned: tuple[str, ...], settings: dict, planned: list[str]) -> None:
    """Mark the root as in progress and delete the files a previous demo wrote.

    Refuses, deleting nothing, when the folders it writes hold a file it did not
    write, or when there is no demo marker at all (it may be a real corpus).
    """
    present = [e for e in owned if (root / e).exists() or (root / e).is_symlink()]
    ours = (root / MARKER).exists() or (root / PARTIAL_MARKER).exists()
    if present and not ours:
        raise FileExistsError(
            f"{root} holds {present[:3]}{' ...' if len(present) > 3 else ''} but no demo marker "
            f"({MARKER} / {PARTIAL_MARKER}): it may be a real {name} corpus, so the demo will not "
            f"overwrite it. Set corpora.{name}.source to 'local', or move it away and rerun.")
    # An interrupted run of these settings wrote (part of) `planned`: those are ours too.
    written = _written_by_us(root) | set(planned)
    existing = _files_under(root, present)
    foreign = [f for f in existing if f not in written]
    if foreign:
        raise FileExistsError(
            f"{root} holds {len(foreign)} file(s) the demo generator did not write: "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}. Regenerating the demo would "
            f"delete them, so nothing was changed: move them out of {root} and rerun (or set "
            f"corpora.{name}.source: local to use the folder as it is).")
    # Partial marker first: a run interrupted from here on is recognisably ours, file by file.
    write_json_atomic(root / PARTIAL_MARKER, {**settings, "paths": sorted(written)})
    (root / MARKER).unlink(missing_ok=True)
    for rel in existing:
        (root / rel).unlink()
    for e in present:  # the folders emptied above, deepest first
        top = root / e
        if top.is_dir() and not top.is_symlink():
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                if not os.listdir(dirpath):
                    os.rmdir(dirpath)


def generate_corpus(name: str, root: str | Path, clips_per_speaker: int, seed: int,
                    inject_faults: bool = True) -> int:
    """Write demo corpus `name` under `root` in its real layout; return the number of wav files.

    Idempotent: a root whose `.demo-complete.json` records the same settings
    is left untouched. Otherwise the previous demo content is removed and the
    corpus regenerated; the completion marker is written last.
    """
    if name not in DEMO_CORPORA:
        raise ValueError(f"unknown demo corpus {name!r}; known: {list(DEMO_CORPORA)}")
    if clips_per_speaker < 1:
        raise ValueError(f"demo {name}: clips_per_speaker must be >= 1, got {clips_per_speaker}")
    root = Path(root)
    spec = DEMOS[name]
    settings = _settings(name, seed, clips_per_speaker, inject_faults)

    marker = _read_marker(root / MARKER)
    if marker is not None and all(marker.get(k) == v for k, v in settings.items()):
        on_disk = sum(1 for _ in root.rglob("*.wav"))
        if on_disk == marker.get("files"):
            log.info("demo %s: %s already complete (%d files, seed %d), skipping", name, root, on_disk, seed)
            return on_disk
        log.warning("demo %s: %s has %d wav files but its marker records %d; regenerating",
                    name, root, on_disk, marker.get("files"))

    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    plan = spec.plan(seed, clips_per_speaker, inject_faults)
    _prepare_root(name, root, spec.owned, settings, plan.paths())
    sr = spec.sample_rate
    # Voices above 24 kHz are rendered at half rate (content to 12 kHz, where speech
    # energy has died away) and upsampled: half the work for RAVDESS's 48 kHz.
    voice_sr = sr if sr <= 24414 else sr // 2
    rooms: dict[int, np.ndarray] = {}
    lengths: list[int] = []
    audio_s = 0.0
    for i, clip in enumerate(tqdm(plan.clips, desc=f"demo {name}", unit="clip", leave=False, disable=None)):
        rng = rng_for(seed, name, 2, i)
        y = render_speech(rng, clip.style, clip.voice, voice_sr, clip.vowels, clip.pad)
        if voice_sr != sr:
            y = soxr.resample(y, voice_sr, sr, quality="HQ")
        ir = None
        if spec.channel.rt60 > 0:
            if clip.room not in rooms:  # one room per IEMOCAP session, a little different each
                room_rng = rng_for(seed, name, 3, clip.room)
                rooms[clip.room] = room_ir(room_rng, sr, spec.channel.rt60 * room_rng.uniform(0.8, 1.2))
            ir = rooms[clip.room]
        y = apply_channel(y, sr, spec.channel, rng, ir)
        if i in plan.silent:
            y = np.zeros_like(y)
        if i in plan.short:
            mid = len(y) // 2
            y = y[mid - int(SHORT_FAULT_S * sr) // 2: mid + int(SHORT_FAULT_S * sr) // 2]
        path = root / clip.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y, sr, subtype="PCM_16")
        lengths.append(len(y))
        audio_s += len(y) / sr
    for original, copy in plan.duplicates:
        shutil.copyfile(root / plan.clips[original].rel, root / plan.clips[copy].rel)
    plan.extra(root, lengths)

    faults = {"silent": sorted(plan.clips[i].rel for i in plan.silent),
              "short": sorted(plan.clips[i].rel for i in plan.short),
              "duplicates": [[plan.clips[a].rel, plan.clips[b].rel] for a, b in plan.duplicates]}
    n_files = len(plan.clips)
    write_json_atomic(root / MARKER, {**settings, "files": n_files, "sample_rate": sr,
                                       "speakers": len({c.speaker for c in plan.clips}), "faults": faults,
                                       "paths": plan.paths()})
    (root / PARTIAL_MARKER).unlink(missing_ok=True)
    labels = sorted({c.label for c in plan.clips})
    log.info("demo %s: wrote %d clips (%d speakers, %d Hz, %.1f min audio, labels %s) to %s in %.1f s; "
             "faults: %d silent, %d short, %d duplicate pair(s)",
             name, n_files, len({c.speaker for c in plan.clips}), sr, audio_s / 60, " ".join(labels), root,
             time.perf_counter() - started, len(plan.silent), len(plan.short), len(plan.duplicates))
    return n_files
