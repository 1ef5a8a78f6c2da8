"""download-verify: obtain every corpus a study uses, then verify it.

Sources (`corpora.<name>.source` in params.yaml):
  demo      synthesised offline by `ser.data.demo.generate_corpus`.
  download  fetched from `url`: resumable (HTTP Range on a `.part` file),
            verified against the published md5/sha256, or else against the
            sha256 pinned in the lock file (recorded on first download, meant
            to be committed), then extracted safely. A url ending in `.git` is
            cloned shallowly and its git-lfs audio pulled (CREMA-D).
  local     an existing folder at `path`, or an `archive` extracted into it.

Nothing half-done is left behind: the `.part` file is renamed only after its
checksum matches, and archives are extracted into a temporary sibling folder
that replaces the corpus folder only once extraction completed. A `.part`
whose bytes fail the checksum is deleted (resuming wrong bytes cannot help);
one cut short by the network is kept so that the next run resumes it.

Verification counts the audio files, names what a complete copy would have
and this one lacks, lists duplicate recordings and fingerprints the tree, so
that DVC sees changes to corpora living outside the repository. Report entry
per corpus: source, root, expected_files, found_files, missing, extra (first
50 non-audio files; extra_count has them all), duplicates (groups of paths),
fingerprint (sha1 of relative paths, sizes, mtimes), warnings, checksum.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from ser.config import CorpusParams, Params
from ser.data.corpora import CORPORA, CorpusSource
from ser.errors import SerError
from ser.fsutil import write_json_atomic

__all__ = [
    "CorpusError", "CorpusNotFound", "DownloadError", "IncompleteDownload", "ChecksumMismatch",
    "UnsafeArchive", "CorpusSource", "DEFAULT_SOURCES", "ChecksumLock", "fetch_and_verify",
    "prepare_corpus", "download_file", "safe_extract", "verify_corpus", "write_json_atomic",
]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
MARKER = ".ser-source.json"  # written into a corpus folder this module filled
CONNECT_TIMEOUT_S = 10.0
CHUNK = 1 << 20
MAX_LISTED_EXTRA = 50  # the report lists this many non-audio files; `extra_count` has them all
_LFS_POINTER = b"version https://git-lfs"
_BIG = 64 << 20  # files larger than this get a hashing progress bar


class CorpusError(RuntimeError, SerError):
    """A corpus cannot be obtained or is not what it should be; the message says what to do."""


class CorpusNotFound(CorpusError):
    """A local corpus folder or archive is missing or holds no audio."""


class DownloadError(CorpusError):
    """Fetching a url failed (no network, HTTP error, server misbehaving)."""


class IncompleteDownload(DownloadError):
    """The transfer stopped early; the `.part` file is kept and the next run resumes it."""


class ChecksumMismatch(CorpusError):
    """Downloaded or local bytes differ from the published or pinned checksum."""


class UnsafeArchive(CorpusError):
    """An archive member would land outside the target folder."""


# --------------------------------------------------------------------------- what is known
# adapter -> where a public corpus comes from and what a complete copy holds (each corpus's file:
# ser.data.corpora.<name>).
DEFAULT_SOURCES: dict[str, CorpusSource] = {name: c.source for name, c in CORPORA.items() if c.source}


# --------------------------------------------------------------------------- small helpers
def _hash_file(path: Path, *algorithms: str) -> dict[str, str]:
    """Hex digests of one file, read once."""
    hashers = {a: hashlib.new(a, usedforsecurity=False) for a in algorithms}
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"hash {path.name}",
                                     disable=True if size < _BIG else None, leave=False) as bar:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            bar.update(len(chunk))
    return {a: h.hexdigest() for a, h in hashers.items()}


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _demo_markers() -> set[str]:
    # ser.data.demo is imported lazily: profiles with real corpora do not need it.
    try:
        from ser.data.demo import MARKER as DONE, PARTIAL_MARKER as PARTIAL
    except ImportError:
        return set()
    return {DONE, PARTIAL}


def _is_demo(root: Path) -> bool:
    """Whether `root` holds a synthetic demo corpus (which a real one may replace)."""
    return any((root / m).exists() for m in _demo_markers())


def _check_demo_replaceable(name: str, root: Path) -> None:
    """A demo root is replaced whole by a real corpus: refuse if it holds files the demo did not write."""
    if not _is_demo(root):
        return
    from ser.data.demo import foreign_files

    foreign = foreign_files(root)
    if foreign:
        raise CorpusError(f"{name}: {root} holds the demo corpus plus {len(foreign)} file(s) it did not write "
                          f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); replacing it with "
                          f"the real corpus would delete them. Move them out of {root} and run again.")


def _has_files(root: Path) -> bool:
    return root.is_dir() and any(p.name != MARKER for p in root.iterdir())


def _read_marker(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _kind(name: str, cfg: CorpusParams) -> str:
    return cfg.adapter or name


def _manual_hint(name: str, cfg: CorpusParams) -> str:
    """How to get a corpus by hand into the place the pipeline reads it from."""
    known = DEFAULT_SOURCES.get(_kind(name, cfg))
    what = known.where if known else (cfg.url or "the corpus")
    layout = f" ({known.layout})" if known else ""
    if known and known.licensed:
        return (f"{known.title} is licensed: request it from {what}. Then set corpora.{name}.path in "
                f"params.yaml to the folder holding it{layout}, or corpora.{name}.archive to the "
                f"archive you received (with source: local).")
    return (f"Download {what} yourself. Then either extract it so that {cfg.path} holds the corpus"
            f"{layout} and set corpora.{name}.source: local, or keep the archive and set "
            f"corpora.{name}: {{source: local, archive: <the downloaded file>, path: {cfg.path}}}; "
            f"`source: local` can point `path` at an already-downloaded copy anywhere on disk.")


# --------------------------------------------------------------------------- lock file
class ChecksumLock:
    """sha256 pins (or git commits) of downloads that have no published checksum.

    Keyed by url: a different url is a different source and gets its own pin;
    the same url serving different bytes is an error. Commit the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sources: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.sources = dict(data["sources"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CorpusError(f"{self.path}: not a checksum lock file ({exc}); fix it or delete "
                                  f"it to pin the checksums again") from None

    def get(self, url: str) -> Optional[dict]:
        return self.sources.get(url)

    def record(self, url: str, entry: dict) -> None:
        self.sources[url] = {**entry, "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        write_json_atomic(self.path, {
            "_comment": "Checksums pinned on first download (ser.data.download). Commit this file: later "
                        "downloads must match. Delete an entry to accept a new version of that source.",
            "sources": self.sources})
        log.info("pinned %s in %s", url, self.path)


# --------------------------------------------------------------------------- network
def _reachable_host(url: str) -> tuple[str, int]:
    """The host a request to `url` connects to first (the proxy, when one applies)."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and parts.hostname and not urllib.request.proxy_bypass(parts.hostname):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        raise DownloadError(f"{url}: not a url with a host name")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str, port: int, timeout: float) -> None:
    """Resolve a host name in a helper thread: getaddrinfo has no timeout of its own,
    and a silent resolver must not hang the pipeline."""
    outcome: dict[str, BaseException] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise DownloadError(f"no answer resolving {host} within {timeout:.0f} s (no network?)")
    if "error" in outcome:
        raise DownloadError(f"cannot resolve {host}: {outcome['error']} (no network?)")


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a Content-Range header; None where absent or '*'."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _fetch_into(url: str, part: Path, timeout: float) -> None:
    """Bring `part` up to the whole file at `url`, resuming from its current size."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ser-pipeline (+download-verify)"}
    if have:
        headers["Range"] = f"bytes={have}-"
    _resolve(*_reachable_host(url), timeout)
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            _first, total = _content_range(exc.headers.get("Content-Range"))
            if total == have:
                return  # the previous run got every byte but stopped before verifying
            part.unlink()
            raise IncompleteDownload(f"{url}: server refused to resume {part.name}; restarting") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"cannot connect to {url}: {reason}") from None

    with resp:
        first, total = _content_range(resp.headers.get("Content-Range"))
        if resp.status == 206 and first != have:
            part.unlink(missing_ok=True)
            raise IncompleteDownload(f"{url}: server sent bytes from {first}, not {have}; restarting")
        if resp.status == 206:
            mode = "ab"
        else:
            if have:
                log.info("%s: server ignored the resume request; restarting from byte 0", url)
            have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         desc=f"download {part.name[:-5]}", disable=None) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
                    raise IncompleteDownload(f"{url}: transfer interrupted ({exc!r}); {part} kept, "
                                             f"run again to resume") from None
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise IncompleteDownload(f"{url}: connection closed after {size} of {total} bytes; {part} "
                                 f"kept, run again to resume")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{url}: received {size} bytes but the server announced {total}; "
                            f"partial file removed, run again")


