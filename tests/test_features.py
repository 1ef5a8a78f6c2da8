"""Audio decoding, log-mel parity with librosa, and the mel / wave feature stores."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import yaml

from ser.config import FeatureParams
from ser.data.manifest import ManifestError, Utterance, write_manifest
from ser.features import precompute as features
from ser.features.audio import AudioError, check_audio, load_audio
from ser.features.precompute import (SILENCE_DB, fit_frames, logmel, mel_for_inference, normalise, precompute_mels,
                          precompute_waves)
from ser.features.stores import FeatureStore, read_index, store_fingerprint

REPO = Path(__file__).resolve().parents[1]
# 1.2 s windows keep the stores tiny; front end off, for librosa parity (tests/test_frontend.py covers it)
FP = FeatureParams(frames=120, gain="none", trim_db=None)
LABELS = ["angry", "happy", "neutral", "sad"]


def librosa_logmel(wave: np.ndarray, fp: FeatureParams) -> np.ndarray:
    """The reference definition the stores promise to reproduce."""
    mel = librosa.feature.melspectrogram(
        y=wave, sr=fp.sample_rate, n_fft=fp.n_fft, hop_length=fp.hop_length, win_length=fp.win_length,
        n_mels=fp.n_mels, fmin=fp.fmin, fmax=fp.fmax, power=2.0, center=True, pad_mode="constant")
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def tone(seconds: float, sr: int, freq: float, amp: float = 0.3, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return path


def utt(path: Path, split: str, corpus: str = "iemocap", emotion: str = "neutral", n: int = 0) -> Utterance:
    return Utterance(utt_id=f"{corpus}_{split}_{n:03d}", corpus=corpus, speaker=f"{corpus}-{split}",
                     path=str(path), duration_s=1.0, sample_rate=16000, raw_label=emotion,
                     emotion=emotion, split=split)


# --------------------------------------------------------------------------- audio
def test_load_audio_matches_librosa_load(tmp_path: Path) -> None:
    stereo = np.stack([tone(1.3, 48000, 220), tone(1.3, 48000, 330, seed=1)], axis=1)
    cases = {
        "stereo48k.wav": (stereo, 48000),
        "mono16k.wav": (tone(0.9, 16000, 440), 16000),
        "tess_like.wav": (tone(1.1, 24414, 300), 24414),
        "six_channels.wav": (np.repeat(tone(0.5, 44100, 500)[:, None], 6, axis=1) * np.linspace(0.2, 1, 6), 44100),
    }
    for name, (data, sr) in cases.items():
        # int16 WAV takes load_audio's integer fast path; float and 24-bit files the generic one.
        for subtype in ("PCM_16", "PCM_24", "FLOAT"):
            path = write_wav(tmp_path / f"{subtype}_{name}", data.astype(np.float32), sr, subtype)
            ours = load_audio(path, 16000)
            ref, ref_sr = librosa.load(path, sr=16000)
            assert ours.dtype == np.float32 and ours.ndim == 1 and ref_sr == 16000
            assert ours.shape == ref.shape, name
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6, err_msg=f"{subtype} {name}")


def test_load_audio_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + os.urandom(64))
    with pytest.raises(AudioError, match="corrupt.wav") as err:
        load_audio(bad, 16000)
    assert err.value.reason == "unreadable"
    with pytest.raises(AudioError, match="nowhere.wav") as err:
        load_audio(tmp_path / "nowhere.wav", 16000)
    assert err.value.reason == "missing"


def test_check_audio_reasons() -> None:
    sr = 16000
    assert check_audio(np.zeros(0, np.float32), sr, 0.25, -60) == "empty"
    assert check_audio(tone(0.1, sr, 300), sr, 0.25, -60) == "too_short"
    assert check_audio(np.zeros(sr, np.float32), sr, 0.25, -60) == "silent"
    assert check_audio(tone(1.0, sr, 300, amp=1e-4, noise=0), sr, 0.25, -60) == "silent"  # -80 dBFS peak
    nan = tone(1.0, sr, 300)
    nan[10] = np.nan
    assert check_audio(nan, sr, 0.25, -60) == "non_finite"
    assert check_audio(tone(1.0, sr, 300, amp=0.01, noise=0), sr, 0.25, -60) is None  # -40 dBFS: quiet speech


# --------------------------------------------------------------------------- log-mel
@pytest.mark.parametrize("fp", [
    FeatureParams(),
    FeatureParams(n_mels=64, n_fft=512, win_length=320, hop_length=128, fmin=50.0, fmax=7600.0),
], ids=["default", "custom"])
def test_logmel_matches_librosa_definition(fp: FeatureParams) -> None:
    rng = np.random.default_rng(3)
    waves = [
        tone(2.0, 16000, 220),
        tone(1.0, 16000, 220, amp=0.9, noise=0.0),  # pure full-scale tone: needs librosa's float64 FFT
        (0.1 * rng.standard_normal(16000 + 77)).astype(np.float32),  # not a multiple of the hop
        tone(0.5, 16000, 3000, amp=1e-4, noise=0.0),  # near the -100 dB floor
        np.concatenate([np.zeros(4000), tone(0.5, 16000, 150), np.zeros(3000)]).astype(np.float32),
    ]
    for wave in waves:
        ours, ref = logmel(wave, fp), librosa_logmel(wave, fp)
        assert ours.dtype == np.float32
        assert ours.shape == ref.shape == (fp.n_mels, 1 + wave.size // fp.hop_length)
        assert np.abs(ours - ref).max() <= 1e-3 * (ref.max() - ref.min())


def test_fit_frames_pads_with_silence_and_crops() -> None:
    mel = np.arange(4 * 10, dtype=np.float32).reshape(4, 10)
    padded, valid = fit_frames(mel, 15, "center")
    assert padded.shape == (4, 15) and valid == 10
    np.testing.assert_array_equal(padded[:, :10], mel)
    assert (padded[:, 10:] == SILENCE_DB).all() and SILENCE_DB == -100.0

    centre, valid = fit_frames(mel, 4, "center")
    np.testing.assert_array_equal(centre, mel[:, 3:7])
    assert valid == 4
    start, _ = fit_frames(mel, 4, "start")
    np.testing.assert_array_equal(start, mel[:, :4])
    same, valid = fit_frames(mel, 10, "center")
    np.testing.assert_array_equal(same, mel)
    assert valid == 10
    with pytest.raises(ValueError, match="crop"):
        fit_frames(mel, 4, "end")


# --------------------------------------------------------------------------- stores
@pytest.fixture()
def study(tmp_path: Path) -> dict:
    """A cross-corpus study manifest with good clips in every split plus one bad file of each kind.

    Train is a quiet low tone, test a loud high noisy tone, so train-only and
    all-split statistics differ clearly.
    """
    audio = tmp_path / "audio"
    rows, good = [], []
    for n in range(3):
        path = write_wav(audio / f"train{n}.wav", tone(0.8 + 0.5 * n, 16000, 200 + 50 * n, amp=0.05, seed=n), 16000)
        rows.append(utt(path, "train", emotion=LABELS[n], n=n))
    stereo = np.stack([tone(2.0, 48000, 1500, amp=0.6, noise=0.05)] * 2, axis=1)
    rows.append(utt(write_wav(audio / "test0.wav", stereo, 48000), "test", n=0))
    rows.append(utt(write_wav(audio / "test1.wav", tone(1.0, 16000, 2500, amp=0.6, noise=0.05), 16000), "test", n=1))
    rows.append(utt(write_wav(audio / "adapt0.wav", tone(0.6, 48000, 700, amp=0.5), 48000), "adapt",
                    corpus="ravdess", n=0))
    rows.append(utt(write_wav(audio / "rav_test.wav", tone(0.7, 48000, 900, amp=0.5), 48000), "test",
                    corpus="ravdess", n=1))
    good = [r.utt_id for r in rows]
    # One bad file of each kind, spread over the splits.
    corrupt = audio / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(40))
    bad = {
        "unreadable": utt(corrupt, "train", n=10),
        "missing": utt(audio / "gone.wav", "train", n=11),
        "empty": utt(write_wav(audio / "empty.wav", np.zeros(0, np.float32), 16000), "test", n=12),
        "silent": utt(write_wav(audio / "silent.wav", np.zeros(16000, np.float32), 16000), "train", n=13),
        "too_short": utt(write_wav(audio / "short.wav", tone(0.1, 16000, 300), 16000), "adapt",
                         corpus="ravdess", n=14),
    }
    unassigned = utt(audio / "train0.wav", "unassigned", n=20)
    ordered = rows[:2] + [bad["unreadable"], bad["missing"]] + rows[2:4] + [bad["empty"], bad["silent"]] \
        + rows[4:] + [bad["too_short"], unassigned]
    manifests = tmp_path / "manifests"
    write_manifest(ordered, manifests / "cross_corpus" / "f1.csv")
    return {"manifests": manifests, "ordered": ordered, "rows": {r.utt_id: r for r in rows}, "good": good,
            "bad": bad, "tmp": tmp_path}


def expected_mel(path: str, fp: FeatureParams) -> tuple[np.ndarray, int]:
    wave, _ = librosa.load(path, sr=fp.sample_rate)
    return fit_frames(librosa_logmel(wave, fp), fp.frames, fp.crop)


def test_precompute_mels_store(study: dict) -> None:
    out = study["tmp"] / "mels"
    report = precompute_mels(study["manifests"], "cross_corpus", out, FP, 2, labels=LABELS, target="ravdess")

    # Bad files are skipped, counted and listed; everything else is written.
    assert report["skipped"] == {"empty": 1, "missing": 1, "silent": 1, "too_short": 1, "unreadable": 1}
    listed = {s["utt_id"]: s for s in report["skipped_files"]}
    for reason, row in study["bad"].items():
        assert listed[row.utt_id]["reason"] == reason and listed[row.utt_id]["path"] == row.path
    assert report["folds"] == {"1": {"train": 3, "test": 3, "adapt": 1}}
    assert report["files"] == 12 and report["clips"] == 7  # the unassigned row is not a store clip
    assert not (out / "f1" / "val.csv").exists()
    assert not list(out.rglob("*.partial")) and not list(out.rglob("*.tmp"))

    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "mels" and meta["labels"] == LABELS and meta["sample_rate"] == 16000
    assert meta["features"]["frames"] == 120 and meta["folds"] == [1] and meta["clips"] == 7
    assert meta["content_sha256"] == store_fingerprint(out)
    fold_meta = json.loads((out / "f1" / "meta.json").read_text())
    assert fold_meta["splits"] == report["folds"]["1"]

    # Statistics: valid frames of the fold's train split only (recomputed from the librosa definition).
    train_ids = [u for u in study["good"] if study["rows"][u].split == "train"]
    fitted = [expected_mel(study["rows"][u].path, FP) for u in train_ids]
    valid_frames = np.concatenate([m[:, :v] for m, v in fitted], axis=1).astype(np.float64)
    np.testing.assert_allclose(fold_meta["mean"], valid_frames.mean(axis=1), atol=1e-3)
    np.testing.assert_allclose(fold_meta["std"], np.maximum(valid_frames.std(axis=1), 1e-3), rtol=1e-4, atol=1e-3)
    padded_mean = np.concatenate([m for m, _ in fitted], axis=1).mean(axis=1)
    assert np.abs(np.array(fold_meta["mean"]) - padded_mean).max() > 1.0  # padding is excluded
    test_ids = [u for u in study["good"] if study["rows"][u].split == "test"]
    all_frames = np.concatenate([valid_frames] + [expected_mel(study["rows"][u].path, FP)[0] for u in test_ids],
                                axis=1)
    assert np.abs(np.array(fold_meta["mean"]) - all_frames.mean(axis=1)).max() > 1.0  # not from every split

    # Every clip once in clips.npy (raw log-mels, manifest order); the fold's index rows point into it
    # and read normalised with the fold's statistics, with the domain of the target corpus.
    clips = np.load(out / "clips.npy")
    assert clips.shape == (7, FP.n_mels, FP.frames) and clips.dtype == np.float32
    mean, std = np.array(fold_meta["mean"]), np.array(fold_meta["std"])
    for split in ("train", "test", "adapt"):
        store = FeatureStore(out / "f1", split)
        ids = [u for u in study["good"] if study["rows"][u].split == split]
        assert [r.utt_id for r in store.index] == ids
        assert store.meta["mean"] == fold_meta["mean"] and store.meta["kind"] == "mels"
        for i, row in enumerate(store.index):
            src = study["rows"][row.utt_id]
            mel, valid = expected_mel(src.path, FP)
            assert row.offset == study["good"].index(row.utt_id) and row.length == valid
            assert row.domain == (1 if src.corpus == "ravdess" else 0)
            assert (row.corpus, row.speaker, row.emotion) == (src.corpus, src.speaker, src.emotion)
            np.testing.assert_allclose(clips[row.offset], mel, atol=1e-4)
            np.testing.assert_allclose(store[i], normalise(mel, mean, std), atol=1e-4)
            np.testing.assert_array_equal(store[i], normalise(clips[row.offset], mean, std))
            # `ser predict` path: identical floats to the store.
            np.testing.assert_array_equal(mel_for_inference(load_audio(src.path, 16000), store.meta), store[i])
    assert FeatureStore(out / "f1", "test", corpus="ravdess").index[0].utt_id == "ravdess_test_001"
    train = FeatureStore(out / "f1", "train")
    np.testing.assert_array_equal(train.labels(LABELS), [0, 1, 2])


def test_folds_share_clips_and_normalise_with_their_own_train_split(study: dict) -> None:
    """Fold 2 trains on other clips: the same clips.npy, another index, other statistics."""
    swapped = [dataclasses.replace(r, split={"train": "test", "test": "train"}.get(r.split, r.split))
               if r.utt_id in study["rows"] and r.corpus != "ravdess" else r for r in study["ordered"]]
    write_manifest(swapped, study["manifests"] / "cross_corpus" / "f2.csv")
    out = study["tmp"] / "mels2"
    report = precompute_mels(study["manifests"], "cross_corpus", out, FP, 1, labels=LABELS, target="ravdess")
    assert report["clips"] == 7 and sorted(report["folds"]) == ["1", "2"]
    f1, f2 = FeatureStore(out / "f1", "train"), FeatureStore(out / "f2", "train")
    assert {r.utt_id for r in f2.index} == {u for u in study["good"] if study["rows"][u].split == "test"
                                            and study["rows"][u].corpus != "ravdess"}
    assert np.abs(np.array(f1.meta["mean"]) - np.array(f2.meta["mean"])).max() > 1.0
    # the same clip reads differently in the two folds: each fold's statistics
    clip = FeatureStore(out / "f1", "test").index[0]
    x1 = FeatureStore(out / "f1", "test")[0]
    x2 = f2[[r.utt_id for r in f2.index].index(clip.utt_id)]
    assert not np.allclose(x1, x2)
    # a fold that no longer exists is removed on the next run
    (study["manifests"] / "cross_corpus" / "f2.csv").unlink()
    precompute_mels(study["manifests"], "cross_corpus", out, FP, 1, labels=LABELS, target="ravdess")
    assert not (out / "f2").exists() and json.loads((out / "meta.json").read_text())["folds"] == [1]


def test_workers_one_and_two_give_identical_stores(study: dict) -> None:
    for kind, fn in (("mels", precompute_mels), ("waves", precompute_waves)):
        roots = [study["tmp"] / f"{kind}_w{w}" for w in (1, 2)]
        for workers, root in zip((1, 2), roots):
            fn(study["manifests"], "cross_corpus", root, FP, workers, labels=LABELS, target="ravdess")
        for name in ("meta.json", "clips.csv", "f1/meta.json", *(f"f1/{s}.csv" for s in ("train", "test", "adapt"))):
            assert (roots[0] / name).read_text() == (roots[1] / name).read_text()
        np.testing.assert_array_equal(np.load(roots[0] / "clips.npy"), np.load(roots[1] / "clips.npy"))


def test_precompute_waves_store(study: dict) -> None:
    out = study["tmp"] / "waves"
    report = precompute_waves(study["manifests"], "cross_corpus", out, FP, 2, labels=LABELS, target="ravdess")
    assert sum(report["skipped"].values()) == 5 and report["folds"] == {"1": {"train": 3, "test": 3, "adapt": 1}}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "waves" and meta["sample_rate"] == 16000 and meta["target"] == "ravdess"
    clips = np.load(out / "clips.npy")
    lengths = [r.length for r in read_index(out / "clips.csv")]
    assert clips.ndim == 1 and clips.shape[0] == sum(lengths)
    for split in ("train", "test", "adapt"):
        store = FeatureStore(out / "f1", split)
        ids = [u for u in study["good"] if study["rows"][u].split == split]
        assert [r.utt_id for r in store.index] == ids
        for i, row in enumerate(store.index):
            src = study["rows"][row.utt_id]
            ref, _ = librosa.load(src.path, sr=16000)
            assert row.domain == (1 if src.corpus == "ravdess" else 0)
            np.testing.assert_allclose(store[i], ref, atol=1e-6)
    # A 2 s 48 kHz file became 32000 samples at 16 kHz.
    assert FeatureStore(out / "f1", "test").index[0].length == 32000


def test_rerun_removes_stale_splits_and_needs_train(study: dict, tmp_path: Path) -> None:
    out = tmp_path / "mels"
    precompute_mels(study["manifests"], "cross_corpus", out, FP, 1, labels=LABELS, target="ravdess")
    assert (out / "f1" / "adapt.csv").exists()
    rows = [r for r in study["rows"].values() if r.split != "adapt"]
    write_manifest(rows, tmp_path / "smaller" / "s" / "f1.csv")
    report = precompute_mels(tmp_path / "smaller", "s", out, FP, 1, labels=LABELS, target="ravdess")
    assert "adapt" not in report["folds"]["1"] and not (out / "f1" / "adapt.csv").exists()

    write_manifest([r for r in rows if r.split != "train"], tmp_path / "no_train" / "s" / "f1.csv")
    with pytest.raises(RuntimeError, match="fold 1: no usable train rows"):
        precompute_mels(tmp_path / "no_train", "s", tmp_path / "other", FP, 1, labels=LABELS)
    with pytest.raises(ManifestError, match=r"no fold manifests \(f1\.csv, \.\.\.\); run `dvc repro build-metadata`"):
        precompute_mels(tmp_path / "nowhere", "s", tmp_path / "other", FP, 1, labels=LABELS)


def test_unknown_label_fails_early(study: dict) -> None:
    with pytest.raises(ValueError, match="not in the study labels"):
        precompute_mels(study["manifests"], "cross_corpus", study["tmp"] / "x", FP, 1, labels=["angry", "happy"])


def test_stage_scripts_build_every_study(tmp_path: Path) -> None:
    """The stage scripts loop over params.studies and write one store per study plus the report."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"].update(frames=50)
    params["runtime"] = {"workers": 2, "num_workers": 0}
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    manifests = tmp_path / "manifests"
    for name, study in params["studies"].items():
        rows = []
        for k, corpus in enumerate(study["corpora"]):
            path = write_wav(tmp_path / "audio" / f"{name}_{corpus}.wav", tone(0.6, 16000, 300 + 100 * k), 16000)
            split = "adapt" if corpus == study.get("target") else "train"
            rows.append(utt(path, split, corpus=corpus, emotion=study["labels"][0], n=k))
        write_manifest(rows, manifests / name / "f1.csv")
    for kind in ("mels", "waves"):
        report = tmp_path / f"{kind}.json"
        subprocess.run([sys.executable, str(REPO / "stages" / "precompute.py"), "--kind", kind, "--params", str(params_path),
                        "--manifests", str(manifests), "--out-dir", str(tmp_path / kind), "--report", str(report)],
                       check=True, cwd=tmp_path, capture_output=True, text=True)
        result = json.loads(report.read_text())
        assert sorted(result) == sorted(params["studies"])
        cross = FeatureStore(tmp_path / kind / "cross_corpus" / "f1", "adapt")
        assert [r.domain for r in cross.index] == [1]
        multi = FeatureStore(tmp_path / kind / "multi_corpus" / "f1", "train")
        assert len(multi) == len(params["studies"]["multi_corpus"]["corpora"])
        assert {r.domain for r in multi.index} == {0}


