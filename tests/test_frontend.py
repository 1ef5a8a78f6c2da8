"""The audio front end: gain normalisation, silence trimming, instance norm, padding policy."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import yaml

from ser.config import FeatureParams, ParamsError, StoreFrontEnd, load_params
from ser.data.manifest import Utterance, write_manifest
from ser.features.audio import active_rms_dbfs, condition, condition_span, load_audio, loudness_lufs, peak_dbfs
from ser.features.precompute import (SILENCE_DB, feature_params_from_meta, fit_frames, mel_features, mel_input,
                          normalise, precompute_mels, precompute_waves)
from ser.features.stores import FeatureStore

REPO = Path(__file__).resolve().parents[1]
SR = 16000
OFF = FeatureParams(frames=120, gain="none", trim_db=None)  # front end off: only what a test turns on


def speechlike(seconds: float, seed: int = 0, amp: float = 0.3) -> np.ndarray:
    """Noise with a 4 Hz syllable envelope and a harmonic: level varies over time like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    y = env * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t) + 0.3 * rng.standard_normal(t.size))
    return (amp * y / np.max(np.abs(y))).astype(np.float32)


# --------------------------------------------------------------------------- gain
@pytest.mark.parametrize("mode, target, measure", [
    ("peak", -3.0, lambda w: peak_dbfs(w)),
    ("rms", -25.0, lambda w: active_rms_dbfs(w, SR)),
    ("loudness", -23.0, lambda w: loudness_lufs(w, SR)),
])
def test_gain_reaches_its_target_level(mode, target, measure) -> None:
    fp = replace(OFF, gain=mode, gain_dbfs=target)
    for amp in (0.01, 0.3):
        out = condition(speechlike(1.5, amp=amp), fp)
        assert measure(out) == pytest.approx(target, abs=0.05)
        assert out.dtype == np.float32


def test_loudness_of_a_full_scale_1khz_sine_is_minus_3_lufs() -> None:
    """BS.1770's calibration point (at 48 kHz, where its coefficients are tabled)."""
    t = np.arange(2 * 48000) / 48000
    assert loudness_lufs(np.sin(2 * np.pi * 997 * t), 48000) == pytest.approx(-3.01, abs=0.02)


def test_gain_is_limited_so_no_sample_clips() -> None:
    """A clip whose target gain would push peaks past 0 dBFS is scaled down to a 0 dBFS peak instead."""
    wave = speechlike(1.0, amp=0.05)
    wave[8000] = 0.5  # a click: crest factor far above the target's headroom
    out = condition(wave, replace(OFF, gain="rms", gain_dbfs=-3.0))
    assert np.max(np.abs(out)) == pytest.approx(1.0, abs=1e-6)
    assert np.max(np.abs(out)) <= 1.0
    assert active_rms_dbfs(out, SR) < -3.0  # below its target rather than clipped


@pytest.mark.parametrize("mode", ["peak", "rms", "loudness"])
def test_a_20_db_quieter_copy_gives_the_same_features(mode) -> None:
    fp = replace(OFF, gain=mode, gain_dbfs=-20.0 if mode != "peak" else -1.0, trim_db=60.0)
    loud = speechlike(1.0)
    quiet = (loud * np.float32(10 ** (-20 / 20))).astype(np.float32)
    a, b = condition(loud, fp), condition(quiet, fp)
    np.testing.assert_allclose(a, b, atol=1e-6)
    mel_a, len_a = mel_features(a, fp)
    mel_b, len_b = mel_features(b, fp)
    assert len_a == len_b
    np.testing.assert_allclose(mel_a, mel_b, atol=1e-3)
    # Without gain normalisation the log-mels differ by the 20 dB.
    off = replace(fp, gain="none")
    diff = mel_features(condition(loud, off), off)[0] - mel_features(condition(quiet, off), off)[0]
    assert np.median(diff[:, :len_a]) == pytest.approx(20.0, abs=0.5)


# --------------------------------------------------------------------------- trim
def test_trim_removes_digital_silence_and_keeps_speech() -> None:
    speech = speechlike(1.0)
    wave = np.concatenate([np.zeros(int(0.3 * SR)), speech, np.zeros(int(0.4 * SR))]).astype(np.float32)
    fp = replace(OFF, trim_db=60.0)
    out, start = condition_span(wave, fp)
    assert out[0] != 0 and out[-1] != 0  # no leading or trailing digital zeros
    first = int(np.flatnonzero(speech)[0])
    assert start == int(0.3 * SR) + first
    np.testing.assert_array_equal(out, wave[start:start + out.shape[0]])
    assert out.shape[0] == np.flatnonzero(speech)[-1] - first + 1  # all of the speech is kept
    np.testing.assert_array_equal(condition(wave, OFF), wave)  # trim_db null: off


