"""What every corpus file (ser.data.corpora.<name>) is made of.

`Corpus` is everything the pipeline knows about one corpus: its display name,
its label map (raw codes -> canonical emotion names, as data), its adapter
(`scan`: native layout -> `Utterance` rows), where a copy comes from and what
a complete copy holds (`CorpusSource`, `top_folder`, `missing`), and its
synthetic demo (`demo`, a ser.data.synth.DemoSpec). The adapter helpers
(`ScanBuilder`, `ScanResult`, ...) are here too.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, TypeVar

import soundfile as sf
from tqdm import tqdm

from ser.config import CorpusParams
from ser.data.manifest import Utterance
from ser.data.synth import DemoSpec
from ser.errors import SerError

T = TypeVar("T")

__all__ = ["AUDIO_SUFFIXES", "Corpus", "CorpusSource", "CorpusNotFound", "ScanResult", "ScanBuilder", "Scan",
           "Missing", "is_audio", "is_hidden", "iter_files", "find_nested", "nested_hint", "to_canonical"]

# Audio formats the adapters accept (any letter case): what ser.features.audio.load_audio decodes through
# soundfile. Many corpus mirrors ship FLAC (e.g. RAVDESS and EmoDB copies on the Hugging Face Hub).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


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


def to_canonical(raw: str, table: Mapping[str, str]) -> str:
    """Canonical name for `raw`; identity when the table is empty (generic corpora)."""
    if not table:
        return raw.strip().lower()
    return table.get(raw, "")


# --------------------------------------------------------------------------- the corpus record
@dataclass(frozen=True)
class CorpusSource:
    """Where a public corpus comes from and what a complete copy holds."""
    title: str
    url: Optional[str]  # default for `source: download`; None: not downloadable
    expected_files: Optional[int]  # audio files in a complete copy
    where: str  # for people: what to fetch, from where
    layout: str  # what the corpus folder holds
    git_include: Optional[str] = None  # git sources: the only folder checked out and pulled
    licensed: bool = False  # redistribution forbidden: no download offered


Scan = Callable[[str, CorpusParams, Path], ScanResult]  # (params key, its params, root) -> what is there
Missing = Callable[[Path, list[str]], list[str]]  # (root, audio paths relative to it) -> what a copy lacks


@dataclass(frozen=True)
class Corpus:
    """Everything the pipeline knows about one corpus (see the module docstring).

    name: the adapter key (params.yaml `corpora.<key>.adapter`, default the key itself).
    labels: raw code -> canonical emotion ("" drops it); empty: the codes are canonical already.
    top_folder: regex of the entries directly under a complete copy's root (an archive's
    wrapper folders around them are unwrapped).
    """
    name: str
    display: str
    scan: Scan
    labels: Mapping[str, str] = field(default_factory=dict)
    source: Optional[CorpusSource] = None
    top_folder: Optional[str] = None
    missing: Optional[Missing] = None
    demo: Optional[DemoSpec] = None
