"""The synthetic demo corpora: real layouts and names, determinism, idempotence,
injected faults, and emotion / channel cues that a model can learn."""
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from ser.data.corpora import label_table, tess, to_canonical
from ser.data.demo import DEMO_CORPORA, MARKER, PARTIAL_MARKER, generate_corpus

SEED = 11
SIZES = {"iemocap": 6, "ravdess": 8, "crema_d": 1, "tess": 14}  # ravdess 8: every actor has all 8 emotions
RATES = {"iemocap": 16000, "ravdess": 48000, "crema_d": 16000, "tess": 24414}

IEMOCAP_WAV = re.compile(r"Session([1-5])/sentences/wav/(Ses0\1[FM]_(?:impro\d\d|script\d\d_\d))/\2_([FM])\d{3}\.wav")
RAVDESS_WAV = re.compile(r"Actor_(\d\d)/03-01-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)\.wav")
CREMA_D_WAV = re.compile(r"AudioWAV/(\d{4})_(IEO|TIE|IOM|IWW|TAI|MTI|IWL|ITH|DFA|ITS|TSI|WSI)_"
                         r"(ANG|DIS|FEA|HAP|NEU|SAD)_(LO|MD|HI|XX)\.wav")
TESS_WAV = re.compile(r"(OAF|YAF)_([A-Za-z_]+)/\1_([a-z]+)_(angry|disgust|fear|happy|neutral|ps|sad)\.wav")
EMO_ENTRY = re.compile(r"\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(neu|hap|exc|sad|ang|fru|oth|xxx)\t"
                       r"\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]")
EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """All four corpora, small, generated once: {name: (root, returned count)}."""
    base = tmp_path_factory.mktemp("demo")
    return {name: (base / name, generate_corpus(name, base / name, SIZES[name], SEED)) for name in DEMO_CORPORA}


def _wavs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))


def _marker(root: Path) -> dict:
    return json.loads((root / MARKER).read_text())


def _faulty(root: Path) -> set[str]:
    faults = _marker(root)["faults"]
    return set(faults["silent"]) | set(faults["short"])


def _read16k(path: Path) -> np.ndarray:
    y, sr = sf.read(path, dtype="float32")
    return soxr.resample(y, sr, 16000) if sr != 16000 else y


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _iemocap_entries(root: Path) -> dict[str, tuple[float, float, str]]:
    """utt -> (start, end, label) from every EmoEvaluation file, checking the format on the way."""
    out = {}
    for txt in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        head, *blocks = txt.read_text().split("\n\n")
        assert head == EMO_HEADER, txt
        blocks = [b for b in blocks if b.strip()]
        assert blocks, f"{txt} has no entries"
        for block in blocks:
            first, *evaluators = block.strip("\n").split("\n")
            m = EMO_ENTRY.fullmatch(first)
            assert m, f"{txt}: bad entry line {first!r}"
            assert evaluators and all(re.fullmatch(r"[CA]-E\d:\t.+;\t\(.*\)", e) for e in evaluators), block
            utt = m.group(3)
            assert utt.startswith(txt.stem + "_") and utt not in out
            out[utt] = (float(m.group(1)), float(m.group(2)), m.group(4))
    return out


# --------------------------------------------------------------------------- layouts
def test_returns_file_count_and_writes_marker(corpora):
    for name, (root, n) in corpora.items():
        marker = _marker(root)
        assert n == len(_wavs(root)) == marker["files"], name
        assert marker["name"] == name and marker["seed"] == SEED and marker["clips_per_speaker"] == SIZES[name]
        assert not (root / PARTIAL_MARKER).exists()


