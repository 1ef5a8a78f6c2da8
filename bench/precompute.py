"""Benchmark: naive per-file librosa loop vs the precompute-mels stage.

    python bench/precompute.py [--n 200] [--wav-dir DIR] [--workers 2] [--repeat 3]

(a) naive: for each file `librosa.load(path, sr=16000)` + `melspectrogram` +
    `power_to_db` (the reference definition), one file after another;
(b) ours: `ser.features.precompute.precompute_mels` on the same files (decode, resample,
    log-mel, fit, train statistics, normalise, write the store) with a worker pool.
By default N synthetic 1-3 s clips are written to a temp dir, half 48 kHz
stereo (like RAVDESS masters) and half 16 kHz mono (like IEMOCAP / CREMA-D), so
it runs anywhere; --wav-dir takes the first N *.wav files under DIR instead.
Prints seconds of audio processed per wall-clock second, the ratio, and the
max abs difference between the two feature sets; writes bench/results/precompute.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm at import: keeps the table readable

import librosa  # noqa: E402

from ser.config import FeatureParams  # noqa: E402
from ser.data.manifest import Utterance, manifest_path, write_manifest  # noqa: E402
from ser.features.precompute import fit_frames, normalise, precompute_mels  # noqa: E402
from ser.features.stores import FeatureStore  # noqa: E402


def synth_files(root: Path, n: int, seed: int = 0) -> list[Path]:
    """Speech-like clips: a gliding harmonic tone with syllable envelopes plus noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sr, channels = (48000, 2) if i % 2 == 0 else (16000, 1)
        dur = rng.uniform(1.0, 3.0)
        t = np.arange(int(dur * sr)) / sr
        f0 = rng.uniform(100, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t), 0, None)
        wave = 0.2 * voice * envelope + 0.01 * rng.standard_normal(t.shape)
        data = np.stack([wave, 0.8 * wave], axis=1) if channels == 2 else wave
        path = root / f"clip_{i:05d}_{sr}.wav"
        sf.write(path, data.astype(np.float32), sr, subtype="PCM_16")
        paths.append(path)
    return paths


def naive(paths: list[Path], fp: FeatureParams) -> list[np.ndarray]:
    out = []
    for path in paths:
        y, _ = librosa.load(path, sr=fp.sample_rate)
        mel = librosa.feature.melspectrogram(
            y=y, sr=fp.sample_rate, n_fft=fp.n_fft, hop_length=fp.hop_length, win_length=fp.win_length,
            n_mels=fp.n_mels, fmin=fp.fmin, fmax=fp.fmax, power=2.0, center=True, pad_mode="constant")
        out.append(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None))
    return out


