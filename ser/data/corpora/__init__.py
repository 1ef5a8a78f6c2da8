"""Corpus adapters: each turns one corpus's native layout into `Utterance` rows.

An adapter only *finds* clips: it parses names and label files, reads each
file's header (duration, sample rate) and reports what it skipped and why.
Mapping raw labels to a study's label set and assigning splits happen later
(ser.data.metadata), so one scan serves every study that uses the corpus.

Rows come back with `emotion=""`, `split="unassigned"` and `raw_label` set to
the corpus's own code (RAVDESS "05", CREMA-D "ANG", TESS "ps", IEMOCAP "exc").
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import soundfile as sf
from tqdm import tqdm

from ser.config import CorpusParams
from ser.data.manifest import Utterance
from ser.errors import SerError

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LOGGED = 20  # skipped files listed in the log; the report lists all

__all__ = ["ADAPTERS", "AUDIO_SUFFIXES", "CorpusNotFound", "ScanResult", "ScanBuilder", "scan_corpus",
           "display_name", "is_audio", "is_hidden", "iter_files", "find_nested", "nested_hint"]

# Audio formats the adapters accept (any letter case): what ser.features.audio.load_audio decodes through
# soundfile. Many corpus mirrors ship FLAC (e.g. RAVDESS and EmoDB copies on the Hugging Face Hub).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

# Names people know the corpora by, for messages ("RAVDESS has no frustrated class").
DISPLAY_NAMES = {"ravdess": "RAVDESS", "crema_d": "CREMA-D", "tess": "TESS", "iemocap": "IEMOCAP"}


def display_name(corpus: str) -> str:
    return DISPLAY_NAMES.get(corpus, corpus)


class CorpusNotFound(FileNotFoundError, SerError):
    """A corpus is not where params.yaml says; the message says how to get it."""


@dataclass
class ScanResult:
    """What one adapter found under a corpus root.

    utterances: readable clips with a parseable name (sorted by path).
    skipped:    (path, reason) for files that look like corpus audio but cannot
                be used (malformed name, unreadable header, no label, ...).
    ignored:    counts of files that are deliberately not used (RAVDESS song and
                video files, macOS `._*` files, ...), keyed by what they are.
    """
    utterances: list[Utterance] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def files_found(self) -> int:
        """Audio files considered: used plus skipped (ignored ones excluded)."""
        return len(self.utterances) + len(self.skipped)


class ScanBuilder:
    """Collects one scan's rows, reading headers and enforcing unique ids.

    Every adapter goes through `add`, so the same rules hold for all corpora:
    an unreadable or empty file is skipped with the reason, never a crash, and
    a second file with an id already seen is skipped rather than silently
    overwriting the first.
    """

    def __init__(self, corpus: str):
        self.corpus = corpus
        self._rows: list[Utterance] = []
        self._skipped: list[tuple[str, str]] = []
        self._ignored: Counter[str] = Counter()
        self._ids: dict[str, str] = {}

    def add(self, path: Path, native_id: str, speaker: str, raw_label: str, **fields: str) -> None:
        utt_id = f"{self.corpus}/{native_id}"
        if utt_id in self._ids:
            self.skip(path, f"duplicate id {utt_id!r} (same id as {self._ids[utt_id]})")
            return
        try:
            info = sf.info(str(path))
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            self.skip(path, f"unreadable audio header: {str(exc).strip() or type(exc).__name__}")
            return
        if info.frames <= 0 or info.samplerate <= 0:
            self.skip(path, "empty audio (0 frames)")
            return
        self._ids[utt_id] = str(path)
        self._rows.append(Utterance(
            utt_id=utt_id, corpus=self.corpus, speaker=speaker, path=str(path),
            duration_s=round(info.frames / info.samplerate, 4), sample_rate=int(info.samplerate),
            raw_label=raw_label, **fields))

    def progress(self, items: Sequence[T]) -> Iterable[T]:
        """`items` with a progress bar: reading ~10k headers of a real corpus takes a while."""
        return tqdm(items, desc=f"scan {self.corpus}", unit="file", mininterval=1.0,
                    leave=False, disable=None)  # None: no bar when stderr is not a terminal (CI, logs)

    def skip(self, path: Path | str, reason: str) -> None:
        self._skipped.append((str(path), reason))

    def ignore(self, what: str, n: int = 1) -> None:
        self._ignored[what] += n

    def audio_files(self, folder: Path) -> list[Path]:
        """The audio files (AUDIO_SUFFIXES) directly in `folder`; hidden and other files are counted as ignored."""
        found = []
        for path in iter_files(folder):
            if is_hidden(path):
                self.ignore("hidden files (._*, .*)")
            elif not is_audio(path):
                self.ignore(f"non-audio files ({path.suffix or 'no extension'})")
            else:
                found.append(path)
        return found

    def result(self) -> ScanResult:
        if self._skipped:
            shown = "\n  ".join(f"{p}: {why}" for p, why in sorted(self._skipped)[:MAX_LOGGED])
            more = len(self._skipped) - MAX_LOGGED
            log.warning("%s: skipped %d file(s):\n  %s%s", display_name(self.corpus), len(self._skipped),
                        shown, f"\n  ... and {more} more (see the metadata report)" if more > 0 else "")
        return ScanResult(utterances=sorted(self._rows, key=lambda u: u.path),
                          skipped=sorted(self._skipped), ignored=dict(sorted(self._ignored.items())))


def is_audio(path: Path) -> bool:
    """A .wav, .flac or .ogg file name, in any letter case."""
    return path.suffix.lower() in AUDIO_SUFFIXES


def is_hidden(path: Path) -> bool:
    """macOS archive debris (`._x.wav`, `.DS_Store`, `__MACOSX/`) and other dot-files."""
    return path.name.startswith(".") or path.name == "__MACOSX"


def find_nested(root: Path, matches: Callable[[Path], bool], depth: int = 3) -> Path | None:
    """The first folder below `root` (up to `depth` levels) whose children satisfy `matches`.

    Used only to make a CorpusNotFound message actionable when an archive was
    extracted one level too deep (e.g. TESS's "TESS Toronto emotional speech set data/").
    """
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for folder in frontier:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))
            except OSError:
                continue
            for child in children:
                try:
                    if any(matches(c) for c in child.iterdir()):
                        return child
                except OSError:
                    continue
            nxt.extend(children)
        frontier = nxt
    return None


def nested_hint(root: Path, matches: Callable[[Path], bool], key: str) -> str:
    found = find_nested(root, matches) if root.is_dir() else None
    return f" Found a matching folder at {found}: set {key} to it." if found else ""


def iter_files(folder: Path) -> Iterable[Path]:
    """Files directly in `folder`, sorted, so scans are deterministic."""
    return sorted(p for p in folder.iterdir() if p.is_file())


def scan_corpus(name: str, cfg: CorpusParams, root: Path) -> ScanResult:
    """Scan corpus `name` at `root` with its adapter (`cfg.adapter`, default: the name)."""
    adapter = cfg.adapter or name
    if adapter not in ADAPTERS:
        raise KeyError(f"corpora.{name}: unknown adapter {adapter!r}; known: {sorted(ADAPTERS)} "
                       f"(use adapter: csv for a corpus described by a metadata CSV)")
    log.info("scanning %s at %s (adapter %s)", display_name(name), root, adapter)
    result = ADAPTERS[adapter](name, cfg, Path(root))
    log.info("%s: %d usable clip(s), %d skipped, ignored %s", display_name(name),
             len(result.utterances), len(result.skipped), result.ignored or "nothing")
    return result


def _registry() -> dict[str, Callable[[str, CorpusParams, Path], ScanResult]]:
    # Imported here, not at the top: the adapters import ScanBuilder & co. from
    # this package, so they must be defined before the adapter modules load.
    from ser.data.corpora import crema_d, csv_corpus, iemocap, ravdess, tess
    return {"ravdess": ravdess.scan, "crema_d": crema_d.scan, "tess": tess.scan,
            "iemocap": iemocap.scan, "csv": csv_corpus.scan}


ADAPTERS: dict[str, Callable[[str, CorpusParams, Path], ScanResult]] = _registry()