def test_iemocap_layout_and_emo_evaluation(corpora):
    root, n = corpora["iemocap"]
    speakers, dialogs = Counter(), set()
    for rel in _wavs(root):
        m = IEMOCAP_WAV.fullmatch(rel)
        assert m, rel
        speakers[f"Ses0{m.group(1)}{m.group(3)}"] += 1
        dialogs.add(m.group(2))
    assert speakers == {f"Ses0{s}{g}": SIZES["iemocap"] for s in range(1, 6) for g in "FM"}
    assert any("impro" in d for d in dialogs) and any("script" in d for d in dialogs)

    entries = _iemocap_entries(root)
    wav_utts = {Path(rel).stem: rel for rel in _wavs(root)}
    assert set(entries) == set(wav_utts)  # every wav labelled, every label has a wav
    for utt, (start, end, _) in entries.items():
        info = sf.info(root / wav_utts[utt])
        assert end - start == pytest.approx(info.frames / info.samplerate, abs=2e-4), utt
    labels = Counter(lab for _, _, lab in entries.values())
    assert set(labels) == {"neu", "hap", "exc", "sad", "ang", "fru", "oth", "xxx"}
    assert labels["oth"] + labels["xxx"] < 0.2 * n
    table = label_table("iemocap")
    assert {lab for lab in labels if not to_canonical(lab, table)} == {"oth", "xxx"}  # the excluded ones


def test_ravdess_layout_and_labels(corpora):
    root, _ = corpora["ravdess"]
    per_actor: dict[str, set] = defaultdict(set)
    for rel in _wavs(root):
        m = RAVDESS_WAV.fullmatch(rel)
        assert m, rel
        assert rel.startswith(f"Actor_{m.group(6)}/")
        if m.group(2) == "01":
            assert m.group(3) == "01", f"{rel}: neutral has only normal intensity"
        per_actor[m.group(6)].add(m.group(2))
    assert sorted(per_actor) == [f"{a:02d}" for a in range(1, 25)]
    assert all(emos == {f"0{e}" for e in range(1, 9)} for emos in per_actor.values())  # incl. calm


def test_crema_d_layout_and_labels(corpora):
    root, _ = corpora["crema_d"]
    actors, emotions = set(), Counter()
    for rel in _wavs(root):
        m = CREMA_D_WAV.fullmatch(rel)
        assert m, rel
        actor, sentence, emo, level = m.groups()
        if sentence != "IEO" or emo == "NEU":
            assert level == "XX", rel  # only "It's eleven o'clock" has intensity levels
        actors.add(int(actor))
        emotions[emo] += 1
    assert actors == set(range(1001, 1092))
    assert set(emotions) == {"ANG", "DIS", "FEA", "HAP", "NEU", "SAD"}
    assert max(emotions.values()) - min(emotions.values()) <= 1  # 91 clips, rotated over actors
    demographics = (root / "VideoDemographics.csv").read_text().splitlines()
    assert demographics[0] == "ActorID,Age,Sex,Race,Ethnicity" and len(demographics) == 92


def test_tess_layout_and_awkward_folder_names(corpora):
    root, _ = corpora["tess"]
    table = label_table("tess")
    per_speaker: dict[str, Counter] = defaultdict(Counter)
    folders = set()
    for rel in _wavs(root):
        m = TESS_WAV.fullmatch(rel)
        assert m, rel
        speaker, folder_emotion, word, emotion = m.groups()
        folders.add(rel.split("/")[0])
        # The folder's spelling varies, but it names the same emotion as the file.
        assert to_canonical(folder_emotion.lower(), table) == to_canonical(emotion, table) != ""
        per_speaker[speaker][emotion] += 1
    assert set(per_speaker) == {"OAF", "YAF"}
    assert all(c == Counter({e: 2 for e in tess.TESS_STYLE}) for c in per_speaker.values())  # 2 words x 7
    assert {"OAF_Fear", "OAF_Pleasant_surprise", "YAF_pleasant_surprised"} <= folders