def download_file(url: str, dest: Path, *, sha256: Optional[str] = None, md5: Optional[str] = None,
                  checksum_origin: str = "the expected checksum", timeout: float = CONNECT_TIMEOUT_S,
                  attempts: int = 3) -> dict[str, str]:
    """Download `url` to `dest` via `dest.part`; return its {"sha256", "md5"} digests.

    An interrupted transfer is resumed (up to `attempts` times in this call, and
    by later calls from the kept `.part`). Connection failures are not retried:
    without a network the answer comes within `timeout` seconds. `dest` appears
    only once the bytes match `sha256`/`md5` (when given).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        log.info("%s already downloaded; checking it", dest)
        digests = _hash_file(dest, "sha256", "md5")
        _check_digests(dest, digests, sha256, md5, checksum_origin, url,
                       on_mismatch=f"delete {dest} to download it again")
        return digests
    for attempt in range(1, attempts + 1):
        try:
            _fetch_into(url, part, timeout)
            break
        except IncompleteDownload as exc:
            if attempt == attempts:
                raise
            log.warning("%s (attempt %d of %d); resuming", exc, attempt, attempts)
    digests = _hash_file(part, "sha256", "md5")
    try:
        _check_digests(part, digests, sha256, md5, checksum_origin, url,
                       on_mismatch="the partial download was removed")
    except ChecksumMismatch:
        part.unlink()  # wrong bytes: resuming them can never succeed
        raise
    os.replace(part, dest)
    log.info("downloaded %s -> %s (sha256 %s)", url, dest, digests["sha256"])
    return digests


def _check_digests(path: Path, got: dict[str, str], sha256: Optional[str], md5: Optional[str],
                   origin: str, url: str, on_mismatch: str) -> None:
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want and got[algo] != want.lower():
            raise ChecksumMismatch(
                f"{path.name} from {url}: {algo} {got[algo]} does not match {want} ({origin}); "
                f"{on_mismatch}. If the source was legitimately updated, update {origin}.")


# --------------------------------------------------------------------------- archives
def _member_problem(name: str) -> Optional[str]:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[\\/]+", name):
        return "has a '..' path component"
    return None


def _link_escapes(member: str, link: str, relative_to_member: bool) -> bool:
    """Whether a link target leaves the extraction folder (symlinks resolve from the
    member's folder, tar hardlinks from the archive root)."""
    if link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
        return True
    base = os.path.dirname(member) if relative_to_member else ""
    resolved = os.path.normpath(os.path.join(base, link.replace("\\", "/")))
    return resolved == ".." or resolved.startswith("../")


def _zip_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        links: dict[str, str] = {}
        for info in infos:  # check every member before writing a single byte
            problem = _member_problem(info.filename)
            if problem is None and _zip_symlink(info):
                links[info.filename] = zf.read(info).decode("utf-8", "replace")
                if _link_escapes(info.filename, links[info.filename], relative_to_member=True):
                    problem = f"is a symlink to {links[info.filename]!r}, outside the target"
            if problem:
                raise UnsafeArchive(f"{archive}: member {info.filename!r} {problem}; refusing to "
                                    f"extract anything from this archive")
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=None, leave=False):
            if info.filename not in links:
                zf.extract(info, dest)
        # Links come last, so no file is written through one, and each is checked where it
        # really points once the links before it exist (a chain of inside-looking links
        # such as `s -> .`, `s/s/up -> ../..` can still escape).
        inside = os.path.realpath(dest)
        for name, target in links.items():
            link = dest / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
            if os.path.commonpath([inside, os.path.realpath(link)]) != inside:
                raise UnsafeArchive(f"{archive}: member {name!r} is a symlink leading outside the "
                                    f"target; refusing to extract anything from this archive")


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            problem = _member_problem(m.name)
            if problem is None and m.issym() and _link_escapes(m.name, m.linkname, True):
                problem = f"is a symlink to {m.linkname!r}, outside the target"
            if problem is None and m.islnk() and (_member_problem(m.linkname)
                                                  or _link_escapes(m.name, m.linkname, False)):
                problem = f"is a hard link to {m.linkname!r}, outside the target"
            if problem is None and not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                problem = "is a device or fifo, not corpus data"
            if problem:
                raise UnsafeArchive(f"{archive}: member {m.name!r} {problem}; refusing to extract "
                                    f"anything from this archive")
        for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=None, leave=False):
            try:
                # the stdlib's checks as a second line: they resolve links already on disk
                tf.extract(m, dest, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeArchive(f"{archive}: member {m.name!r} refused ({exc}); refusing to "
                                    f"extract anything from this archive") from None


def _content_root(tmp: Path, kind: Optional[str]) -> Path:
    """The extracted folder that holds the corpus: archives often wrap it in top folders
    (`CREMA-D-master/`, `IEMOCAP_full_release/`); for known corpora these are unwrapped."""
    content = tmp
    top = CORPORA[kind].top_folder if kind in CORPORA else None
    while top is not None:
        children = [p for p in content.iterdir() if p.name != MARKER]
        if (len(children) != 1 or not children[0].is_dir() or children[0].is_symlink()
                or re.fullmatch(top, children[0].name)):
            break
        content = children[0]
        log.info("the archive wraps the corpus in %s/; using its contents", content.relative_to(tmp))
    return content


def _swap_into_place(content: Path, target: Path) -> None:
    """Replace `target` with the folder `content` (renames only, same filesystem)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    try:
        os.replace(content, target)
    except OSError:
        if old.exists():
            os.replace(old, target)
        raise
    _rmtree(old)


def _staging_dir(target: Path, what: str) -> Path:
    tmp = target.with_name(f".{target.name}.{what}-{os.getpid()}")
    for stale in target.parent.glob(f".{target.name}.{what}-*"):
        log.info("removing %s left by an interrupted run", stale)
        _rmtree(stale)
    tmp.mkdir(parents=True)
    return tmp


def safe_extract(archive: Path, target: Path, *, kind: Optional[str] = None,
                 marker: Optional[dict] = None) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) archive so that it becomes `target`.

    Members with absolute paths, `..` components, links leading outside, or
    device files are refused before anything is written. Extraction happens in
    a temporary sibling folder that replaces `target` only when complete, so a
    failure leaves `target` as it was. `marker` (JSON) is stored in the result.
    """
    archive, target = Path(archive), Path(target)
    if target.is_symlink():
        target = target.resolve()  # extract next to the real folder, on its filesystem
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_dir(target, "extract")
    try:
        try:
            if zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp)
            elif tarfile.is_tarfile(archive):
                _extract_tar(archive, tmp)
            else:
                raise CorpusError(f"{archive}: not a zip or tar archive (or truncated); nothing was "
                                  f"extracted. Replace it with a complete copy (a download: delete "
                                  f"it and run again)")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise CorpusError(f"{archive}: truncated or corrupt archive ({exc}); nothing was extracted. "
                              f"Replace it with a complete copy (a download: delete it and run "
                              f"again)") from None
        content = _content_root(tmp, kind)
        if marker is not None:
            write_json_atomic(content / MARKER, marker)
        _swap_into_place(content, target)
    finally:
        _rmtree(tmp)
    log.info("extracted %s -> %s", archive, target)


