"""Corpus adapters on fixture trees that mimic each corpus's real naming, awkward cases included.

The `make_*` builders are also used by tests/test_metadata.py.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.config import CorpusParams
from ser.data.corpora import ADAPTERS, CorpusNotFound, scan_corpus
from ser.data.corpora.csv_corpus import CsvCorpusError


# --------------------------------------------------------------------------- builders
def write_wav(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    """A short noise clip; the noise is seeded by the path so no two files are identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    sf.write(str(path), (0.1 * rng.standard_normal(int(seconds * sr))).astype("float32"), sr, subtype="PCM_16")
    return path


def write_junk(path: Path, data: bytes = b"this is not a RIFF file" * 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_ravdess(root: Path, actors=range(1, 5), emotions=("01", "02", "03", "04", "05"),
                 extras: bool = True) -> Path:
    for actor in actors:
        for emo in emotions:
            for statement in ("01", "02"):
                write_wav(root / f"Actor_{actor:02d}" / f"03-01-{emo}-01-{statement}-01-{actor:02d}.wav", sr=48000)
    if extras:
        a1 = root / "Actor_01"
        write_wav(a1 / "03-02-03-01-01-01-01.wav", sr=48000)  # song
        write_junk(a1 / "01-01-03-01-01-01-01.mp4")  # audio-video
        write_junk(a1 / "02-01-03-01-01-01-01.mp4")  # video only
        write_junk(a1 / "._03-01-01-01-01-01-01.wav")  # macOS AppleDouble
        write_wav(a1 / "03-01-05-01-01.wav")  # malformed name
        write_junk(a1 / "03-01-06-02-01-02-01.wav")  # corrupt: not a wav
        write_wav(a1 / "03-01-09-01-01-01-01.wav")  # no emotion 09
    return root


def make_crema(root: Path, actors=(1001, 1002, 1003, 1004), emotions=("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"),
               sentences=("IEO", "DFA"), demographics: bool = True, extras: bool = True) -> Path:
    audio = root / "AudioWAV"
    for actor in actors:
        for emo in emotions:
            for sentence in sentences:
                write_wav(audio / f"{actor}_{sentence}_{emo}_XX.wav")
    if demographics:
        lines = ["ActorID,Age,Sex,Race,Ethnicity"]
        lines += [f"{a},30,{'Female' if a % 2 == 0 else 'Male'},Caucasian,Not Hispanic" for a in actors]
        (root / "VideoDemographics.csv").write_text("\n".join(lines) + "\n")
    if extras:
        a, b = actors[0], actors[1]
        # the same recording under two names with different emotions: no one can say which is right
        src = write_wav(audio / f"{b}_TIE_ANG_HI.wav")
        (audio / f"{b}_TIE_HAP_HI.wav").write_bytes(src.read_bytes())
        # the same recording twice with the same emotion: one copy is kept
        src = write_wav(audio / f"{a}_IWW_SAD_LO.wav")
        (audio / f"{a}_IWW_SAD_MD.wav").write_bytes(src.read_bytes())
        write_junk(audio / f"{a}_ITH_NEU_XX.wav")  # corrupt header
        write_junk(audio / f"{a}_MTI_SAD_XX.wav", b"")  # empty file
        write_wav(audio / f"{a}_DFA_ANG.wav")  # malformed: no level
        write_junk(audio / f"._{a}_IEO_ANG_XX.wav")
    return root


TESS_FOLDERS = {  # folder name as spelled in real copies -> file emotion token
    "OAF_angry": "angry", "OAF_disgust": "disgust", "OAF_Fear": "fear", "OAF_happy": "happy",
    "OAF_neutral": "neutral", "OAF_Pleasant_surprise": "ps", "OAF_Sad": "sad",
    "YAF_angry": "angry", "YAF_disgust": "disgust", "YAF_fear": "fear", "YAF_happy": "happy",
    "YAF_neutral": "neutral", "YAF_pleasant_surprised": "ps", "YAF_sad": "sad",
}


def make_tess(root: Path, words=("back", "bar", "base", "bath", "bean", "beg"), extras: bool = True) -> Path:
    for folder, token in TESS_FOLDERS.items():
        speaker = folder[:3]
        for word in words:
            write_wav(root / folder / f"{speaker}_{word}_{token}.wav", sr=24414)
    if extras:
        write_wav(root / "YAF_angry" / "YAF_bite_Angry.wav", sr=24414)  # case variant: accepted
        write_wav(root / "OAF_Fear" / "OAF_bite_Fear .wav", sr=24414)  # stray space: accepted
        write_wav(root / "OAF_Pleasant_surprise" / "OAF_bite_pleasant_surprise.wav", sr=24414)  # long token
        write_wav(root / "OAF_angry" / "OAF_dog_sad.wav", sr=24414)  # file and folder disagree
        write_wav(root / "OAF_angry" / "YAF_dog_angry.wav", sr=24414)  # other speaker's folder
        write_wav(root / "OAF_happy" / "OAF_dog_bored.wav", sr=24414)  # unknown emotion token
        write_junk(root / "YAF_sad" / "._YAF_back_sad.wav")
        write_wav(root / "notes" / "x.wav")  # not a speaker folder
        (root / "README.txt").write_text("TESS\n")
    return root


IEMOCAP_TURNS = [("impro01", "F000", "neu"), ("impro01", "F001", "hap"), ("impro01", "M000", "ang"),
                 ("impro01", "M001", "sad"), ("impro01", "F002", "exc"), ("impro01", "M002", "fru"),
                 ("impro01", "F003", "xxx"), ("impro01", "M003", "oth"),
                 ("script01_1", "F000", "sad"), ("script01_1", "M000", "neu")]


def make_iemocap(root: Path, sessions=range(1, 6), turns=IEMOCAP_TURNS, extras: bool = True) -> Path:
    for n in sessions:
        dialogs: dict[str, list[str]] = {}
        for i, (dialog_part, last, label) in enumerate(turns):
            dialog = f"Ses{n:02d}F_{dialog_part}"
            utt = f"{dialog}_{last}"
            write_wav(root / f"Session{n}" / "sentences" / "wav" / dialog / f"{utt}.wav")
            dialogs.setdefault(dialog, ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""])
            dialogs[dialog] += [f"[{i + 1.0:.4f} - {i + 2.5:.4f}]\t{utt}\t{label}\t[2.5000, 3.0000, 2.5000]",
                                "C-E1:\tNeutral;\t()", "C-E2:\tAnger;\t(irritated)",
                                "A-E1:\tval 3; act 2; dom  2;\t()", ""]
        label_dir = root / f"Session{n}" / "dialog" / "EmoEvaluation"
        label_dir.mkdir(parents=True, exist_ok=True)
        for dialog, lines in dialogs.items():
            (label_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        # per-annotator files in subfolders are not turn labels and must not be read as such
        (label_dir / "Categorical").mkdir(exist_ok=True)
        (label_dir / "Categorical" / f"Ses{n:02d}F_impro01_e2_cat.txt").write_text(
            f"Ses{n:02d}F_impro01_F000 :Anger; ()\n")
    if extras:
        wav = root / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
        write_wav(wav / "Ses01F_impro01_F004.wav")  # no label line
        write_junk(wav / "._Ses01F_impro01_F000.wav")
        write_junk(root / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt", b"\x00\x05\x16\x07")
        write_wav(wav / "Ses02F_impro01_F000.wav")  # wrong session folder
        with (root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").open("a") as fh:
            fh.write("[40.0000 - 41.0000]\tSes01F_impro01_F099\tneu\t[2.5000, 2.5000, 2.5000]\n")
    return root


def cfg(path: Path | str, **kw) -> CorpusParams:
    return CorpusParams(source="local", path=str(path), **kw)


def reasons(result) -> dict[str, str]:
    return {Path(p).name: why for p, why in result.skipped}


# --------------------------------------------------------------------------- registry
def test_registry_names_and_unknown_adapter():
    assert set(ADAPTERS) == {"ravdess", "crema_d", "tess", "iemocap", "csv"}
    with pytest.raises(KeyError, match=r"unknown adapter 'emodb'.*known: \['crema_d', 'csv'"):
        scan_corpus("emodb", cfg("x"), Path("x"))


def test_everything_about_a_corpus_is_in_its_own_file():
    """Adapter, label map, download source, complete-copy check and demo plan of a corpus come from
    ser/data/corpora/<name>.py; download, demo and metadata read them from the registry only."""
    import importlib

    from ser.data import demo, download
    from ser.data.corpora import CORPORA, label_table

    assert set(CORPORA) == set(ADAPTERS)
    for name, corpus in CORPORA.items():
        module = importlib.import_module(f"ser.data.corpora.{'csv_corpus' if name == 'csv' else name}")
        assert module.CORPUS is corpus and corpus.name == name
        functions = [corpus.scan, corpus.missing, corpus.demo.plan if corpus.demo else None]
        assert all(f.__module__ == module.__name__ for f in functions if f is not None), name
        assert label_table(name) == dict(corpus.labels)
        assert download.DEFAULT_SOURCES.get(name) is corpus.source
        assert download.LAYOUTS.get(name) is corpus.missing
        assert demo.DEMOS.get(name) is corpus.demo
    public = {n for n, c in CORPORA.items() if c.source is not None}
    assert public == {"ravdess", "crema_d", "tess", "iemocap"}
    assert all(CORPORA[n].labels and CORPORA[n].demo and CORPORA[n].top_folder for n in public)
    assert label_table("ravdess", {"02": "neutral"})["02"] == "neutral"  # params override the file's map


# --------------------------------------------------------------------------- RAVDESS
def test_ravdess_parses_speech_ignores_song_and_video(tmp_path, monkeypatch):
    make_ravdess(tmp_path / "ravdess")
    monkeypatch.chdir(tmp_path)
    res = scan_corpus("ravdess", cfg("ravdess"), Path("ravdess"))
    assert len(res.utterances) == 4 * 5 * 2
    u = next(u for u in res.utterances if u.utt_id == "ravdess/03-01-05-01-02-01-03")
    assert (u.corpus, u.speaker, u.raw_label, u.gender, u.text) == ("ravdess", "03", "05", "M", "02")
    assert (u.emotion, u.split, u.sample_rate) == ("", "unassigned", 48000)
    assert u.duration_s == pytest.approx(0.2, abs=1e-3)
    assert u.path == str(Path("ravdess/Actor_03/03-01-05-01-02-01-03.wav"))  # relative root stays relative
    assert {u.gender for u in res.utterances if u.speaker == "02"} == {"F"}
    assert res.ignored == {"hidden files (._*, .*)": 1, "song files (vocal channel 02)": 1,
                           "video files (modality 01/02)": 2}
    why = reasons(res)
    assert set(why) == {"03-01-05-01-01.wav", "03-01-06-02-01-02-01.wav", "03-01-09-01-01-01-01.wav"}
    assert "does not match" in why["03-01-05-01-01.wav"]
    assert "unreadable audio header" in why["03-01-06-02-01-02-01.wav"]
    assert "unknown emotion code 09" in why["03-01-09-01-01-01-01.wav"]
    assert res.files_found == 43


def test_ravdess_not_found_is_actionable(tmp_path):
    with pytest.raises(CorpusNotFound) as err:
        scan_corpus("ravdess", cfg(tmp_path / "nope"), tmp_path / "nope")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "Actor_01..Actor_24" in msg and "Zenodo record 1188976" in msg and "corpora.ravdess.path" in msg
    # archive extracted one level too deep: the message points at the right folder
    make_ravdess(tmp_path / "r" / "Audio_Speech_Actors_01-24", actors=[1], extras=False)
    with pytest.raises(CorpusNotFound, match="Audio_Speech_Actors_01-24: set corpora.ravdess.path"):
        scan_corpus("ravdess", cfg(tmp_path / "r"), tmp_path / "r")


# --------------------------------------------------------------------------- CREMA-D
def test_crema_d_fields_gender_and_skips(tmp_path):
    root = make_crema(tmp_path / "crema")
    res = scan_corpus("crema_d", cfg(root), root)
    assert len(res.utterances) == 4 * 6 * 2 + 4  # + both duplicate pairs (dealt with by ser.data.metadata)
    u = next(u for u in res.utterances if u.utt_id == "crema_d/1002_DFA_FEA_XX")
    assert (u.speaker, u.raw_label, u.text, u.gender, u.sample_rate) == ("1002", "FEA", "DFA", "F", 16000)
    assert u.path == str(root / "AudioWAV" / "1002_DFA_FEA_XX.wav")  # absolute root stays absolute
    assert {u.gender for u in res.utterances if u.speaker == "1001"} == {"M"}
    why = reasons(res)
    assert "unreadable audio header" in why["1001_ITH_NEU_XX.wav"]
    assert "1001_MTI_SAD_XX.wav" in why and "1001_DFA_ANG.wav" in why
    assert res.ignored == {"hidden files (._*, .*)": 1}


def test_crema_d_without_demographics_leaves_gender_unknown(tmp_path):
    root = make_crema(tmp_path / "crema", demographics=False, extras=False)
    res = scan_corpus("crema_d", cfg(root), root)
    assert {u.gender for u in res.utterances} == {""}
    with pytest.raises(CorpusNotFound, match="AudioWAV"):
        scan_corpus("crema_d", cfg(root / "AudioWAV"), root / "AudioWAV")


# --------------------------------------------------------------------------- TESS
def test_tess_spelling_variants_and_odd_names(tmp_path):
    root = make_tess(tmp_path / "tess")
    res = scan_corpus("tess", cfg(root), root)
    ids = {u.utt_id: u for u in res.utterances}
    assert len(ids) == 14 * 6 + 3
    assert ids["tess/OAF_back_ps"].raw_label == "ps"  # OAF_Pleasant_surprise folder
    assert ids["tess/YAF_bar_ps"].raw_label == "ps"  # YAF_pleasant_surprised folder
    assert ids["tess/OAF_bite_pleasant_surprise"].raw_label == "pleasant_surprise"
    assert ids["tess/OAF_bite_fear"].text == "bite"  # "OAF_bite_Fear .wav" in OAF_Fear
    assert ids["tess/YAF_bite_angry"].raw_label == "angry"
    u = ids["tess/YAF_beg_sad"]
    assert (u.speaker, u.gender, u.text, u.sample_rate) == ("YAF", "F", "beg", 24414)
    assert {u.speaker for u in res.utterances} == {"OAF", "YAF"}
    why = reasons(res)
    assert set(why) == {"OAF_dog_sad.wav", "YAF_dog_angry.wav", "OAF_dog_bored.wav"}
    assert "disagrees with folder emotion 'angry'" in why["OAF_dog_sad.wav"]
    assert "file speaker YAF but folder speaker OAF" in why["YAF_dog_angry.wav"]
    assert "'bored'" in why["OAF_dog_bored.wav"]
    assert res.ignored == {"files outside speaker folders": 1, "folders not named <OAF|YAF>_<emotion>": 1,
                           "hidden files (._*, .*)": 1}


def test_tess_nested_copy_hint(tmp_path):
    make_tess(tmp_path / "t" / "TESS Toronto emotional speech set data", words=["back"], extras=False)
    with pytest.raises(CorpusNotFound, match="TESS Toronto emotional speech set data: set corpora.tess.path"):
        scan_corpus("tess", cfg(tmp_path / "t"), tmp_path / "t")


# --------------------------------------------------------------------------- IEMOCAP
def test_iemocap_reads_category_lines_only(tmp_path):
    root = make_iemocap(tmp_path / "iemocap", sessions=[1, 2])
    res = scan_corpus("iemocap", cfg(root), root)
    ids = {u.utt_id: u for u in res.utterances}
    assert len(ids) == 2 * len(IEMOCAP_TURNS)
    u = ids["iemocap/Ses01F_impro01_M000"]  # male actor of a female-led dialog
    assert (u.speaker, u.gender, u.session, u.text, u.raw_label) == ("Ses01M", "M", "1", "Ses01F_impro01", "ang")
    assert ids["iemocap/Ses02F_impro01_F000"].raw_label == "neu"  # not "Anger" from Categorical/
    assert ids["iemocap/Ses02F_script01_1_F000"].speaker == "Ses02F"
    assert {u.raw_label for u in res.utterances} == {"neu", "hap", "ang", "sad", "exc", "fru", "xxx", "oth"}
    why = reasons(res)
    assert set(why) == {"Ses01F_impro01_F004.wav", "Ses02F_impro01_F000.wav"}
    assert "no category line for Ses01F_impro01_F004" in why["Ses01F_impro01_F004.wav"]
    assert "session 2" in why["Ses02F_impro01_F000.wav"]
    assert res.ignored == {"hidden files (._*, .*)": 1, "labelled turns without an audio file": 1}


def test_iemocap_not_found_says_licensed(tmp_path):
    with pytest.raises(CorpusNotFound) as err:
        scan_corpus("iemocap", cfg(tmp_path), tmp_path)
    msg = str(err.value)
    assert "licensed" in msg and "sail.usc.edu/iemocap" in msg and "corpora.iemocap.path" in msg
    make_iemocap(tmp_path / "IEMOCAP_full_release", sessions=[1], extras=False)
    with pytest.raises(CorpusNotFound, match="IEMOCAP_full_release: set corpora.iemocap.path"):
        scan_corpus("iemocap", cfg(tmp_path), tmp_path)


# --------------------------------------------------------------------------- generic CSV
def _csv_corpus(root: Path, lines: list[str], name: str = "meta.csv") -> Path:
    for rel in ("wav/a.wav", "wav/b.wav", "wav/c.wav"):
        write_wav(root / rel)
    (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_csv_adapter_reads_rows(tmp_path):
    root = _csv_corpus(tmp_path / "emo", ["path,speaker,emotion,gender,session,text",
                                           "wav/a.wav,s1,Angry,female,1,hello",
                                           "wav/b.wav,s2,sad,M,2,",
                                           ",,,,,",
                                           "wav/c.wav,s2,sad,,2,"])
    write_junk(root / "wav" / "bad.wav")
    with (root / "meta.csv").open("a") as fh:
        fh.write("wav/bad.wav,s3,sad,,,\n")
    res = scan_corpus("emodb", cfg(root, adapter="csv", csv="meta.csv"), root)
    assert [u.utt_id for u in res.utterances] == ["emodb/wav/a", "emodb/wav/b", "emodb/wav/c"]
    a = res.utterances[0]
    assert (a.corpus, a.speaker, a.raw_label, a.gender, a.session, a.text) == ("emodb", "s1", "Angry", "F", "1", "hello")
    assert a.path == str(root / "wav" / "a.wav")
    assert [why for _, why in res.skipped][0].startswith("unreadable audio header")
    # an absolute csv path works too
    res2 = scan_corpus("emodb", cfg(root, adapter="csv", csv=str(root / "meta.csv")), root)
    assert len(res2.utterances) == 3


@pytest.mark.parametrize("lines, expected", [
    (["path,speaker", "wav/a.wav,s1"], r"missing column\(s\) \['emotion'\]"),
    (["path,speaker,emotion", "wav/a.wav,s1,sad", "wav/zzz.wav,s1,sad"], r"line 3: audio file .*zzz.wav not found"),
    (["path,speaker,emotion", "wav/a.wav,,sad"], r"line 2: empty speaker"),
    (["path,speaker,emotion", "wav/a.wav,s1,sad", "wav/b.wav,s1, "], r"line 3: empty emotion"),
    (["path,speaker,emotion", "wav/a.wav,s1,sad", "wav/b.wav,s1,sad", "wav/./a.wav,s2,sad"],
     r"line 4: duplicate path 'wav/./a.wav' \(first on line 2\)"),
    (["path,speaker,emotion,gender", "wav/a.wav,s1,sad,X"], r"line 2: gender 'X'"),
    # a.wav and a.flac would be one clip id: refused, naming both files, instead of one silently dropped
    (["path,speaker,emotion", "wav/a.wav,s1,sad", "wav/a.flac,s1,angry"],
     r"line 3: 'wav/a.flac' and 'wav/a.wav' \(line 2\) would share the clip id 'wav/a'"),
])
def test_csv_adapter_errors_name_file_line_and_problem(tmp_path, lines, expected):
    root = _csv_corpus(tmp_path / "emo", lines)
    with pytest.raises(CsvCorpusError, match=expected) as err:
        scan_corpus("emodb", cfg(root, adapter="csv", csv="meta.csv"), root)
    assert str(root / "meta.csv") in str(err.value)


def test_csv_adapter_missing_files(tmp_path):
    with pytest.raises(CsvCorpusError, match="needs `csv:`"):
        scan_corpus("emodb", cfg(tmp_path, adapter="csv"), tmp_path)
    with pytest.raises(CorpusNotFound, match=r"metadata CSV .*nope.csv not found; set corpora.emodb.csv"):
        scan_corpus("emodb", cfg(tmp_path, adapter="csv", csv="nope.csv"), tmp_path)


# --------------------------------------------------------------------------- FLAC and other formats
def _to_format(root: Path, suffix: str) -> int:
    """Re-encode every .wav under `root` as `suffix` (soundfile picks the format from it); returns the count."""
    wavs = [p for p in root.rglob("*.wav") if not p.name.startswith(".")]
    for wav in wavs:
        try:
            data, sr = sf.read(str(wav), dtype="float32")
        except sf.LibsndfileError:  # the fixtures' corrupt files stay corrupt
            wav.rename(wav.with_suffix(suffix))
            continue
        sf.write(str(wav.with_suffix(suffix)), data, sr, format=suffix[1:].upper(), subtype="PCM_16")
        wav.unlink()
    return len(wavs)


def test_ravdess_in_flac_with_any_suffix_case(tmp_path):
    """Corpus mirrors ship FLAC (and upper-case suffixes): read like the WAV originals, mp3 ignored."""
    root = make_ravdess(tmp_path / "ravdess", actors=(1, 2), emotions=("03", "05"), extras=False)
    _to_format(root, ".flac")
    (root / "Actor_02" / "03-01-05-01-02-01-02.flac").rename(root / "Actor_02" / "03-01-05-01-02-01-02.FLAC")
    sf.write(str(root / "Actor_02" / "03-01-04-01-01-01-02.ogg"), np.zeros(1600, np.float32) + 0.1, 16000,
             format="OGG", subtype="VORBIS")
    write_junk(root / "Actor_01" / "03-01-04-01-01-01-01.mp3")
    res = scan_corpus("ravdess", cfg(root), root)
    assert len(res.utterances) == 2 * 2 * 2 + 1 and not res.skipped
    u = next(u for u in res.utterances if u.utt_id == "ravdess/03-01-05-01-02-01-02")
    assert u.path.endswith(".FLAC") and u.sample_rate == 48000 and u.duration_s == pytest.approx(0.2, abs=1e-3)
    assert res.ignored == {"non-audio files (.mp3)": 1}


@pytest.mark.parametrize("name, make", [("crema_d", lambda r: make_crema(r, extras=False)),
                                        ("tess", lambda r: make_tess(r, extras=False)),
                                        ("iemocap", lambda r: make_iemocap(r, extras=False))])
def test_every_adapter_reads_a_flac_copy_of_its_corpus(tmp_path, name, make):
    wav_scan = scan_corpus(name, cfg(make(tmp_path / "wav")), tmp_path / "wav")
    flac_root = make(tmp_path / "flac")
    assert _to_format(flac_root, ".flac") > 0
    flac_scan = scan_corpus(name, cfg(flac_root), flac_root)
    assert [u.utt_id for u in flac_scan.utterances] == [u.utt_id for u in wav_scan.utterances]
    assert all(u.path.endswith(".flac") for u in flac_scan.utterances)
    assert [(u.speaker, u.raw_label, u.duration_s) for u in flac_scan.utterances] == \
        [(u.speaker, u.raw_label, u.duration_s) for u in wav_scan.utterances]