def test_sample_rates_format_and_durations(corpora):
    for name, (root, _) in corpora.items():
        faulty = _faulty(root)
        for rel in _wavs(root):
            info = sf.info(root / rel)
            assert (info.samplerate, info.channels, info.subtype) == (RATES[name], 1, "PCM_16"), rel
            if rel not in faulty:
                assert 1.0 <= info.duration <= 3.0, f"{rel}: {info.duration:.2f} s"


# --------------------------------------------------------------------------- faults
def test_injected_faults(corpora, tmp_path):
    root, _ = corpora["iemocap"]
    faults = _marker(root)["faults"]
    entries = _iemocap_entries(root)
    silent = [rel for rel in _wavs(root) if not np.any(sf.read(root / rel)[0])]
    short = [rel for rel in _wavs(root) if sf.info(root / rel).duration < 0.5]
    assert silent == faults["silent"] and len(silent) == 1
    assert short == faults["short"] and len(short) == 1
    assert sf.info(root / short[0]).duration == pytest.approx(0.1, abs=1e-3)
    assert sf.info(root / silent[0]).duration >= 1.0
    for rel in silent + short:  # labelled, and with a label a 4-class study keeps
        assert entries[Path(rel).stem][2] in {"neu", "hap", "exc", "sad", "ang"}

    root, _ = corpora["crema_d"]
    by_digest = defaultdict(list)
    for rel, digest in _digests(root).items():
        if rel.endswith(".wav"):
            by_digest[digest].append(rel)
    pairs = [sorted(v) for v in by_digest.values() if len(v) > 1]
    assert len(pairs) == 1 and len(pairs[0]) == 2
    assert sorted(_marker(root)["faults"]["duplicates"][0]) == pairs[0]
    emotions = {CREMA_D_WAV.fullmatch(rel).group(3) for rel in pairs[0]}  # both names still parse
    assert len(emotions) == 2

    for name in ("ravdess", "tess"):  # no faults where none are documented
        root, _ = corpora[name]
        assert _faulty(root) == set() and len(set(_digests(root).values())) == len(_digests(root))

    clean = generate_corpus("iemocap", tmp_path / "clean", 2, SEED, inject_faults=False)
    assert clean == 20
    assert all(np.any(sf.read(p)[0]) and sf.info(p).duration >= 1.0 for p in (tmp_path / "clean").rglob("*.wav"))


# --------------------------------------------------------------------------- reproducibility
def test_deterministic_per_seed(tmp_path):
    for name, n in (("tess", 7), ("iemocap", 1)):
        a = generate_corpus(name, tmp_path / "a" / name, n, 3)
        b = generate_corpus(name, tmp_path / "b" / name, n, 3)
        c = generate_corpus(name, tmp_path / "c" / name, n, 4)
        assert a == b == c
        da, db, dc = (_digests(tmp_path / x / name) for x in "abc")
        assert da == db  # byte-identical, label files and marker included
        wavs = [k for k in da if k.endswith(".wav")]
        assert set(dc) == set(da) and all(dc[k] != da[k] for k in wavs)


def test_idempotent_rerun_and_regeneration(tmp_path, caplog):
    root = tmp_path / "tess"
    (root).mkdir()
    (root / "README.txt").write_text("not ours")
    assert generate_corpus("tess", root, 14, SEED) == 28
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    with caplog.at_level("INFO", logger="ser.data.demo"):
        assert generate_corpus("tess", root, 14, SEED) == 28
    assert "already complete" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps  # nothing rewritten

    # Other settings: the old demo is wiped (no stale words), unrelated files stay.
    assert generate_corpus("tess", root, 7, SEED) == 14
    assert len(_wavs(root)) == 14 and _marker(root)["clips_per_speaker"] == 7
    assert (root / "README.txt").read_text() == "not ours"

    # A file lost since completion: the marker no longer vouches for the tree.
    (root / _wavs(root)[0]).unlink()
    assert generate_corpus("tess", root, 7, SEED) == 14 and len(_wavs(root)) == 14


