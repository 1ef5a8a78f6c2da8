"""`ser predict`: feature parity with evaluation, windows, formats, error rows, 4-bit QLoRA.

A tiny study is built the way the pipeline builds it: synthetic tone clips
written to tmp_path in several formats, sample rates and channel counts, a
manifest, the real precompute stages (16 mel bins, 40 frames = 0.4 s), then a
tiny CRNN, a tiny random wav2vec2 encoder and a tiny QLoRA one trained with the
real trainer. Predictions from the audio files must equal what evaluation gives
from the stores for the same clips.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ser.config import (CrnnParams, EncoderParams, FeatureParams, LoraParams, ModelParams, OptimParams,
                        TrainParams, load_params)
from ser.data.manifest import Utterance, manifest_path, write_manifest
from ser.eval.evaluate import evaluate_model
from ser.features.dataset import FeatureDataset, collate_batch
from ser.features.precompute import precompute_mels, precompute_waves
from ser.features.stores import FeatureStore, fold_root
from ser.infer.cli import main
from ser.infer.predict import Predictor, collect_audio, render, resolve_device, window_starts
from ser.models.checkpoint import load_checkpoint
from ser.models.embeddings import precompute_embeddings
from ser.train.learners import train_model

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]
TONES = (220.0, 520.0, 1300.0, 3100.0)  # Hz: each class is a tone in its own mel band
SR = 16000
FP = FeatureParams(sample_rate=SR, n_mels=16, n_fft=256, win_length=256, hop_length=160, frames=40,
                   crop="center", min_duration_s=0.15, silence_dbfs=-60.0)
# (format, subtype, sample rate, channels) cycled over the test clips
TEST_FORMATS = [("WAV", "PCM_16", 16000, 1), ("FLAC", "PCM_16", 44100, 2), ("OGG", "VORBIS", 22050, 1),
                ("WAV", "FLOAT", 48000, 2)]
EXT = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg"}


def tone(k: int, seconds: float, sr: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * TONES[k] * t) + 0.02 * rng.normal(size=t.size)
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


def write_clip(path: Path, data: np.ndarray, sr: int, fmt: str = "WAV", subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, format=fmt, subtype=subtype)
    return path


def build_corpus(root: Path) -> list[Utterance]:
    """8 train + 3 val clips per class (16 kHz wav) and 8 test clips in mixed formats, all <= 0.4 s."""
    rng = np.random.default_rng(0)
    utts = []
    for split, per_class in (("train", 8), ("val", 3)):
        for k, label in enumerate(LABELS):
            for i in range(per_class):
                seconds = float(rng.uniform(0.25, 0.4))
                path = write_clip(root / split / f"{label}_{i}.wav", tone(k, seconds, SR, rng), SR)
                utts.append(Utterance(f"iemocap/{split}_{label}_{i}", "iemocap", f"spk{i % 3}", str(path), seconds,
                                      SR, label, label, split=split))
    for i in range(8):
        k = i % 4
        fmt, subtype, sr, channels = TEST_FORMATS[i % len(TEST_FORMATS)]
        seconds = float(rng.uniform(0.25, 0.4))
        path = write_clip(root / "test" / f"clip{i}{EXT[fmt]}", tone(k, seconds, sr, rng, channels), sr, fmt, subtype)
        utts.append(Utterance(f"iemocap/test_{i}", "iemocap", "spk_test", str(path), seconds, sr, LABELS[k],
                              LABELS[k], split="test"))
    return utts


CRNN = CrnnParams(channels=(4, 8, 8), lstm_hidden=8, fc_hidden=16, dropout=0.1, domain_hidden=8)
W2V = dict(backbone="random:wav2vec2-tiny", head_hidden=16, domain_hidden=8, max_seconds=0.4)
MODELS = {
    "crnn": ModelParams(study="cross_corpus", arch="crnn", objective="ce", input="mels", epochs=20, batch_size=8,
                        optim=OptimParams(lr=1e-2), crnn=CRNN),
    "w2v": ModelParams(study="cross_corpus", arch="encoder", objective="ce", input="waves", epochs=1, batch_size=8,
                       optim=OptimParams(optimizer="adamw", lr=1e-3), encoder=EncoderParams(**W2V)),
    "qlora": ModelParams(study="cross_corpus", arch="encoder", objective="ce", input="waves", epochs=1,
                         batch_size=8, optim=OptimParams(optimizer="adamw", lr=1e-3),
                         encoder=EncoderParams(**W2V, regime="qlora", lora=LoraParams(r=4, alpha=8, dropout=0.0))),
    # a frozen-encoder probe on cached embeddings (precompute-embeddings); predict runs its encoder
    "probe": ModelParams(study="cross_corpus", arch="encoder", objective="ce", input="embeddings", epochs=3,
                         batch_size=8, optim=OptimParams(optimizer="adamw", lr=1e-2),
                         encoder=EncoderParams(backbone="random:wavlm-tiny", regime="frozen", layers="weighted",
                                               projection=8, head_hidden=8)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a busy 2-core machine two intra-op threads make tiny models ~100x slower (spin-waits).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread):
    """Audio, stores and the three trained models (trained once for the module)."""
    root = tmp_path_factory.mktemp("predict")
    utts = build_corpus(root / "audio")
    manifests = root / "manifests"
    write_manifest(utts, manifest_path(manifests, "cross_corpus", 1))
    features = root / "features"
    for build, kind in ((precompute_mels, "mels"), (precompute_waves, "waves")):
        report = build(manifests, "cross_corpus", features / kind / "cross_corpus", FP, workers=1, labels=LABELS,
                       target="ravdess")
        assert not report["skipped"], report["skipped_files"]
    precompute_embeddings(features / "waves" / "cross_corpus", features / "embeddings" / "cross_corpus",
                          [MODELS["probe"].encoder], device="cpu")
    params = dataclasses.replace(load_params(ROOT / "params.yaml"), models=MODELS, fusions={}, features=FP, folds=(1,),
                                 seeds=(5,), train=TrainParams(device="cpu", mixed_precision="no",
                                                               bucket_by_length=True, deterministic=True)
                                 ).for_run(1, 5)
    for name in MODELS:
        train_model(params, name, features, root / "models" / name, root / "ckpt" / name, root / "live" / name)
    test_paths = [u.path for u in utts if u.split == "test"]
    return {"root": root, "manifests": manifests, "features": features, "models": root / "models",
            "test_paths": test_paths}


# ---------------------------------------------------------------------- pure helpers
def test_window_starts_cover_the_whole_file():
    assert window_starts(100, 100, 50) == [0] and window_starts(30, 100, 50) == [0]
    assert window_starts(200, 100, 50) == [0, 50, 100]
    # The tail window is aligned to the end: every sample is covered by a full window.
    assert window_starts(230, 100, 50) == [0, 50, 100, 130]
    assert window_starts(230, 100, 100) == [0, 100, 130]
    with pytest.raises(ValueError, match="window and hop"):
        window_starts(10, 0, 1)


def test_device_auto_picks_cuda_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda")


def test_collect_audio_recurses_folders_and_keeps_explicit_paths(tmp_path, caplog):
    for rel in ("a/x.wav", "a/b/y.FLAC", "a/b/c/z.ogg", "a/notes.txt", "a/b/w.mp3", "a/b/v.MP3", "a/b/u.aiff",
                "a/.hidden/h.wav", "a/.DS_Store", "a/b/movie.m4a"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    with caplog.at_level("WARNING", logger="ser.infer.predict"):
        found = collect_audio([tmp_path / "a", tmp_path / "missing.wav", tmp_path / "a" / "notes.txt"])
    # Every format libsndfile decodes, in any letter case; mp3 needs libsndfile >= 1.1.
    mp3 = ["a/b/v.MP3", "a/b/w.mp3"] if "MP3" in sf.available_formats() else []
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/b/c/z.ogg", "a/b/u.aiff", *mp3, "a/b/y.FLAC", "a/x.wav", "missing.wav", "a/notes.txt"]
    # Skipped files are counted by suffix, hidden ones are not mentioned.
    assert "skipped 2 file(s)" in caplog.text and "1 .m4a, 1 .txt" in caplog.text
    assert "DS_Store" not in caplog.text


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile < 1.1 decodes no mp3")
def test_cli_scores_every_decodable_format_in_a_folder(study, tmp_path, capsys):
    rng = np.random.default_rng(3)
    write_clip(tmp_path / "a.wav", tone(0, 0.3, SR, rng), SR)
    write_clip(tmp_path / "b.mp3", tone(1, 0.3, 44100, rng), 44100, "MP3", "MPEG_LAYER_III")
    write_clip(tmp_path / "c.MP3", tone(2, 0.3, 44100, rng), 44100, "MP3", "MPEG_LAYER_III")
    code, out = _run_cli(capsys, tmp_path, "--model", study["models"] / "crnn", "--format", "json")
    assert code == 0
    assert [(Path(f["path"]).name, f["error"]) for f in json.loads(out)["files"]] == [
        ("a.wav", None), ("b.mp3", None), ("c.MP3", None)]


def test_an_empty_file_is_empty_not_unreadable(study, tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    result = Predictor(study["models"] / "crnn", device="cpu").predict_file(tmp_path / "zero.wav")
    assert result.reason == "empty" and "empty file (0 bytes)" in result.error


# ---------------------------------------------------------------------- parity with evaluation
def _store_batch(features: Path, kind: str):
    store = FeatureStore(fold_root(features, kind, "cross_corpus", 1), "test")
    items = [FeatureDataset(store, LABELS)[i] for i in range(len(store))]
    return store, collate_batch(items)


@pytest.mark.parametrize("name, kind", [("crnn", "mels"), ("w2v", "waves")])
def test_predictions_equal_evaluation_on_the_same_audio(study, name, kind):
    predictor = Predictor(study["models"] / name, device="cpu")
    assert predictor.labels == LABELS and predictor.input == kind
    assert predictor.window_s == pytest.approx(0.4) and predictor.hop_s == pytest.approx(0.2)
    store, batch = _store_batch(study["features"], kind)
    by_id = {f"iemocap/test_{i}": p for i, p in enumerate(study["test_paths"])}
    paths = [by_id[row.utt_id] for row in store.index]

    results = predictor.predict_files(paths)
    assert all(r.ok and len(r.windows) == 1 for r in results), [r.error for r in results]

    # The model input built from the audio file (decoded and conditioned as the stores do) is the
    # stored feature, bit for bit, with the same lengths.
    from ser.features.audio import condition, load_audio
    for i, path in enumerate(paths):
        x, lengths = predictor.model_inputs([condition(load_audio(path, SR), predictor.fp)])
        stored = batch["x"][i:i + 1] if kind == "mels" else batch["x"][i:i + 1, :int(batch["lengths"][i])]
        assert torch.equal(torch.from_numpy(x), stored), path
        assert lengths.tolist() == batch["lengths"][i:i + 1].tolist()

    # Same probabilities as the model on the store batch, same labels as ser.eval.evaluate.
    model, _ = load_checkpoint(study["models"] / name, cache_dir=study["models"] / name / "backbone")
    with torch.no_grad():
        expected = torch.softmax(model(batch["x"], batch.get("lengths")), -1).numpy()
    got = np.array([r.probabilities for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    _, _, y_pred = evaluate_model(study["models"] / name, study["features"], "test", device="cpu")
    assert [LABELS[int(np.argmax(p))] for p in got] == [LABELS[k] for k in y_pred]
    if kind == "mels":  # the CRNN learned the tones: predictions are meaningful, not just consistent
        assert np.mean(np.argmax(got, 1) == FeatureDataset(store, LABELS).labels) >= 0.75


def test_probe_predicts_on_audio_what_it_gives_on_its_cached_embeddings(study):
    """A probe trained on cached embeddings runs its encoder + the same head on files: the probabilities
    equal the probe's on the stored embeddings of the same clips, and evaluation's labels."""
    predictor = Predictor(study["models"] / "probe", device="cpu")
    assert predictor.input == "embeddings" and predictor.window_s == pytest.approx(30.0)
    assert type(predictor.model).__name__ == "EncoderSER"
    key = MODELS["probe"].store_key
    store = FeatureStore(study["features"] / "embeddings" / "cross_corpus" / key / "f1", "test")
    batch = collate_batch([FeatureDataset(store, LABELS)[i] for i in range(len(store))])
    by_id = {f"iemocap/test_{i}": p for i, p in enumerate(study["test_paths"])}
    results = predictor.predict_files([by_id[row.utt_id] for row in store.index])
    assert all(r.ok and len(r.windows) == 1 for r in results), [r.error for r in results]
    probe, _ = load_checkpoint(study["models"] / "probe")
    with torch.no_grad():
        expected = torch.softmax(probe(batch["x"]), -1).numpy()
    got = np.array([r.probabilities for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    _, _, y_pred = evaluate_model(study["models"] / "probe", study["features"], "test", device="cpu")
    assert [LABELS[int(np.argmax(p))] for p in got] == [LABELS[k] for k in y_pred]


@pytest.fixture(scope="module")
def speaker_study(study):
    """The CRNN again, on a store built with `mel_norm: speaker`."""
    root = study["root"]
    fp = dataclasses.replace(FP, mel_norm="speaker")
    features = root / "features_speaker"
    precompute_mels(study["manifests"], "cross_corpus", features / "mels" / "cross_corpus", fp, workers=1,
                    labels=LABELS, target="ravdess")
    params = dataclasses.replace(load_params(ROOT / "params.yaml"), models={"crnn": MODELS["crnn"]}, fusions={}, features=fp,
                                 folds=(1,), seeds=(5,),
                                 train=TrainParams(device="cpu", mixed_precision="no",
                                                   bucket_by_length=True, deterministic=True)).for_run(1, 5)
    train_model(params, "crnn", features, root / "models_speaker" / "crnn", root / "ckpt_speaker",
                root / "live_speaker")
    return {**study, "features": features, "models": root / "models_speaker"}


def test_speaker_normalised_model_predicts_with_each_files_own_statistics(speaker_study, caplog):
    """A file has no speaker statistics: predict normalises each window with its own (and
    warns), so unlike the default it does not reproduce the store of a pooled speaker."""
    from ser.features.audio import condition, load_audio
    from ser.features.precompute import mel_input

    with caplog.at_level("WARNING", logger="ser.infer.predict"):
        predictor = Predictor(speaker_study["models"] / "crnn", device="cpu")
    assert predictor.fp.mel_norm == "speaker"
    assert sum("normalised per speaker" in r.getMessage() for r in caplog.records) == 1
    store, batch = _store_batch(speaker_study["features"], "mels")
    by_id = {f"iemocap/test_{i}": p for i, p in enumerate(speaker_study["test_paths"])}
    paths = [by_id[row.utt_id] for row in store.index]
    results = predictor.predict_files(paths)
    assert all(r.ok and len(r.windows) == 1 for r in results), [r.error for r in results]
    for r in results:
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-5)
    for i, path in enumerate(paths):
        wave = condition(load_audio(path, SR), predictor.fp)
        x, lengths = predictor.model_inputs([wave])
        mel, length = mel_input(wave, predictor.feature_meta)
        assert np.array_equal(x[0, 0], mel) and lengths.tolist() == [length]
        assert lengths.tolist() == batch["lengths"][i:i + 1].tolist()
        # spk_test has 8 clips: the store pooled their statistics, the file has only its own.
        assert not torch.equal(torch.from_numpy(x), batch["x"][i:i + 1])
    # The store itself (what evaluation reads) still carries the tones per speaker.
    _, _, y_pred = evaluate_model(speaker_study["models"] / "crnn", speaker_study["features"], "test", device="cpu")
    assert np.mean(np.asarray(y_pred) == FeatureDataset(store, LABELS).labels) >= 0.75


def test_qlora_predict_loads_the_4bit_base_and_matches_evaluation(study):
    import bitsandbytes as bnb

    predictor = Predictor(study["models"] / "qlora", device="cpu")
    assert predictor.meta["backbone"]["quantized"] and predictor.meta["state"] == "partial"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in predictor.model.modules())
    assert any("lora_A" in n for n, _ in predictor.model.named_parameters())
    store, _ = _store_batch(study["features"], "waves")
    by_id = {f"iemocap/test_{i}": p for i, p in enumerate(study["test_paths"])}
    results = predictor.predict_files([by_id[row.utt_id] for row in store.index])
    _, _, y_pred = evaluate_model(study["models"] / "qlora", study["features"], "test", device="cpu")
    assert [LABELS[int(np.argmax(r.probabilities))] for r in results] == [LABELS[k] for k in y_pred]


# ---------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def inputs(study):
    """A folder of good clips (copies of the test clips), a long recording, and three bad files."""
    folder = study["root"] / "inputs"
    rng = np.random.default_rng(9)
    nested = folder / "nested" / "deeper"
    nested.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(study["test_paths"]):
        (nested if i % 2 else folder).joinpath(Path(path).name).write_bytes(Path(path).read_bytes())
    # 2.3 s, stereo, 48 kHz: happy for 1.2 s, then sad.
    long = np.concatenate([tone(1, 1.2, 48000, rng, 2), tone(3, 1.1, 48000, rng, 2)])
    write_clip(folder / "long.flac", long, 48000, "FLAC")
    write_clip(folder / "short.wav", tone(0, 0.05, SR, rng), SR)  # below min_duration_s 0.15
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage, not audio")
    write_clip(folder / "empty.ogg", np.zeros((0, 1), np.float32), SR, "WAV")  # zero samples, misnamed
    (folder / "readme.txt").write_text("not audio, ignored in a folder")
    return folder


def _run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args)])
    return code, capsys.readouterr().out


def test_cli_json_has_window_rows_error_rows_and_a_failing_exit_status(study, inputs, capsys):
    code, out = _run_cli(capsys, inputs, inputs / "nothere.wav", "--model", study["models"] / "crnn", "--format", "json",
                         "--device", "cpu")
    assert code == 1, "some files failed: the exit status says so"
    doc = json.loads(out)
    assert doc["labels"] == LABELS and doc["input"] == "mels" and doc["window_s"] == pytest.approx(0.4)
    files = {Path(f["path"]).name: f for f in doc["files"]}
    assert set(files) == {Path(p).name for p in study["test_paths"]} | {"long.flac", "short.wav", "broken.wav",
                                                                          "empty.ogg", "nothere.wav"}
    assert files["short.wav"]["reason"] == "too_short" and "shorter than the 0.15 s" in files["short.wav"]["error"]
    assert files["broken.wav"]["reason"] == "unreadable" and "broken.wav" in files["broken.wav"]["error"]
    assert files["empty.ogg"]["reason"] == "empty"
    assert files["nothere.wav"]["reason"] == "missing" and files["nothere.wav"]["error"].endswith("no such file")
    for bad in ("short.wav", "broken.wav", "empty.ogg", "nothere.wav"):
        assert files[bad]["label"] is None and files[bad]["windows"] == []

    good = [f for f in doc["files"] if f["error"] is None]
    assert len(good) == 9
    for f in good:
        assert sum(f["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert f["label"] == max(f["probabilities"], key=f["probabilities"].get)

    long = files["long.flac"]
    assert long["duration_s"] == pytest.approx(2.3, abs=1e-3)
    n = round(2.3 * SR)
    starts = window_starts(n, round(0.4 * SR), round(0.2 * SR))
    assert [w["start_s"] for w in long["windows"]] == pytest.approx([s / SR for s in starts])
    assert long["windows"][-1]["end_s"] == pytest.approx(2.3, abs=1e-3)
    mean = {k: np.mean([w["probabilities"][k] for w in long["windows"]]) for k in LABELS}
    assert long["probabilities"] == pytest.approx(mean, abs=1e-5)
    # The tone changes from happy to sad at 1.2 s: the first and last windows say so.
    assert long["windows"][0]["label"] == "happy" and long["windows"][-1]["label"] == "sad"


def test_cli_csv_and_table_formats(study, inputs, capsys):
    code, out = _run_cli(capsys, inputs / "long.flac", inputs / "short.wav", study["test_paths"][0],
                         "--model", study["models"] / "crnn", "--format", "csv")
    assert code == 1
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["path", "window", "start_s", "end_s", "label", *LABELS, "error", "reason"]
    long = [r for r in rows if r["path"].endswith("long.flac")]
    n_windows = len(window_starts(round(2.3 * SR), 6400, 3200))
    assert [r["window"] for r in long] == [str(i) for i in range(n_windows)] + ["overall"]
    assert float(long[-2]["end_s"]) == pytest.approx(2.3, abs=1e-3) and long[-1]["label"] in LABELS
    short = [r for r in rows if r["path"].endswith("short.wav")]
    assert len(short) == 1 and short[0]["reason"] == "too_short" and short[0]["label"] == ""
    clip = [r for r in rows if r["path"] == study["test_paths"][0]]
    assert [r["window"] for r in clip] == ["0", "overall"]
    assert sum(float(clip[1][k]) for k in LABELS) == pytest.approx(1.0, abs=1e-4)

    code, out = _run_cli(capsys, inputs / "long.flac", inputs / "broken.wav", "--model", study["models"] / "w2v")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["file", "window", "emotion", *LABELS]
    assert any("broken.wav" in line and "ERROR (unreadable)" in line for line in lines)
    assert sum("long.flac" in line for line in lines) == len(window_starts(round(2.3 * SR), 6400, 3200)) + 1
    assert any("long.flac" in line and "overall" in line for line in lines)


def test_cli_all_good_exits_zero_and_bad_settings_exit_two(study, capsys, tmp_path):
    code, out = _run_cli(capsys, study["test_paths"][1], "--model", study["models"] / "w2v", "--format", "json",
                         "--window", "0.2", "--hop", "0.1")
    assert code == 0
    (f,) = json.loads(out)["files"]
    assert len(f["windows"]) == len(window_starts(round(f["duration_s"] * SR), 3200, 1600)) > 1
    # A mel model sees 0.4 s: a longer window would be silently cropped, so it is refused.
    code, _ = _run_cli(capsys, study["test_paths"][0], "--model", study["models"] / "crnn", "--window", "1.0")
    assert code == 2
    code, _ = _run_cli(capsys, study["test_paths"][0], "--model", tmp_path / "nope")
    assert code == 2
    for bad in (["--window", "0.1"], ["--hop", "0"], ["--batch-size", "0"], ["--device", "tpu9"]):
        code, _ = _run_cli(capsys, study["test_paths"][0], "--model", study["models"] / "w2v", *bad)
        assert code == 2, bad  # 0.1 s is below the 0.15 s minimum clip length of training
    code, _ = _run_cli(capsys, tmp_path, "--model", study["models"] / "crnn")  # a folder without audio
    assert code == 2


def test_console_script_writes_the_output_file(study, tmp_path):
    ser = Path(sys.executable).parent / "ser"
    if not ser.exists():
        pytest.skip("the `ser` console script is not installed in this environment (pip install -e .)")
    out = tmp_path / "preds.json"
    proc = subprocess.run([str(ser), "-q", "predict", *study["test_paths"][:2], "--model", str(study["models"] / "crnn"),
                           "--format", "json", "-o", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and [f["error"] for f in json.loads(out.read_text())["files"]] == [None, None]


def test_render_rejects_unknown_format(study):
    predictor = Predictor(study["models"] / "crnn", device="cpu")
    with pytest.raises(ValueError, match="unknown format"):
        render([], predictor, "xml")


def test_cli_unwritable_output_fails_before_scoring(study, tmp_path, capsys, caplog, monkeypatch):
    calls = []
    monkeypatch.setattr(Predictor, "predict_files", lambda self, paths: calls.append(paths) or [])
    (tmp_path / "a_file").write_text("")  # a folder that can never be created, even as root
    out = tmp_path / "a_file" / "sub" / "preds.json"
    with caplog.at_level("ERROR"):
        code, _ = _run_cli(capsys, study["test_paths"][0], "--model", study["models"] / "crnn", "-o", out)
    assert code == 2 and calls == [], "the scorer must not run when the output cannot be written"
    assert "cannot write to" in caplog.text and str(out.parent) in caplog.text


@pytest.mark.parametrize("damage, message", [
    (lambda doc: json.dumps({k: v for k, v in doc.items() if k != "labels"}), "lacks ['labels']"),
    (lambda doc: json.dumps(doc)[:60], "not valid JSON"),
])
def test_cli_damaged_meta_json_exits_two_naming_the_file(study, tmp_path, capsys, caplog, damage, message):
    model = tmp_path / "model"
    model.mkdir()
    for f in (study["models"] / "crnn").iterdir():
        if f.is_file():
            (model / f.name).write_bytes(f.read_bytes())
    (model / "meta.json").write_text(damage(json.loads((model / "meta.json").read_text())))
    with caplog.at_level("ERROR"):
        code, _ = _run_cli(capsys, study["test_paths"][0], "--model", model)
    assert code == 2
    assert message in caplog.text and str(model / "meta.json") in caplog.text


def test_quiet_flag_works_before_and_after_the_subcommand():
    from ser.infer.cli import build_parser

    for argv in (["-q", "report"], ["report", "-q"], ["predict", "x.wav", "--model", "m", "-q"]):
        assert build_parser().parse_args(argv).quiet is True, argv
    assert build_parser().parse_args(["report"]).quiet is False


def test_cli_fuses_models_on_audio_as_the_summary_fuses_their_predictions(study, inputs, capsys, tmp_path, caplog):
    """`--model A --model B`: per file, the mean of the members' file probabilities (each member with its own
    input and windows); a file a member cannot score keeps that member's error row; an SVM member (decision
    values, not probabilities) is refused before any scoring, exit 2."""
    crnn, probe = study["models"] / "crnn", study["models"] / "probe"
    paths = [*study["test_paths"][:3], inputs / "short.wav"]
    members = [Predictor(d, device="cpu").predict_files(paths) for d in (crnn, probe)]
    code, out = _run_cli(capsys, *paths, "--model", crnn, "--model", probe, "--format", "json", "--device", "cpu")
    assert code == 1, "short.wav cannot be scored: the exit status says so"
    doc = json.loads(out)
    assert doc["model"] == f"{crnn} + {probe}" and doc["labels"] == LABELS and doc["input"] == "mels + embeddings"
    for f, a, b in zip(doc["files"][:3], members[0][:3], members[1][:3]):
        expected = (a.probabilities + b.probabilities) / 2
        assert [f["probabilities"][k] for k in LABELS] == pytest.approx(expected.tolist(), abs=1e-6)
        assert f["label"] == LABELS[int(np.argmax(expected))]
    assert doc["files"][3]["reason"] == "too_short" and doc["files"][3]["probabilities"] is None
    svm = tmp_path / "svm"
    svm.mkdir()
    for f in crnn.iterdir():
        if f.is_file():
            (svm / f.name).write_bytes(f.read_bytes())
    (svm / "meta.json").write_text(json.dumps({**json.loads((crnn / "meta.json").read_text()), "scores": "decision"}))
    with caplog.at_level("ERROR"):
        code, _ = _run_cli(capsys, paths[0], "--model", crnn, "--model", svm, "--device", "cpu")
    assert code == 2 and "decision values, not class probabilities" in caplog.text and str(svm) in caplog.text