# --------------------------------------------------------------------------- layouts
# kind -> what a copy under root lacks, given its audio files (paths relative to root)
LAYOUTS: dict[str, Callable[[Path, list[str]], list[str]]] = {
    name: c.missing for name, c in CORPORA.items() if c.missing is not None}


# --------------------------------------------------------------------------- verification
def _scan(root: Path) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(audio, other) files under root as (relative path, size, mtime_ns).

    Hidden folders (.git, .dvc) are skipped; symlinked folders are followed once.
    """
    audio, other = [], []
    skip = {MARKER} | _demo_markers()  # bookkeeping of the tools that wrote the corpus
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in filenames:
            if fname in skip:
                continue
            path = os.path.join(dirpath, fname)
            try:
                st = os.stat(path)
            except OSError:  # a dangling symlink
                st = os.lstat(path)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            # AppleDouble "._x.wav" files are metadata, not audio
            is_audio = fname.lower().endswith(AUDIO_SUFFIXES) and not fname.startswith(".")
            (audio if is_audio else other).append((rel, st.st_size, st.st_mtime_ns))
    return sorted(audio), sorted(other)


def _fingerprint(files: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha1()
    for rel, size, mtime_ns in sorted(files):
        h.update(f"{rel}\t{size}\t{mtime_ns}\n".encode())
    return h.hexdigest()


def _duplicates(root: Path, audio: list[tuple[str, int, int]]) -> list[list[str]]:
    """Groups of audio files with identical content; only equal-sized files are hashed."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for rel, size, _m in audio:
        by_size[size].append(rel)
    candidates = [(rel, size) for size, rels in by_size.items() if len(rels) > 1 for rel in rels]
    by_hash: dict[tuple[int, str], list[str]] = defaultdict(list)
    total = sum(size for _rel, size in candidates)
    with tqdm(total=total, unit="B", unit_scale=True, desc="duplicates", leave=False,
              disable=True if total < _BIG else None) as bar:
        for rel, size in candidates:
            h = hashlib.sha1()
            with open(root / rel, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            by_hash[(size, h.hexdigest())].append(rel)
            bar.update(size)
    return sorted(sorted(g) for g in by_hash.values() if len(g) > 1)


def _lfs_pointers(root: Path, audio: list[tuple[str, int, int]]) -> list[str]:
    pointers = []
    for rel, size, _m in audio:
        if size < 1024:
            with open(root / rel, "rb") as f:
                if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
                    pointers.append(rel)
    return pointers


def verify_corpus(name: str, root: Path, expected: Optional[int], *, kind: Optional[str] = None,
                  hint: str = "") -> dict:
    """Count, check and fingerprint the audio under `root`.

    Raises CorpusNotFound when there is no audio or none in the corpus layout, and
    CorpusError for git-lfs pointer files in place of audio; other deviations
    (count, missing parts, duplicates) are reported and logged as warnings.
    """
    root = Path(root)
    kind = kind or name
    if not root.is_dir():
        raise CorpusNotFound(f"{name}: {root} does not exist. {hint}".strip())
    audio, other = _scan(root)
    if not audio:
        raise CorpusNotFound(f"{name}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}. "
                             f"{hint}".strip())
    pointers = _lfs_pointers(root, audio)
    if pointers:
        raise CorpusError(f"{name}: {len(pointers)} audio files under {root} are git-lfs pointers, not "
                          f"audio (e.g. {pointers[0]}): run `git lfs pull` in that clone (git-lfs must "
                          f"be installed), or download the corpus again")
    rels = [rel for rel, _s, _m in audio]
    missing: list[str] = []
    if kind in LAYOUTS:
        missing = LAYOUTS[kind](root, rels)
        layout = DEFAULT_SOURCES[kind].layout if kind in DEFAULT_SOURCES else kind
        if missing == LAYOUTS[kind](root, []):  # none of the audio is where the layout wants it
            raise CorpusNotFound(f"{name}: {root} holds {len(audio)} audio files but none in the "
                                 f"expected layout ({layout}); does the path point at the corpus "
                                 f"folder itself? {hint}".strip())
    duplicates = _duplicates(root, audio)
    warnings = []
    if expected is not None and expected != len(audio):
        warnings.append(f"expected {expected} audio files, found {len(audio)}")
    if missing:
        warnings.append(f"missing {len(missing)}: {', '.join(missing[:10])}"
                        + (" ..." if len(missing) > 10 else ""))
    if duplicates:
        warnings.append(f"{len(duplicates)} group(s) of identical audio files, e.g. {duplicates[0]}")
    for w in warnings:
        log.warning("%s: %s", name, w)
    entry = {
        "root": str(root),
        "expected_files": expected,
        "found_files": len(audio),
        "missing": missing,
        "extra": [rel for rel, _s, _m in other[:MAX_LISTED_EXTRA]],
        "extra_count": len(other),
        "duplicates": duplicates,
        "fingerprint": _fingerprint(audio + other),
        "warnings": warnings,
    }
    log.info("%s: %d audio files (expected %s), %d other files, %d duplicate groups, fingerprint %s",
             name, len(audio), expected, len(other), len(duplicates), entry["fingerprint"][:12])
    return entry


# --------------------------------------------------------------------------- sources
def _prepare_demo(name: str, cfg: CorpusParams, params: Params) -> int:
    # Imported here: the demo generator is optional for real-corpus profiles.
    from ser.data.demo import generate_corpus

    if name not in params.demo.clips_per_speaker:
        raise CorpusError(f"corpora.{name} has source: demo but demo.clips_per_speaker has no "
                          f"{name!r} entry (known: {sorted(params.demo.clips_per_speaker)})")
    try:
        return generate_corpus(name, cfg.path, params.demo.clips_per_speaker[name], params.demo.seed)
    except (FileExistsError, ValueError) as exc:  # e.g. a real corpus already at that path
        raise CorpusError(f"{name}: {exc}") from None


def _archive_name(url: str) -> str:
    base = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if re.search(r"\.(zip|tar|tgz|tar\.(gz|bz2|xz))$", base, re.I) and "/" not in base:
        return base
    return "archive"  # the format is detected from the content, not the name


def _prepare_download(name: str, cfg: CorpusParams, lock: ChecksumLock, downloads: Path,
                      timeout: float) -> Optional[dict]:
    kind = _kind(name, cfg)
    known = DEFAULT_SOURCES.get(kind)
    if known and known.licensed:
        raise CorpusError(f"corpora.{name}: source 'download' is not offered for {known.title}. "
                          f"{_manual_hint(name, cfg)}")
    assert cfg.url  # CorpusParams enforces it
    root = Path(cfg.path)
    pinned = lock.get(cfg.url) or {}
    published = bool(cfg.sha256 or cfg.md5)
    want = {"sha256": cfg.sha256 or (None if published else pinned.get("sha256")), "md5": cfg.md5,
            "git_commit": pinned.get("git_commit")}
    marker = _read_marker(root)
    held = (marker or {}).get("checksum") or {}
    if marker and marker.get("url") == cfg.url and all(not w or held.get(k) == w.lower()
                                                       for k, w in want.items()):
        log.info("%s: %s already holds %s; not downloading again", name, root, cfg.url)
        return held
    if _has_files(root) and not marker and not _is_demo(root):
        log.warning("%s: %s already holds files this stage did not put there; verifying them as they "
                    "are (set corpora.%s.source: local to say so)", name, root, name)
        return None
    _check_demo_replaceable(name, root)  # before the download, not after it
    if cfg.url.endswith(".git"):
        return _prepare_git(name, cfg, root, lock, timeout)

    origin = f"corpora.{name}.sha256/md5 in params.yaml" if published else f"the pin in {lock.path}"
    dest = downloads / name / _archive_name(cfg.url)
    try:
        digests = download_file(cfg.url, dest, sha256=want["sha256"], md5=cfg.md5, checksum_origin=origin,
                                timeout=timeout)
    except DownloadError as exc:
        raise DownloadError(f"{name}: {exc}\n{_manual_hint(name, cfg)}") from None
    verified = "published" if published else ("lock" if pinned else "lock (pinned now)")
    checksum = {"sha256": digests["sha256"], "md5": digests["md5"], "verified_against": verified}
    safe_extract(dest, root, kind=kind, marker={"source": "download", "url": cfg.url, "checksum": checksum})
    if not pinned and not published:
        # pinned only once the whole corpus is in place: a failed run pins nothing
        lock.record(cfg.url, {"corpus": name, "sha256": digests["sha256"], "size": dest.stat().st_size})
    return checksum


def _git(*args: str, cwd: Optional[Path] = None) -> str:
    env = {**os.environ, "GIT_LFS_SKIP_SMUDGE": "1", "GIT_TERMINAL_PROMPT": "0"}
    # a stalled transfer aborts instead of hanging: < 1 kB/s for 60 s
    cmd = ["git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=60", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise DownloadError(f"`git {' '.join(args)}` failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def _require_git_lfs(name: str, cfg: CorpusParams) -> None:
    if shutil.which("git") is None:
        raise CorpusError(f"{name}: git is not installed; it is needed to clone {cfg.url}. "
                          f"{_manual_hint(name, cfg)}")
    probe = subprocess.run(["git", "lfs", "version"], capture_output=True, text=True)
    if probe.returncode:
        raise CorpusError(f"{name}: git-lfs is not installed, and {cfg.url} keeps its audio in git-lfs. "
                          f"Install it (https://git-lfs.com; `apt install git-lfs` or `brew install "
                          f"git-lfs`), run `git lfs install`, then run again; or set corpora.{name}.url "
                          f"to an archive mirror. {_manual_hint(name, cfg)}")


def _prepare_git(name: str, cfg: CorpusParams, root: Path, lock: ChecksumLock, timeout: float) -> dict:
    """Shallow clone + `git lfs pull` of only the audio folder; the commit is pinned in the lock."""
    assert cfg.url
    _require_git_lfs(name, cfg)
    known = DEFAULT_SOURCES.get(_kind(name, cfg))
    include = known.git_include if known else None
    if cfg.url.startswith(("http://", "https://")):  # fail fast offline: git's own connect can take minutes
        try:
            host, port = _reachable_host(cfg.url)
            _resolve(host, port, timeout)
            socket.create_connection((host, port), timeout=timeout).close()
        except (DownloadError, OSError) as exc:
            raise DownloadError(f"{name}: cannot reach {cfg.url}: {exc}\n{_manual_hint(name, cfg)}") from None
    target = root.resolve() if root.is_symlink() else root
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_dir(target, "clone")
    pinned = lock.get(cfg.url)
    try:
        clone = ["clone", "--depth", "1", "--quiet"]
        if include:
            clone += ["--filter=blob:none", "--sparse"]
        _git(*clone, "--", cfg.url, str(tmp / "repo"))  # "--": a url starting with "-" is not an option
        repo = tmp / "repo"
        if include:
            _git("sparse-checkout", "set", include, cwd=repo)
        commit = _git("rev-parse", "HEAD", cwd=repo)
        if pinned and pinned.get("git_commit") != commit:
            if not re.fullmatch(r"[0-9a-f]{7,64}", str(pinned["git_commit"])):  # never an option to git
                raise CorpusError(f"{name}: {lock.path} pins git_commit {pinned['git_commit']!r}, which is "
                                  "not a commit hash; fix or remove that entry")
            log.info("%s: checking out the pinned commit %s (upstream is at %s)", name,
                     pinned["git_commit"], commit)
            _git("fetch", "--depth", "1", "--quiet", "origin", pinned["git_commit"], cwd=repo)
            _git("checkout", "--quiet", pinned["git_commit"], cwd=repo)
            commit = pinned["git_commit"]
        log.info("%s: pulling git-lfs audio (%s) of %s", name, include or "everything", cfg.url)
        _git("lfs", "pull", *(["--include", f"{include}/**"] if include else []), cwd=repo)
        _rmtree(repo / ".git")  # the lfs objects would double the disk space
        checksum = {"git_commit": commit, "verified_against": "lock" if pinned else "lock (pinned now)"}
        write_json_atomic(repo / MARKER, {"source": "download", "url": cfg.url, "checksum": checksum})
        _swap_into_place(repo, target)
    finally:
        _rmtree(tmp)
    if not pinned:
        lock.record(cfg.url, {"corpus": name, "git_commit": commit})
    return checksum


def _prepare_local(name: str, cfg: CorpusParams) -> Optional[dict]:
    root = Path(cfg.path)
    if not cfg.archive:
        if not root.is_dir():
            raise CorpusNotFound(f"{name}: corpus folder {root} (corpora.{name}.path) does not exist. "
                                 f"{_manual_hint(name, cfg)}")
        if _is_demo(root):
            raise CorpusError(f"{name}: {root} holds the synthetic demo corpus, not a real copy. Point "
                              f"corpora.{name}.path at the real corpus, or set source: demo. "
                              f"{_manual_hint(name, cfg)}")
        return None
    archive = Path(cfg.archive)
    if not archive.is_file():
        raise CorpusNotFound(f"{name}: archive {archive} (corpora.{name}.archive) does not exist. "
                             f"{_manual_hint(name, cfg)}")
    st = archive.stat()
    identity = {"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    marker = _read_marker(root)
    if marker and marker.get("archive") == identity:
        log.info("%s: %s already holds %s; not extracting again", name, root, archive)
        return marker.get("checksum")
    if _has_files(root) and not marker and not _is_demo(root):
        log.warning("%s: %s already holds files not extracted by this stage; leaving them as they are "
                    "(empty the folder to extract %s)", name, root, archive)
        return None
    _check_demo_replaceable(name, root)
    digests = _hash_file(archive, "sha256", "md5")
    _check_digests(archive, digests, cfg.sha256, cfg.md5, f"corpora.{name}.sha256/md5 in params.yaml",
                   str(archive), on_mismatch="nothing was extracted")
    checksum = {"sha256": digests["sha256"], "md5": digests["md5"],
                "verified_against": "published" if (cfg.sha256 or cfg.md5) else None}
    safe_extract(archive, root, kind=_kind(name, cfg),
                 marker={"source": "local", "archive": identity, "checksum": checksum})
    return checksum


def prepare_corpus(name: str, cfg: CorpusParams, params: Params, lock: ChecksumLock, *,
                   downloads_dir: Path, timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """Obtain one corpus as configured and return its verification report entry."""
    kind = _kind(name, cfg)
    log.info("%s: source %s, path %s", name, cfg.source, cfg.path)
    checksum: Optional[dict] = None
    demo_count: Optional[int] = None
    if cfg.source == "demo":
        demo_count = _prepare_demo(name, cfg, params)
    elif cfg.source == "download":
        checksum = _prepare_download(name, cfg, lock, Path(downloads_dir), timeout)
    else:
        checksum = _prepare_local(name, cfg)
    known = DEFAULT_SOURCES.get(kind)
    if cfg.expected_files is not None:
        expected: Optional[int] = cfg.expected_files
    elif cfg.source == "demo":
        expected = demo_count
    else:
        expected = known.expected_files if known else None
    hint = "" if cfg.source == "demo" else _manual_hint(name, cfg)
    entry = verify_corpus(name, Path(cfg.path), expected, kind=kind, hint=hint)
    entry["root"] = cfg.path  # as configured: relative paths keep the report portable
    return {"source": cfg.source, **entry, "checksum": checksum}


def fetch_and_verify(params: Params, lock_path: Path, *, downloads_dir: Path = Path("data/raw/.downloads"),
                     timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """Obtain and verify every corpus used by some study; return the JSON report.

    Stops at the first failing corpus; each step is atomic, so nothing half-done
    is left behind and the next run picks up where this one stopped.
    """
    used = sorted({c for study in params.studies.values() for c in study.corpora})
    skipped = sorted(set(params.corpora) - set(used))
    if skipped:
        log.info("not used by any study, skipped: %s", ", ".join(skipped))
    lock = ChecksumLock(Path(lock_path))
    report: dict[str, dict] = {"corpora": {}}
    for name in used:
        report["corpora"][name] = prepare_corpus(name, params.corpora[name], params, lock,
                                                 downloads_dir=downloads_dir, timeout=timeout)
    return report