def test_interrupted_run_is_detected_and_redone(tmp_path):
    root = tmp_path / "tess"
    generate_corpus("tess", root, 7, SEED)
    reference = _digests(root)
    # Simulate a crash mid-run: partial marker present, complete marker absent, a file missing.
    (root / MARKER).unlink()
    (root / PARTIAL_MARKER).write_text("{}")
    (root / _wavs(root)[3]).unlink()
    assert generate_corpus("tess", root, 7, SEED) == 14
    assert _digests(root) == reference and not (root / PARTIAL_MARKER).exists()


def test_never_deletes_a_file_it_did_not_write(tmp_path):
    root = tmp_path / "tess"
    generate_corpus("tess", root, 7, SEED)
    reference = _digests(root)
    folder = sorted(p for p in root.iterdir() if p.is_dir())[0]
    mine = folder / "my_recording.wav"  # a user's file inside a folder the generator writes
    mine.write_bytes(b"precious")
    # The wav count no longer matches the marker, and then other settings: both would regenerate.
    for n in (7, 14):
        with pytest.raises(FileExistsError, match=rf"did not write: {folder.name}/my_recording.wav.*nothing was changed"):
            generate_corpus("tess", root, n, SEED)
        rel = mine.relative_to(root).as_posix()
        assert mine.read_bytes() == b"precious"
        assert {k: v for k, v in _digests(root).items() if k != rel} == reference  # untouched
    mine.unlink()
    assert generate_corpus("tess", root, 14, SEED) == 28


def test_a_marker_without_a_file_list_still_regenerates(tmp_path):
    # Trees generated before markers listed their files: the files are derived from the settings.
    root = tmp_path / "crema_d"
    generate_corpus("crema_d", root, 1, SEED)
    doc = _marker(root)
    del doc["paths"]
    (root / MARKER).write_text(json.dumps(doc))
    (root / "notes.txt").write_text("a file outside the generator's folders is left alone")
    assert generate_corpus("crema_d", root, 2, SEED) == 182
    assert (root / "notes.txt").exists() and (root / "VideoDemographics.csv").exists()
    assert sorted(_wavs(root)) == sorted(p for p in _marker(root)["paths"] if p.endswith(".wav"))


def test_refuses_to_overwrite_a_real_corpus(tmp_path):
    real = tmp_path / "ravdess" / "Actor_01" / "03-01-05-01-01-01-01.wav"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"real recording")
    with pytest.raises(FileExistsError, match="real ravdess corpus"):
        generate_corpus("ravdess", tmp_path / "ravdess", 2, SEED)
    assert real.read_bytes() == b"real recording"


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown demo corpus 'msp'.*iemocap"):
        generate_corpus("msp", tmp_path, 2, SEED)
    with pytest.raises(ValueError, match="clips_per_speaker must be >= 1"):
        generate_corpus("tess", tmp_path, 0, SEED)
    with pytest.raises(ValueError, match="at most 60 distinct files"):  # RAVDESS: 60 speech files per actor
        generate_corpus("ravdess", tmp_path, 61, SEED)
    assert not any(tmp_path.rglob("*.wav"))


# --------------------------------------------------------------------------- cues
def _f0_median(y: np.ndarray, sr: int = 16000) -> float:
    """Median f0 of the loud frames by autocorrelation (60-500 Hz)."""
    frame, hop = 640, 320
    frames = np.lib.stride_tricks.sliding_window_view(y, frame)[::hop]
    energy = np.mean(frames ** 2, axis=1)
    frames = frames[energy > 0.1 * energy.max()]
    spec = np.fft.rfft(frames * np.hanning(frame), n=2 * frame)
    ac = np.fft.irfft(np.abs(spec) ** 2)[:, :frame]
    lo, hi = sr // 500, sr // 60
    return float(np.median(sr / (lo + np.argmax(ac[:, lo:hi], axis=1))))


