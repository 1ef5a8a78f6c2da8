"""download-verify: resumable verified downloads, safe extraction, corpus verification.

Downloads run against a real HTTP server on 127.0.0.1 (ephemeral port) that
can cut transfers short and ignore Range requests.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from ser.config import Params, parse_params
from ser.data.download import (ChecksumMismatch, CorpusError, CorpusNotFound, DownloadError, IncompleteDownload,
                          UnsafeArchive, download_file, fetch_and_verify, safe_extract, verify_corpus)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures
def wav_bytes(seed: int) -> bytes:
    """A distinct 20 ms 16 kHz clip per seed."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal(320)).astype("float32"), 16000, format="WAV")
    return buf.getvalue()


def ravdess_files(actors: range = range(1, 25)) -> dict[str, bytes]:
    """One speech clip per actor, in RAVDESS naming, plus a README."""
    files = {f"Actor_{a:02d}/03-01-05-01-01-01-{a:02d}.wav": wav_bytes(a) for a in actors}
    files["README.txt"] = b"synthetic"
    return files


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    """files: name -> bytes; links: name -> (tarfile.SYMTYPE | LNKTYPE, target)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def make_params(corpora: dict[str, dict], clips_per_speaker: dict[str, int] | None = None) -> Params:
    """The demo profile with its corpora replaced and one study using all of them."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["corpora"] = corpora
    if clips_per_speaker:
        data["demo"]["clips_per_speaker"] = clips_per_speaker
    data["studies"] = {"s": {"labels": ["angry", "sad"], "corpora": list(corpora)}}
    data["splits"] = {"s": {name: {"protocol": "all_test"} for name in corpora}}
    data["models"], data["fusions"] = {}, {}
    return parse_params(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    payload = b""
    honour_range = True
    truncate_next = 0  # this many responses stop after half their body
    requests: list


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold a server thread

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv: _Server = self.server  # type: ignore[assignment]
        data, rng = srv.payload, self.headers.get("Range")
        srv.requests.append(rng)
        start = 0
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.truncate_next:
            srv.truncate_next -= 1
            body = body[: len(body) // 2]  # then the connection closes (HTTP/1.0)
        self.wfile.write(body)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(120, srv.shutdown)  # stops itself even if teardown never runs
    watchdog.daemon = True
    watchdog.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/Audio_Speech_Actors_01-24.zip"
    yield srv
    watchdog.cancel()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings or partial files a failed run might leave."""
    pattern = re.compile(r"\.(extract|clone|old)-\d+$|\.part$")
    return sorted(p.name for p in folder.rglob("*") if pattern.search(p.name))


# --------------------------------------------------------------------------- downloads
def test_download_extract_and_verify(server, tmp_path):
    payload = make_zip(ravdess_files())
    server.payload = payload
    root = tmp_path / "raw" / "ravdess"
    params = make_params({"ravdess": {"source": "download", "path": str(root), "url": server.url,
                                      "sha256": hashlib.sha256(payload).hexdigest(), "expected_files": 24}})
    downloads = tmp_path / "raw" / ".downloads"
    report = fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=downloads)

    entry = report["corpora"]["ravdess"]
    assert entry["source"] == "download" and entry["root"] == str(root)
    assert (entry["expected_files"], entry["found_files"]) == (24, 24)
    assert entry["missing"] == [] and entry["duplicates"] == []
    assert entry["extra"] == ["README.txt"] and entry["extra_count"] == 1
    assert re.fullmatch(r"[0-9a-f]{40}", entry["fingerprint"])
    assert entry["checksum"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert entry["checksum"]["verified_against"] == "published"
    assert (root / "Actor_07" / "03-01-05-01-01-01-07.wav").read_bytes() == wav_bytes(7)
    assert (downloads / "ravdess" / "Audio_Speech_Actors_01-24.zip").read_bytes() == payload
    assert not (tmp_path / "lock.json").exists()  # a published checksum needs no pin
    assert leftovers(tmp_path) == []
    json.dumps(report)

    # A second run finds the corpus in place: no request, same fingerprint.
    n_requests = len(server.requests)
    again = fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=downloads)
    assert len(server.requests) == n_requests
    assert again["corpora"]["ravdess"]["fingerprint"] == entry["fingerprint"]


def test_checksum_mismatch_leaves_nothing_behind(server, tmp_path):
    server.payload = make_zip(ravdess_files())
    root = tmp_path / "raw" / "ravdess"
    params = make_params({"ravdess": {"source": "download", "path": str(root), "url": server.url,
                                      "sha256": "0" * 64}})
    with pytest.raises(ChecksumMismatch, match=r"sha256 [0-9a-f]{64} does not match 0{64}"):
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    assert not root.exists()
    assert list((tmp_path / "dl" / "ravdess").iterdir()) == []  # neither the archive nor its .part
    assert leftovers(tmp_path) == []


def test_truncated_download_resumes_on_the_next_run(server, tmp_path):
    payload = os.urandom(300_000)
    server.payload, server.truncate_next = payload, 1
    dest = tmp_path / "x.zip"
    with pytest.raises(IncompleteDownload, match="run again to resume"):
        download_file(server.url, dest, attempts=1)
    part = tmp_path / "x.zip.part"
    assert not dest.exists() and part.stat().st_size == len(payload) // 2

    digests = download_file(server.url, dest, sha256=hashlib.sha256(payload).hexdigest(), attempts=1)
    assert server.requests == [None, f"bytes={len(payload) // 2}-"]
    assert dest.read_bytes() == payload and not part.exists()
    assert digests["sha256"] == hashlib.sha256(payload).hexdigest()


def test_interrupted_transfer_is_resumed_within_one_call(server, tmp_path):
    payload = os.urandom(200_000)
    server.payload, server.truncate_next = payload, 2
    dest = tmp_path / "x.zip"
    download_file(server.url, dest, md5=hashlib.md5(payload).hexdigest(), attempts=3)
    assert dest.read_bytes() == payload
    assert server.requests == [None, "bytes=100000-", "bytes=150000-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    payload = os.urandom(100_000)
    server.payload, server.honour_range = payload, False
    dest = tmp_path / "x.zip"
    (tmp_path / "x.zip.part").write_bytes(b"stale bytes from an earlier attempt")
    download_file(server.url, dest, sha256=hashlib.sha256(payload).hexdigest())
    assert server.requests == ["bytes=35-"]
    assert dest.read_bytes() == payload  # not appended to the stale prefix


def test_completed_part_is_verified_not_refetched(server, tmp_path):
    """A run killed between the last byte and the rename: the server answers 416."""
    payload = os.urandom(50_000)
    server.payload = payload
    (tmp_path / "x.zip.part").write_bytes(payload)
    download_file(server.url, tmp_path / "x.zip", sha256=hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "x.zip").read_bytes() == payload


def test_lock_pins_first_download_and_enforces_it(server, tmp_path):
    server.payload = make_zip(ravdess_files())
    root, lock, dl = tmp_path / "raw" / "ravdess", tmp_path / "checksums.lock.json", tmp_path / "dl"
    params = make_params({"ravdess": {"source": "download", "path": str(root), "url": server.url}})
    report = fetch_and_verify(params, lock, downloads_dir=dl)
    pinned = json.loads(lock.read_text())["sources"][server.url]
    assert pinned["sha256"] == hashlib.sha256(server.payload).hexdigest() and pinned["corpus"] == "ravdess"
    assert report["corpora"]["ravdess"]["checksum"]["verified_against"] == "lock (pinned now)"
    assert report["corpora"]["ravdess"]["expected_files"] == 1440  # the table's count for RAVDESS
    assert report["corpora"]["ravdess"]["found_files"] == 24

    # A fresh checkout (lock committed, no data) and a server now serving other bytes.
    for path in (root, dl):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    server.payload = make_zip(ravdess_files(range(1, 24)))
    with pytest.raises(ChecksumMismatch, match=re.escape(str(lock))):
        fetch_and_verify(params, lock, downloads_dir=dl)
    assert not root.exists() and leftovers(tmp_path) == []
    assert json.loads(lock.read_text())["sources"][server.url]["sha256"] == pinned["sha256"]


@pytest.mark.parametrize("url", ["http://nonexistent.invalid/x.zip", "http://127.0.0.1:9/x.zip"])
def test_no_network_fails_fast_with_instructions(tmp_path, url, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "raw" / "ravdess"
    params = make_params({"ravdess": {"source": "download", "path": str(root), "url": url}})
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    assert time.monotonic() - start < 15
    msg = str(err.value)
    assert "Zenodo record 1188976" in msg and str(root) in msg and "source: local" in msg
    assert not root.exists()


def test_iemocap_download_is_refused(tmp_path):
    params = make_params({"iemocap": {"source": "download", "path": str(tmp_path / "iemocap"),
                                      "url": "http://127.0.0.1:9/iemocap.tar.gz"}})
    with pytest.raises(CorpusError, match=r"not offered for IEMOCAP.*sail\.usc\.edu/iemocap"):
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")


def test_git_source_needs_git_lfs(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # git on PATH, git-lfs not
    bin_dir.mkdir()
    git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True).stdout.strip()
    if not git:
        pytest.skip("git is not installed")
    (bin_dir / "git").symlink_to(git)
    monkeypatch.setenv("PATH", str(bin_dir))
    params = make_params({"crema_d": {"source": "download", "path": str(tmp_path / "crema_d"),
                                      "url": "https://github.com/CheyneyComputerScience/CREMA-D.git"}})
    with pytest.raises(CorpusError, match=r"(?s)git-lfs is not installed.*AudioWAV folder of https://github"):
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    assert not (tmp_path / "crema_d").exists()


def test_git_clone_passes_the_url_after_a_double_dash(tmp_path, monkeypatch):
    import ser.data.download as dl

    calls = []

    def fake_git(*args, cwd=None):
        calls.append(args)
        raise DownloadError("stop after the clone command")

    monkeypatch.setattr(dl, "_git", fake_git)
    monkeypatch.setattr(dl, "_require_git_lfs", lambda name, cfg: None)
    url = "--upload-pack=touch pwned.git"  # would be an option to git without "--"
    params = make_params({"crema_d": {"source": "download", "path": str(tmp_path / "crema_d"), "url": url}})
    with pytest.raises(DownloadError, match="stop after"):
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    (clone,) = calls
    assert clone[0] == "clone" and clone[clone.index("--") + 1] == url


# --------------------------------------------------------------------------- archives
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip_with_symlinks(path: Path, links: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Actor_01/03-01-05-01-01-01-01.wav", wav_bytes(1))
        for name, target in links.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            zf.writestr(info, target)
    return path


@pytest.mark.parametrize("build, member", [
    (lambda p: _write(p, make_zip({"ok.wav": b"x", "../evil.txt": b"x"})), "../evil.txt"),
    (lambda p: _write(p, make_zip({"ok.wav": b"x", "/abs.txt": b"x"})), "/abs.txt"),
    (lambda p: _zip_with_symlinks(p, {"Actor_01/link": "../../outside"}), "Actor_01/link"),
    # each link looks inside on its own; together they lead out
    (lambda p: _zip_with_symlinks(p, {"s": ".", "s/s/up": "../.."}), "s/s/up"),
    (lambda p: make_tar(p, {"ok.wav": b"x", "a/../../evil.txt": b"x"}), "a/../../evil.txt"),
    (lambda p: make_tar(p, {"ok.wav": b"x", "/abs.txt": b"x"}), "/abs.txt"),
    (lambda p: make_tar(p, {"ok.wav": b"x"}, {"esc": (tarfile.SYMTYPE, "../../outside")}), "esc"),
    (lambda p: make_tar(p, {"ok.wav": b"x"}, {"sub/abs": (tarfile.SYMTYPE, "/etc/passwd")}), "sub/abs"),
    (lambda p: make_tar(p, {"ok.wav": b"x"}, {"hard": (tarfile.LNKTYPE, "../outside")}), "hard"),
    (lambda p: make_tar(p, {"ok.wav": b"x"}, {"s": (tarfile.SYMTYPE, "."),
                                              "s/s/up": (tarfile.SYMTYPE, "../..")}), "s/s/up"),
], ids=["zip-dotdot", "zip-abs", "zip-symlink", "zip-symlink-chain", "tar-dotdot", "tar-abs",
        "tar-symlink", "tar-abs-symlink", "tar-hardlink", "tar-symlink-chain"])
def test_unsafe_archives_are_refused(tmp_path, build, member):
    archive = build(tmp_path / "evil.archive")
    target = tmp_path / "raw" / "corpus"
    with pytest.raises(UnsafeArchive, match=re.escape(repr(member))):
        safe_extract(archive, target)
    assert not target.exists()
    assert [p.name for p in (tmp_path / "raw").iterdir()] == []  # no staging folder either
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "outside").exists()


def test_truncated_archive_extracts_nothing_and_keeps_existing_corpus(tmp_path):
    target = tmp_path / "corpus"
    write_tree(target, {"old.wav": wav_bytes(0)})
    archive = tmp_path / "cut.tar.gz"
    make_tar(archive, {f"f{i}.wav": os.urandom(20_000) for i in range(5)})
    archive.write_bytes(archive.read_bytes()[:30_000])
    with pytest.raises(CorpusError, match="truncated or corrupt|not a zip or tar"):
        safe_extract(archive, target)
    assert sorted(p.name for p in target.iterdir()) == ["old.wav"]
    assert leftovers(tmp_path) == []


def test_internal_symlink_is_allowed(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", {"data/a.wav": wav_bytes(1)},
                       {"data/alias.wav": (tarfile.SYMTYPE, "a.wav")})
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "data" / "alias.wav").read_bytes() == wav_bytes(1)


# --------------------------------------------------------------------------- local sources
def test_local_archive_is_extracted_once_and_unwrapped(tmp_path):
    files = {f"TESS/{spk}_{emo}/{spk}_back_{emo}.wav": wav_bytes(i)
             for i, (spk, emo) in enumerate((s, e) for s in ("OAF", "YAF")
                                            for e in ("angry", "disgust", "fear", "happy", "neutral",
                                                      "ps", "sad"))}
    archive = make_tar(tmp_path / "tess.tar.gz", files)
    root = tmp_path / "raw" / "tess"
    params = make_params({"tess": {"source": "local", "path": str(root), "archive": str(archive)}})
    report = fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    entry = report["corpora"]["tess"]
    # the single wrapping folder "TESS/" is hoisted: root holds the speaker folders
    assert (root / "OAF_fear" / "OAF_back_fear.wav").is_file()
    assert (entry["found_files"], entry["expected_files"], entry["missing"]) == (14, 2800, [])
    assert entry["checksum"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()

    mtime = (root / "OAF_fear" / "OAF_back_fear.wav").stat().st_mtime_ns
    again = fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    assert (root / "OAF_fear" / "OAF_back_fear.wav").stat().st_mtime_ns == mtime  # not re-extracted
    assert again["corpora"]["tess"] == entry


def test_local_archive_with_wrong_checksum_is_not_extracted(tmp_path):
    archive = tmp_path / "r.zip"
    archive.write_bytes(make_zip(ravdess_files()))
    params = make_params({"ravdess": {"source": "local", "path": str(tmp_path / "r"),
                                      "archive": str(archive), "md5": "0" * 32}})
    with pytest.raises(ChecksumMismatch, match="nothing was extracted"):
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    assert not (tmp_path / "r").exists()


def test_local_iemocap_missing_says_how_to_get_it(tmp_path):
    root = tmp_path / "nowhere" / "iemocap"
    params = make_params({"iemocap": {"source": "local", "path": str(root)}})
    with pytest.raises(CorpusNotFound) as err:
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    msg = str(err.value)
    assert str(root) in msg and "sail.usc.edu/iemocap" in msg and "corpora.iemocap.path" in msg


def test_local_folder_without_audio_or_layout_is_an_error(tmp_path):
    root = tmp_path / "ravdess"
    write_tree(root, {"notes.txt": b"x"})
    with pytest.raises(CorpusNotFound, match="no audio files"):
        verify_corpus("ravdess", root, 1440)
    write_tree(root, {"03-01-05-01-01-01-01.wav": wav_bytes(1)})  # flat: no Actor_NN folders
    with pytest.raises(CorpusNotFound, match=r"none in the expected layout \(Actor_01\.\.Actor_24"):
        verify_corpus("ravdess", root, 1440)


def test_git_lfs_pointer_files_are_detected(tmp_path):
    root = tmp_path / "crema_d"
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    write_tree(root, {"AudioWAV/1001_DFA_ANG_XX.wav": pointer})
    with pytest.raises(CorpusError, match="git-lfs pointers.*git lfs pull"):
        verify_corpus("crema_d", root, 7442)


# --------------------------------------------------------------------------- verification
def test_verification_counts_missing_extra_duplicates_and_fingerprint(tmp_path):
    root = tmp_path / "ravdess"
    files = ravdess_files(range(1, 25))
    del files["Actor_05/03-01-05-01-01-01-05.wav"]
    files["Actor_06/03-01-05-01-01-02-06.wav"] = wav_bytes(6)  # same bytes as another take
    files["Actor_07/03-01-03-01-01-01-07.flac"] = wav_bytes(8)  # same bytes, other actor
    files["Actor_07/._03-01-03-01-01-01-07.wav"] = b"AppleDouble"  # macOS metadata, not audio
    write_tree(root, files)
    (root / ".git").mkdir()
    (root / ".git" / "x.wav").write_bytes(b"ignored")  # hidden folders are not corpus content

    entry = verify_corpus("ravdess", root, 1440)
    assert (entry["expected_files"], entry["found_files"]) == (1440, 25)
    assert entry["missing"] == ["Actor_05"]
    assert entry["extra"] == ["Actor_07/._03-01-03-01-01-01-07.wav", "README.txt"]
    assert entry["duplicates"] == [
        ["Actor_06/03-01-05-01-01-01-06.wav", "Actor_06/03-01-05-01-01-02-06.wav"],
        ["Actor_07/03-01-03-01-01-01-07.flac", "Actor_08/03-01-05-01-01-01-08.wav"]]
    assert any("expected 1440 audio files, found 25" in w for w in entry["warnings"])

    # the fingerprint is stable, and follows edits (size or mtime) of out-of-repo corpora
    assert verify_corpus("ravdess", root, 1440)["fingerprint"] == entry["fingerprint"]
    wav = root / "Actor_01" / "03-01-05-01-01-01-01.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert verify_corpus("ravdess", root, 1440)["fingerprint"] != entry["fingerprint"]


@pytest.mark.parametrize("kind, files, missing", [
    ("crema_d", {f"AudioWAV/{a}_IEO_ANG_HI.wav": a for a in range(1001, 1092) if a != 1042},
     ["AudioWAV/1042_*.wav"]),
    ("iemocap", {**{f"Session{s}/sentences/wav/Ses0{s}F_impro01/Ses0{s}F_impro01_F000.wav": s
                    for s in (1, 2, 3, 4, 5)},
                 **{f"Session{s}/dialog/EmoEvaluation/Ses0{s}F_impro01.txt": 0 for s in (1, 2, 4, 5)}},
     ["Session3/dialog/EmoEvaluation/"]),
    ("tess", {f"YAF_{emo}/YAF_back_{emo}.wav": i for i, emo in enumerate(("angry", "disgust", "fear"))},
     ["OAF_angry", "OAF_disgust", "OAF_fear", "OAF_happy", "OAF_neutral", "OAF_ps", "OAF_sad",
      "YAF_happy", "YAF_neutral", "YAF_ps", "YAF_sad"]),
])
def test_missing_parts_per_corpus_layout(tmp_path, kind, files, missing):
    write_tree(tmp_path, {name: (wav_bytes(seed) if name.endswith(".wav") else b"labels")
                          for name, seed in files.items()})
    assert verify_corpus(kind, tmp_path, None)["missing"] == missing


# --------------------------------------------------------------------------- stage and demo
def test_stage_script_writes_report(tmp_path):
    root = tmp_path / "ravdess"
    write_tree(root, ravdess_files())
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data.update(corpora={"ravdess": {"source": "local", "path": str(root), "expected_files": 24}},
                studies={"s": {"labels": ["angry", "sad"], "corpora": ["ravdess"]}},
                splits={"s": {"ravdess": {"protocol": "all_test"}}}, models={}, fusions={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    report = tmp_path / "reports" / "download_verify.json"
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download_verify.py"),
                           "--params", str(tmp_path / "params.yaml"), "--report", str(report),
                           "--lock", str(tmp_path / "lock.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(report.read_text())["corpora"]["ravdess"]
    assert (entry["source"], entry["found_files"], entry["checksum"]) == ("local", 24, None)
    # Every corpus is local and outside data/raw: the stage's declared output folder exists anyway.
    assert (tmp_path / "data" / "raw").is_dir()

    moved = root.rename(tmp_path / "gone")  # a missing corpus: exit 1, the message, no traceback
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download_verify.py"),
                           "--params", str(tmp_path / "params.yaml"), "--report", str(report)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "Zenodo record 1188976" in proc.stderr
    assert "Traceback" not in proc.stderr and moved.exists()


def test_demo_source_calls_the_generator(tmp_path):
    pytest.importorskip("ser.data.demo")
    root = tmp_path / "raw" / "tess"
    params = make_params({"tess": {"source": "demo", "path": str(root)}}, {"tess": 7})
    report = fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    entry = report["corpora"]["tess"]
    assert entry["source"] == "demo" and entry["checksum"] is None
    assert entry["expected_files"] is not None and entry["expected_files"] > 0  # the generator's count
    assert entry["found_files"] > 0 and root.is_dir()


def test_real_download_replaces_a_demo_corpus_but_local_refuses_it(server, tmp_path):
    demo = pytest.importorskip("ser.data.demo")
    root = tmp_path / "raw" / "ravdess"
    clip = "Actor_01/03-01-01-01-01-01-01.wav"
    write_tree(root, {clip: wav_bytes(99), demo.MARKER: json.dumps({"paths": [clip]}).encode()})
    local = make_params({"ravdess": {"source": "local", "path": str(root)}})
    with pytest.raises(CorpusError, match="synthetic demo corpus"):
        fetch_and_verify(local, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")

    server.payload = make_zip(ravdess_files())
    params = make_params({"ravdess": {"source": "download", "path": str(root), "url": server.url}})
    # A file the demo did not write would go with it: refused, before downloading, naming the file.
    (root / "Actor_01" / "my_notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match=r"1 file\(s\) it did not write \(Actor_01/my_notes.txt\)"):
        fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    assert (root / "Actor_01" / "my_notes.txt").exists() and (root / clip).exists()
    assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").rglob("*.zip"))
    (root / "Actor_01" / "my_notes.txt").unlink()

    report = fetch_and_verify(params, tmp_path / "lock.json", downloads_dir=tmp_path / "dl")
    entry = report["corpora"]["ravdess"]
    assert entry["found_files"] == 24 and not (root / demo.MARKER).exists()
    assert not (root / "Actor_01" / "03-01-01-01-01-01-01.wav").exists()
    assert leftovers(tmp_path) == []