def naive_one_thread(paths: list[Path], fp: FeatureParams) -> list[np.ndarray]:
    with threadpool_limits(limits=1):
        return naive(paths, fp)


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process plus finished worker processes)."""
    before, t0 = os.times(), time.perf_counter()
    run()
    wall, after = time.perf_counter() - t0, os.times()
    return wall, sum(after[:4]) - sum(before[:4])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="number of files")
    ap.add_argument("--wav-dir", type=Path, help="take the first N *.wav files under this folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds; the best of each is reported")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "precompute.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    fp = FeatureParams()
    load_before = os.getloadavg()[0]  # the cores may be shared: say how busy they were
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.wav_dir:
            paths = sorted(args.wav_dir.rglob("*.wav"))[: args.n]
        else:
            (tmp_path / "wav").mkdir()
            paths = synth_files(tmp_path / "wav", args.n)
        audio_s = sum(sf.info(p).duration for p in paths)
        manifests = tmp_path / "manifests"  # one study "bench", one fold: every clip trains
        manifest = manifest_path(manifests, "bench", 1)
        write_manifest([Utterance(utt_id=f"bench_{i:05d}", corpus="bench", speaker="s", path=str(p),
                                  duration_s=sf.info(p).duration, sample_rate=sf.info(p).samplerate,
                                  raw_label="x", emotion="x", split="train") for i, p in enumerate(paths)],
                       manifest)

        # The naive loop runs twice per round: with numpy's default BLAS threads (what a
        # researcher gets) and pinned to one thread, which is much faster when other jobs
        # share the cores (OpenBLAS threads then spin on a tiny 128x201 product). The
        # speed-up is reported against the faster of the two.
        runs: dict[str, Callable[[], object]] = {
            "naive": lambda: naive(paths, fp),
            "naive_1thread": lambda: naive_one_thread(paths, fp),
        }
        for workers in sorted({1, args.workers}):
            runs[f"ours_{workers}"] = functools.partial(
                precompute_mels, manifests, "bench", tmp_path / f"store{workers}", fp, workers, labels=["x"])
        timings: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, run in runs.items():
                time.sleep(0.3)  # let the previous run's idle BLAS threads stop spinning
                wall, cpu_s = timed(run)
                timings[name].append(wall)
                cpu[name].append(cpu_s)
        reference = naive(paths, fp)

        store = FeatureStore(tmp_path / f"store{args.workers}" / "f1", "train")  # the fold folder
        mean, std = np.array(store.meta["mean"]), np.array(store.meta["std"])
        max_db, max_norm = 0.0, 0.0
        for i, ref in enumerate(reference):
            fitted, valid = fit_frames(ref, fp.frames, fp.crop)
            ours = store[i]
            max_norm = max(max_norm, float(np.abs(normalise(fitted, mean, std) - ours).max()))
            denorm = ours[:, :valid] * std[:, None].astype(np.float32) + mean[:, None].astype(np.float32)
            max_db = max(max_db, float(np.abs(denorm - fitted[:, :valid]).max()))

    best = {k: min(v) for k, v in timings.items()}
    best_cpu = {k: min(v) for k, v in cpu.items()}
    baseline = min(best["naive"], best["naive_1thread"])
    labels = {"naive": "naive librosa loop, default threads", "naive_1thread": "naive librosa loop, 1 BLAS thread",
              **{f"ours_{w}": f"ser precompute_mels, workers={w}" for w in sorted({1, args.workers})}}
    print(f"\n{len(paths)} files, {audio_s:.1f} s of audio, {os.cpu_count()} CPU cores "
          f"(1-min load average before: {load_before:.2f}), best of {args.repeat} rounds; "
          "speed-up vs the faster naive run")
    median = {k: float(np.median(v)) for k, v in timings.items()}
    median_base = min(median["naive"], median["naive_1thread"])
    print(f"{'path':38s} {'wall s':>8s} {'cpu s':>7s} {'audio s/s':>10s} {'speed-up':>9s} {'(median)':>9s}")
    for name, label in labels.items():
        sec = best[name]
        print(f"{label:38s} {sec:8.3f} {best_cpu[name]:7.3f} {audio_s / sec:10.0f} {baseline / sec:8.2f}x "
              f"{median_base / median[name]:8.2f}x")
    print(f"max |ours - librosa| over valid frames: {max_db:.3g} dB "
          f"(normalised features: {max_norm:.3g})")

    result = {
        "files": len(paths), "audio_seconds": round(audio_s, 2), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "repeat": args.repeat,
        "synthetic": not args.wav_dir, "workers": args.workers,
        "seconds": {k: [round(x, 4) for x in v] for k, v in timings.items()},
        "cpu_seconds": {k: [round(x, 4) for x in v] for k, v in cpu.items()},
        "audio_seconds_per_second": {k: round(audio_s / v, 1) for k, v in best.items()},
        "speedup_vs_faster_naive": {k: round(baseline / v, 2) for k, v in best.items()},
        "speedup_vs_naive_default_threads": {k: round(best["naive"] / v, 2) for k, v in best.items()},
        "median_speedup_vs_faster_naive": {k: round(median_base / v, 2) for k, v in median.items()},
        "load_average_before": round(load_before, 2),
        "max_abs_diff_db": max_db, "max_abs_diff_normalised": max_norm,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