def test_large_store_path_compacts_on_disk_identically(study: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores above the in-RAM limit are compacted in the scratch memmap: same bytes."""
    in_ram = study["tmp"] / "ram"
    precompute_mels(study["manifests"], "cross_corpus", in_ram, FP, 1, labels=LABELS, target="ravdess")
    monkeypatch.setattr(features, "_IN_RAM_BYTES", 0)
    on_disk = study["tmp"] / "disk"
    precompute_mels(study["manifests"], "cross_corpus", on_disk, FP, 1, labels=LABELS, target="ravdess")
    np.testing.assert_array_equal(np.load(in_ram / "clips.npy"), np.load(on_disk / "clips.npy"))
    assert not list(on_disk.glob("*.partial"))


def test_flac_decodes_like_the_same_pcm16_wav(tmp_path: Path) -> None:
    """The int16 fast path is WAV-only; FLAC goes through libsndfile's float path, same floats."""
    stereo = np.stack([tone(0.7, 22050, 220), tone(0.7, 22050, 330, seed=1)], axis=1)
    ints = np.round(stereo * 32767).astype(np.int16)  # the same samples in both files (writers round differently)
    wav = write_wav(tmp_path / "a.wav", ints, 22050)
    flac = tmp_path / "a.FLAC"
    sf.write(flac, ints, 22050, format="FLAC", subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(flac, 16000), load_audio(wav, 16000))
    ref, _ = librosa.load(flac, sr=16000)
    np.testing.assert_array_equal(load_audio(flac, 16000), ref)