def _cues(path: Path) -> tuple[float, float, float]:
    """Level (dBFS), spectral centroid (Hz) and f0 (Hz) of a clip at 16 kHz."""
    y = _read16k(path)
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / 16000)
    return 10 * np.log10(np.mean(y ** 2)), float(np.sum(power * freqs) / np.sum(power)), _f0_median(y)


def test_angry_is_louder_brighter_higher_than_sad_for_every_actor(corpora):
    root, _ = corpora["ravdess"]
    for actor in range(1, 25):
        folder = root / f"Actor_{actor:02d}"
        angry = np.mean([_cues(p) for p in folder.glob("03-01-05-*.wav")], axis=0)
        sad = np.mean([_cues(p) for p in folder.glob("03-01-04-*.wav")], axis=0)
        assert angry[0] > sad[0] + 6, f"actor {actor}: level {angry[0]:.1f} vs {sad[0]:.1f} dB"
        assert angry[1] > sad[1] * 1.3, f"actor {actor}: centroid {angry[1]:.0f} vs {sad[1]:.0f} Hz"
        assert angry[2] > sad[2] * 1.2, f"actor {actor}: f0 {angry[2]:.0f} vs {sad[2]:.0f} Hz"


def test_speakers_differ_in_voice(corpora):
    root, _ = corpora["ravdess"]
    f0 = {a: np.median([_cues(p)[2] for p in (root / f"Actor_{a:02d}").glob("03-01-01-*.wav")])
          for a in range(1, 25)}  # neutral clips
    male, female = [f0[a] for a in f0 if a % 2], [f0[a] for a in f0 if not a % 2]
    assert max(male) < min(female)  # odd actors are male
    assert len({round(v) for v in f0.values()}) > 16  # individual voices, not two templates


def _band_energies(path: Path, bands: int = 40) -> np.ndarray:
    """Mean and spread of log energies in log-spaced bands (a poor man's log-mel)."""
    y = _read16k(path)
    frames = np.lib.stride_tricks.sliding_window_view(y, 400)[::160] * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    edges = np.searchsorted(np.fft.rfftfreq(400, 1 / 16000), np.geomspace(60, 8000, bands + 1))
    logband = np.log(np.add.reduceat(power, edges[:-1], axis=1) + 1e-10)
    return np.concatenate([logband.mean(axis=0), logband.std(axis=0)])


def test_emotions_are_learnable_across_speakers(corpora):
    """A linear model on band-energy statistics generalises to unseen actors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    root, _ = corpora["ravdess"]
    files = _wavs(root)
    x = np.stack([_band_energies(root / rel) for rel in files])
    y = np.array([RAVDESS_WAV.fullmatch(rel).group(2) for rel in files])
    actor = np.array([int(RAVDESS_WAV.fullmatch(rel).group(6)) for rel in files])
    train = actor <= 16
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5)).fit(x[train], y[train])
    accuracy = np.mean(model.predict(x[~train]) == y[~train])
    assert accuracy > 0.5, f"8-class accuracy on unseen actors {accuracy:.2f} (chance 0.125)"


def test_channel_separates_iemocap_from_ravdess(corpora):
    """The noisy IEMOCAP room has a noise floor far above RAVDESS's studio."""
    def floor_db(path: Path) -> float:
        y = _read16k(path)
        frames = y[: len(y) // 320 * 320].reshape(-1, 320)  # 20 ms
        return float(10 * np.log10(np.min(np.mean(frames ** 2, axis=1)) + 1e-12))
    iemocap_root, _ = corpora["iemocap"]
    ravdess_root, _ = corpora["ravdess"]
    iemocap = [floor_db(iemocap_root / rel) for rel in _wavs(iemocap_root) if rel not in _faulty(iemocap_root)]
    ravdess = [floor_db(ravdess_root / rel) for rel in _wavs(ravdess_root)]
    assert min(iemocap) > max(ravdess) + 10, (min(iemocap), max(ravdess))