def test_trim_cuts_quiet_lead_in_by_threshold_with_a_margin() -> None:
    rng = np.random.default_rng(1)
    hiss = (1e-4 * rng.standard_normal(int(0.5 * SR))).astype(np.float32)  # ~70 dB below the speech
    wave = np.concatenate([hiss, speechlike(1.0), hiss]).astype(np.float32)
    out, start = condition_span(wave, replace(OFF, trim_db=40.0))
    assert 0.5 * SR - 0.08 * SR <= start <= 0.5 * SR - 0.03 * SR  # ~50 ms of margin kept before the onset
    assert out.shape[0] < 1.2 * SR
    kept, _ = condition_span(wave, replace(OFF, trim_db=90.0))  # hiss is within 90 dB: kept
    assert kept.shape[0] == wave.shape[0]


def test_trim_never_goes_below_the_minimum_duration() -> None:
    wave = np.zeros(SR, dtype=np.float32)
    wave[8000:8160] = speechlike(0.01)  # a 10 ms burst in 1 s of silence
    fp = replace(OFF, trim_db=60.0, min_duration_s=0.25)
    out, start = condition_span(wave, fp)
    assert out.shape[0] == int(0.25 * SR) and start <= 8000 and start + out.shape[0] >= 8160


# --------------------------------------------------------------------------- instance norm, padding
@pytest.mark.parametrize("mode", ["mean", "mean_std"])
def test_instance_norm_centres_each_bin_over_valid_frames(mode) -> None:
    fp = replace(OFF, n_mels=32, instance_norm=mode)
    mel, length = mel_features(speechlike(0.8), fp)  # 81 valid frames of 120
    assert length == 81
    valid = mel[:, :length].astype(np.float64)
    np.testing.assert_allclose(valid.mean(axis=1), 0.0, atol=1e-3)
    if mode == "mean_std":
        raw = mel_features(speechlike(0.8), replace(fp, instance_norm="none"))[0][:, :length]
        varied = raw.std(axis=1) > 1.0
        np.testing.assert_allclose(valid.std(axis=1)[varied], 1.0, atol=1e-3)
    assert (mel[:, length:] < valid.min(axis=1, keepdims=True)).all()  # padding still reads as silence
    # Level-invariant on its own: a 20 dB quieter clip gives the same features.
    quiet = mel_features((speechlike(0.8) * np.float32(0.1)), fp)[0]
    np.testing.assert_allclose(quiet[:, :length], valid, atol=2e-3)


def test_repeat_padding_fills_with_the_clip_and_counts_every_frame() -> None:
    mel = np.arange(12, dtype=np.float32).reshape(2, 6)
    out, length = fit_frames(mel, 15, "center", "repeat")
    assert length == 15
    np.testing.assert_array_equal(out[:, :6], mel)
    np.testing.assert_array_equal(out[:, 6:12], mel)
    np.testing.assert_array_equal(out[:, 12:], mel[:, :3])
    silent, n = fit_frames(mel, 15, "center", "silence")
    assert n == 6 and (silent[:, 6:] == SILENCE_DB).all()
    long, n = fit_frames(np.zeros((2, 20), np.float32), 15, "center", "repeat")  # longer: cropped as before
    assert long.shape == (2, 15) and n == 15
    fp = replace(OFF, pad="repeat", instance_norm="mean")
    feats, length = mel_features(speechlike(0.5), fp)
    assert length == fp.frames and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats[:, 51:102], feats[:, :51])


# --------------------------------------------------------------------------- params
@pytest.mark.parametrize("key, value, message", [
    ("gain", "lufs", "features.gain"),
    ("gain_dbfs", 6.0, "gain_dbfs"),
    ("trim_db", -10, "trim_db"),
    ("instance_norm", "std", "features.instance_norm"),
    ("pad", "zeros", "features.pad"),
    ("mel_norm", "global", "features.mel_norm"),
])
def test_bad_front_end_params_fail_at_load_naming_the_key(tmp_path, key, value, message) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_trim_db_null_loads_as_off(tmp_path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"].update(trim_db=None, gain="peak", gain_dbfs=-1)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    fp = load_params(path).features
    assert fp.trim_db is None and fp.gain == "peak" and fp.gain_dbfs == -1.0


def test_each_store_kind_can_have_its_own_front_end(tmp_path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"].update(gain="loudness", trim_db=60.0,
                              front_end={"egemaps": {"gain": "none", "trim": False}, "waves": {"gain_dbfs": -30}})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    fp = load_params(path).features
    smile, waves, mels = fp.for_store("egemaps"), fp.for_store("waves"), fp.for_store("mels")
    assert (smile.gain, smile.trim_db) == ("none", None)
    assert (waves.gain, waves.gain_dbfs, waves.trim_db) == ("loudness", -30.0, 60.0)
    assert (mels.gain, mels.gain_dbfs, mels.trim_db) == ("loudness", -23.0, 60.0) and mels.front_end is None
    for bad, message in (({"spectrogram": {"gain": "none"}}, "front_end: unknown store kind 'spectrogram'"),
                         ({"mels": {"gain_dbfs": 9}}, r"front_end\.mels: gain_dbfs must be in"),
                         ({"mels": {"gain": "lufs"}}, r"features\.front_end\.mels\.gain"),
                         ({"mels": {"trim": False, "trim_db": 30}}, "trim: false with a trim_db")):
        params["features"]["front_end"] = bad
        path.write_text(yaml.safe_dump(params))
        with pytest.raises(ParamsError, match=message):
            load_params(path)


def test_a_store_built_with_its_own_front_end_records_it(tmp_path) -> None:
    """The store's meta holds the settings it was built with, so training and `ser predict` follow it."""
    manifest, _ = _manifest(tmp_path)
    fp = replace(OFF, gain="loudness", gain_dbfs=-23.0, trim_db=60.0,
                 front_end={"waves": StoreFrontEnd(gain="none", trim=False)})
    precompute_waves(manifest, "s", tmp_path / "waves", fp.for_store("waves"), 1, labels=["neutral"])
    meta = _meta(tmp_path / "waves")
    assert {k: meta["features"][k] for k in ("gain", "trim_db")} == {"gain": "none", "trim_db": None}
    assert "front_end" not in meta["features"]
    assert feature_params_from_meta(meta).gain == "none"
    store = FeatureStore(tmp_path / "waves" / "f1", "test")
    assert store.index[0].length == int(0.2 * SR) + int(0.7 * SR) + 800 and store[0][0] == 0  # untrimmed


def test_old_store_meta_reads_as_front_end_off() -> None:
    """A store written before these params existed was built without them, not with today's defaults."""
    old = {k: getattr(OFF, k) for k in ("sample_rate", "n_mels", "n_fft", "win_length", "hop_length", "fmin",
                                         "fmax", "frames", "crop", "min_duration_s", "silence_dbfs")}
    fp = feature_params_from_meta({"features": old})
    assert (fp.gain, fp.trim_db, fp.instance_norm, fp.pad, fp.mel_norm) == ("none", None, "none", "silence", "train")


# --------------------------------------------------------------------------- stores and inference
def _meta(root: Path) -> dict:
    """A store's meta as training and inference see it: the study meta with fold 1's."""
    return {**json.loads((root / "meta.json").read_text()), **json.loads((root / "f1" / "meta.json").read_text())}


def _manifest(tmp_path: Path) -> tuple[Path, list[Utterance]]:
    rows = []
    for n, (split, secs, amp) in enumerate([("train", 0.9, 0.3), ("train", 1.6, 0.02), ("test", 0.7, 0.003)]):
        wave = np.concatenate([np.zeros(int(0.2 * SR)), speechlike(secs, seed=n, amp=amp), np.zeros(800)])
        path = tmp_path / "audio" / f"clip{n}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), SR, subtype="PCM_16")
        rows.append(Utterance(utt_id=f"c/{n}", corpus="c", speaker=f"s{n}", path=str(path), duration_s=secs,
                              sample_rate=SR, raw_label="neutral", emotion="neutral", split=split))
    manifest = tmp_path / "m"
    write_manifest(rows, manifest / "s" / "f1.csv")
    return manifest, rows


@pytest.mark.parametrize("instance_norm, pad", [("none", "silence"), ("mean_std", "repeat"), ("mean", "silence")])
def test_mel_store_records_front_end_and_inference_reproduces_it(tmp_path, instance_norm, pad) -> None:
    manifest, rows = _manifest(tmp_path)
    fp = replace(OFF, gain="loudness", gain_dbfs=-23.0, trim_db=60.0, instance_norm=instance_norm, pad=pad)
    precompute_mels(manifest, "s", tmp_path / "mels", fp, 1, labels=["neutral", "sad"])
    meta = _meta(tmp_path / "mels")
    for key in ("gain", "gain_dbfs", "trim_db", "instance_norm", "pad"):
        assert meta["features"][key] == getattr(fp, key)
    assert feature_params_from_meta(meta) == fp
    for split in ("train", "test"):
        store = FeatureStore(tmp_path / "mels" / "f1", split)
        for i, row in enumerate(store.index):
            wave = condition(load_audio(next(r.path for r in rows if r.utt_id == row.utt_id), SR), fp)
            mel, length = mel_input(wave, meta)
            np.testing.assert_array_equal(mel, store[i])  # `ser predict` reproduces the store exactly
            assert length == row.length == (fp.frames if pad == "repeat" else min(fp.frames, 1 + len(wave) // 160))


def test_wave_store_is_trimmed_and_gain_normalised(tmp_path) -> None:
    manifest, rows = _manifest(tmp_path)
    fp = replace(OFF, gain="peak", gain_dbfs=-1.0, trim_db=60.0)
    precompute_waves(manifest, "s", tmp_path / "waves", fp, 1, labels=["neutral"])
    meta = _meta(tmp_path / "waves")
    assert {k: meta["features"][k] for k in ("gain", "gain_dbfs", "trim_db")} == \
        {"gain": "peak", "gain_dbfs": -1.0, "trim_db": 60.0}
    store = FeatureStore(tmp_path / "waves" / "f1", "test")
    wave = store[0]
    assert wave[0] != 0 and wave[-1] != 0  # the 0.2 s of leading zeros is gone
    assert store.index[0].length < 0.2 * SR + 0.7 * SR
    assert peak_dbfs(wave) == pytest.approx(-1.0, abs=0.01)


# --------------------------------------------------------------------------- per-speaker normalisation
def channel(wave: np.ndarray) -> np.ndarray:
    """Another microphone and level: 20 dB quieter with a spectral tilt (1 - 0.6 z^-1: +12 dB to Nyquist)."""
    return (0.1 * scipy.signal.lfilter([1.0, -0.6], [1.0], wave)).astype(np.float32)


def _speaker_manifest(tmp_path: Path) -> tuple[Path, list[Utterance]]:
    """Speaker a (train), its clips again through `channel` as speaker b (test), a speaker c
    with clips in train and test (as under held_out_words) and a one-clip speaker d (test).
    Clips of 0.9 s are padded (81 of 120 frames); the others are cropped."""
    specs = [("a", "train", 1.4, 0, False), ("a", "train", 1.6, 1, False), ("a", "train", 0.9, 2, False),
             ("b", "test", 1.4, 0, True), ("b", "test", 1.6, 1, True), ("b", "test", 0.9, 2, True),
             ("c", "train", 1.3, 3, False), ("c", "test", 0.9, 4, False), ("d", "test", 1.5, 5, False)]
    rows = []
    for n, (speaker, split, secs, seed, other) in enumerate(specs):
        wave = speechlike(secs, seed=seed)
        path = tmp_path / "audio" / f"{speaker}{n}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, channel(wave) if other else wave, SR, subtype="FLOAT")
        rows.append(Utterance(utt_id=f"c/{n}", corpus="c", speaker=speaker, path=str(path), duration_s=secs,
                              sample_rate=SR, raw_label="neutral", emotion="neutral", split=split))
    manifest = tmp_path / "m"
    write_manifest(rows, manifest / "s" / "f1.csv")
    return manifest, rows


def _store_rows(root: Path) -> dict[str, tuple[np.ndarray, int, str]]:
    """utt_id -> (stored mel, valid length, speaker) over every split."""
    out = {}
    for split in ("train", "test"):
        store = FeatureStore(root / "f1", split)
        for i, row in enumerate(store.index):
            out[row.utt_id] = (np.array(store[i]), row.length, row.speaker)
    return out


@pytest.fixture(scope="module")
def speaker_stores(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("speaker_norm")
    manifest, rows = _speaker_manifest(tmp)
    fp = replace(OFF, mel_norm="speaker")
    for name, params, workers in (("speaker", fp, 1), ("speaker_w2", fp, 2), ("train", OFF, 1)):
        report = precompute_mels(manifest, "s", tmp / name, params, workers, labels=["neutral"])
        assert not report["skipped"], report["skipped_files"]
    return {"tmp": tmp, "rows": rows, "fp": fp}


def test_speaker_norm_z_scores_each_speakers_valid_frames(speaker_stores) -> None:
    tmp, fp = speaker_stores["tmp"], speaker_stores["fp"]
    stored = _store_rows(tmp / "speaker")
    raw = {r.utt_id: mel_features(condition(load_audio(r.path, SR), fp), fp) for r in speaker_stores["rows"]}
    for speaker in "abcd":
        ids = [u for u, (_, _, s) in stored.items() if s == speaker]
        valid = np.concatenate([stored[u][0][:, :stored[u][1]] for u in ids], axis=1).astype(np.float64)
        raw_valid = np.concatenate([raw[u][0][:, :raw[u][1]] for u in ids], axis=1).astype(np.float64)
        varied = raw_valid.std(axis=1) > 0.1  # an empty mel filter (constant -100 dB) is only centred
        np.testing.assert_allclose(valid.mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_allclose(valid.std(axis=1)[varied], 1.0, atol=1e-4)
    assert len({u for u, (_, _, s) in stored.items() if s == "c"}) == 2  # c's train and test clips pooled

    # Padding holds exactly what the train-normalised store holds: silence, the same for every speaker.
    meta = _meta(tmp / "speaker")
    train_meta = _meta(tmp / "train")
    assert meta["features"]["mel_norm"] == "speaker" and train_meta["features"]["mel_norm"] == "train"
    assert (meta["mean"], meta["std"]) == (train_meta["mean"], train_meta["std"])  # kept for inference
    by_train = _store_rows(tmp / "train")
    silence = normalise(np.full((fp.n_mels, 1), SILENCE_DB, np.float32), np.array(meta["mean"]),
                        np.array(meta["std"]))
    padded = [u for u, (_, length, _) in stored.items() if length < fp.frames]
    assert {stored[u][2] for u in padded} == {"a", "b", "c"}
    for u in padded:
        mel, length, _ = stored[u]
        np.testing.assert_array_equal(mel[:, length:], by_train[u][0][:, length:])
        np.testing.assert_array_equal(mel[:, length:], np.broadcast_to(silence, mel[:, length:].shape))


def test_speaker_norm_removes_a_speakers_channel(speaker_stores) -> None:
    """Speaker b is speaker a through another channel (-20 dB, tilted): per-speaker
    statistics give the same rows; the train statistics leave b offset."""
    tmp = speaker_stores["tmp"]
    for name, close in (("speaker", True), ("train", False)):
        stored = _store_rows(tmp / name)
        for a, b in (("c/0", "c/3"), ("c/1", "c/4"), ("c/2", "c/5")):
            (mel_a, length, _), (mel_b, length_b, _) = stored[a], stored[b]
            assert length == length_b
            diff = np.abs(mel_a - mel_b)
            if close:
                # Not exact: a mel band is wider than a constant-gain band of the tilt (worst in the
                # few lowest, near-empty bins); typically 0.01 std apart.
                assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.1, (diff.mean(), np.percentile(diff, 99))
            else:
                assert diff[:, :length].mean() > 0.5


def test_speaker_norm_store_does_not_depend_on_the_worker_count(speaker_stores) -> None:
    one, two = speaker_stores["tmp"] / "speaker", speaker_stores["tmp"] / "speaker_w2"
    for name in ("meta.json", "clips.csv", "f1/meta.json", "f1/train.csv", "f1/test.csv"):
        assert (one / name).read_text() == (two / name).read_text()
    np.testing.assert_array_equal(np.load(one / "clips.npy"), np.load(two / "clips.npy"))


def test_speaker_norm_inference_uses_the_files_own_statistics(speaker_stores) -> None:
    """One file has no speaker: `mel_input` normalises it as a one-clip speaker, which is
    exactly the store for speaker d, and close to, not equal to, a pooled speaker's row."""
    tmp, fp = speaker_stores["tmp"], speaker_stores["fp"]
    meta = _meta(tmp / "speaker")
    stored = _store_rows(tmp / "speaker")
    paths = {r.utt_id: r.path for r in speaker_stores["rows"]}
    for utt_id in ("c/8", "c/2"):  # d's only clip; a padded clip of speaker a
        mel, length = mel_input(condition(load_audio(paths[utt_id], SR), fp), meta)
        assert length == stored[utt_id][1]
        valid = mel[:, :length].astype(np.float64)
        np.testing.assert_allclose(valid.mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_array_equal(mel[:, length:], stored[utt_id][0][:, length:])  # padding as stored
        if utt_id == "c/8":
            np.testing.assert_array_equal(mel, stored[utt_id][0])
        else:
            assert not np.array_equal(mel, stored[utt_id][0])
