"""Log-mel, waveform and utterance-level vector stores (the precompute stages).

Every audio file of a study is decoded and resampled exactly once, here; the
training and evaluation stages only slice the contiguous arrays written by
`ser.features.stores`.

Log-mel definition (the reference is librosa; `logmel` reproduces it to float
rounding, see tests/test_features.py)::

    librosa.power_to_db(
        librosa.feature.melspectrogram(y=wave, sr=fp.sample_rate, n_fft=fp.n_fft,
            hop_length=fp.hop_length, win_length=fp.win_length, n_mels=fp.n_mels,
            fmin=fp.fmin, fmax=fp.fmax, power=2.0, center=True, pad_mode="constant"),
        ref=1.0, amin=1e-10, top_db=None)

i.e. a Hann-windowed STFT of the zero-padded signal, power spectrum, Slaney mel
filterbank (librosa.filters.mel), 10*log10 with a 1e-10 floor (-100 dB).

Utterance-level vector stores (`egemaps`, `compare`, `ge2e`; see ser.features.functionals):
one row per clip, float32 [N, n_features], computed from
the same decoded and conditioned wave as the other kinds (`_decode`) and
stored raw: global or per-speaker standardisation is the classifier's choice
(ser.models.linear). The index `length` is the clip's sample count.

Store policy:
  * Every kind decodes, checks (`ser.features.audio.check_audio`) and conditions
    (`ser.features.audio.condition`: silence trimming, gain normalisation) each file in
    `_decode`, so mels, waves and any other store see the same audio.
  * `mel_features` gives every clip `fp.frames` frames: longer clips are
    cropped (centre or start, `fp.crop`), optionally normalised per utterance
    (`fp.instance_norm`), and shorter ones padded on the right (`fp.pad`:
    the log of silence, -100 dB, or the clip repeated). The index `length`
    keeps the valid frame count (with repeat padding: `frames`).
  * Stores hold every clip of a study once (`clips.npy`), un-normalised, and
    one folder per fold (`f<k>/`) with that fold's split index files. The
    per-mel-bin mean/std over the valid frames of the fold's *train* split
    only are stored in f<k>/meta.json and applied on reading to every split
    (ser.features.stores.FeatureStore; padding included, so a padded frame reads as
    normalised silence everywhere, at training and at inference alike).
  * `fp.mel_norm: speaker` instead z-scores each clip with the per-bin
    mean/std over the valid frames of all its (corpus, speaker)'s clips in the
    store (no labels are read; under held_out_words a speaker's test clips
    count too). Padded frames are not speaker-normalised: they hold what a
    `train` store holds there (the padding value under the train statistics,
    which stay in meta.json), so silence reads the same for every speaker and
    a speaker's level cannot leak through the padding (-100 dB in a quiet
    speaker's units would sit nearer its speech than in a loud one's).
    Inference has one file and no speaker: `mel_input` uses the file's own
    statistics for its valid frames, exactly what the store holds for a
    speaker with one clip.
  * Work: a process pool (`workers`: runtime.workers, one BLAS thread each) decodes every
    file once, in manifest order. Unusable files are skipped, counted and
    listed in the returned report; the stage always finishes.
  * Memory: the clips are collected in a float32 scratch file next to the
    store (`clips.npy.partial`), never as a list of arrays. Mels: the file
    is sized from the clip count and workers write each mel into its row
    (skipped rows are compacted away afterwards); each fold's train
    statistics come from per-clip sums the workers return. Waves: lengths
    are only known after decoding, so the parent appends each wave as it
    arrives. The scratch file is handed to `ser.features.stores.write_split`, which
    streams it into `clips.npy`.
"""
from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence

import numpy as np
import scipy.fft
import scipy.sparse
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ser.config import FUNCTIONALS, STORE_KINDS, FeatureParams
from ser.data.manifest import ManifestError, Utterance, manifest_path, read_manifest, study_folds
from ser.features.audio import AudioError, check_audio, condition, load_audio
from ser.features.functionals import functionals, functionals_meta, n_features
from ser.features.stores import IndexRow, speaker_key, store_fingerprint, write_index, write_meta, write_split

__all__ = ["AMIN", "SILENCE_DB", "STORE_SPLITS", "logmel", "fit_frames", "instance_normalise",
           "mel_features", "normalise", "precompute_mels", "precompute_waves", "mel_for_inference",
           "mel_input", "feature_params_from_meta", "STORE_KINDS",
           "precompute_functionals", "functionals_for_inference"]

log = logging.getLogger(__name__)

AMIN = 1e-10  # power floor of power_to_db
SILENCE_DB = float(10.0 * math.log10(AMIN))  # -100 dB: the padding value
STD_FLOOR = 1e-3  # dB; a bin that never varies in train (an empty mel filter) is only centred
# dB; per-utterance std floor: a bin nearly constant within one clip (the -100 dB floor,
# an empty filter) is centred, not blown up to unit variance.
INSTANCE_STD_FLOOR = 1.0
STORE_SPLITS = ("train", "val", "test", "adapt")
_IN_RAM_BYTES = 256 * 2**20  # mel splits up to this size are normalised in RAM, larger ones on disk

# FeatureParams fields that define the stored features (the worker count, runtime.workers, does not).
# The front end (gain, gain_dbfs, trim_db, vad, vad_threshold) shapes every kind; min_duration_s also bounds trimming.
FRONT_END_KEYS = ("gain", "gain_dbfs", "trim_db", "vad", "vad_threshold")
_MEL_KEYS = ("sample_rate", "n_mels", "n_fft", "win_length", "hop_length", "fmin", "fmax",
             "frames", "crop", "min_duration_s", "silence_dbfs", *FRONT_END_KEYS, "instance_norm", "pad",
             "mel_norm")
_WAVE_KEYS = ("sample_rate", "min_duration_s", "silence_dbfs", *FRONT_END_KEYS)
# The utterance-level vectors are computed from the decoded wave: the wave keys define them.
_VECTOR_KEYS = _WAVE_KEYS
# What a store written before the front end existed was built with (its meta lacks these keys).
_LEGACY_FEATURES = {"gain": "none", "trim_db": None, "vad": "none", "vad_threshold": 0.5, "instance_norm": "none",
                    "pad": "silence", "mel_norm": "train"}


# --------------------------------------------------------------------------- log-mel
@functools.lru_cache(maxsize=8)
def _analysis(sample_rate: int, n_fft: int, win_length: int, n_mels: int, fmin: float,
              fmax: Optional[float]) -> tuple[np.ndarray, scipy.sparse.csr_array]:
    """Window (float64, centred in n_fft, as librosa.stft builds it) and mel basis (float32).

    The basis is stored sparse: each FFT bin feeds at most two triangular
    filters, so ~2 * n_bins of its n_mels * n_bins entries are non-zero and
    the sparse product is ~10x cheaper than the dense one librosa uses (same
    values up to float32 summation order, ~1e-7 relative).
    """
    import librosa  # slow import; only needed once per process for the filterbank

    window = librosa.util.pad_center(librosa.filters.get_window("hann", win_length, fftbins=True),
                                     size=n_fft)
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return window, scipy.sparse.csr_array(basis.astype(np.float32))


def _analysis_for(fp: FeatureParams) -> tuple[np.ndarray, scipy.sparse.csr_array]:
    return _analysis(fp.sample_rate, fp.n_fft, fp.win_length, fp.n_mels, float(fp.fmin),
                     None if fp.fmax is None else float(fp.fmax))


def logmel(wave: np.ndarray, fp: FeatureParams) -> np.ndarray:
    """Log-mel power spectrogram [n_mels, 1 + len(wave) // hop_length] in dB (float32).

    Same numerics as the librosa definition in the module docstring: the
    windowed frames are transformed in float64 (librosa multiplies by a
    float64 window) and stored as complex64 before |X|^2, so values near the
    -100 dB floor agree too. The filterbank and window are cached, and the
    filterbank is applied as a sparse matrix.
    """
    window, basis = _analysis_for(fp)
    half = fp.n_fft // 2
    padded = np.zeros(wave.shape[0] + 2 * half, dtype=np.float32)  # center=True, pad_mode="constant"
    padded[half:half + wave.shape[0]] = wave
    frames = sliding_window_view(padded, fp.n_fft)[:: fp.hop_length]  # [T, n_fft], a view
    spec = scipy.fft.rfft(frames * window, axis=-1).astype(np.complex64)
    power = np.abs(spec) ** 2  # [T, bins] float32
    mel = basis @ power.T  # [n_mels, T], sparse @ dense
    return (10.0 * np.log10(np.maximum(AMIN, mel))).astype(np.float32, copy=False)


def fit_frames(mel: np.ndarray, frames: int, crop: str = "center",
               pad: str = "silence") -> tuple[np.ndarray, int]:
    """Fix a [n_mels, T] log-mel to [n_mels, frames]; returns (array, length).

    Longer clips are cropped to their middle `frames` (`crop="center"`: the
    default, as emotional cues are not concentrated at the onset and leading
    silence is common) or their first `frames` (`crop="start"`). Shorter
    clips are padded on the right: `pad="silence"` with SILENCE_DB, the log
    of the power floor, so padding reads as digital silence, and length = the
    valid frame count; `pad="repeat"` with the clip's frames again (tiled),
    so every frame is real speech and length = `frames`. The reference
    study's input is [128, 300]: 3 s at a 10 ms hop.
    """
    if crop not in ("center", "start"):
        raise ValueError(f"crop must be 'center' or 'start', got {crop!r}")
    if pad not in ("silence", "repeat"):
        raise ValueError(f"pad must be 'silence' or 'repeat', got {pad!r}")
    n = mel.shape[1]
    if n >= frames:
        start = (n - frames) // 2 if crop == "center" else 0
        return np.ascontiguousarray(mel[:, start:start + frames], dtype=np.float32), frames
    if pad == "repeat" and n > 0:
        reps = -(-frames // n)
        return np.ascontiguousarray(np.tile(mel, (1, reps))[:, :frames], dtype=np.float32), frames
    out = np.full((mel.shape[0], frames), SILENCE_DB, dtype=np.float32)
    out[:, :n] = mel
    return out, n


def instance_normalise(mel: np.ndarray, mode: str) -> np.ndarray:
    """Per-utterance, per-bin normalisation of a [n_mels, T] log-mel over all its T frames.

    "mean" subtracts each bin's mean, "mean_std" also divides by its std
    (floored at INSTANCE_STD_FLOOR dB); "none" returns `mel`. Removes the
    channel and level of a recording (a constant per-bin offset in dB).
    """
    if mode == "none" or mel.shape[1] == 0:
        return mel
    if mode not in ("mean", "mean_std"):
        raise ValueError(f"instance_norm must be 'none', 'mean' or 'mean_std', got {mode!r}")
    x = mel.astype(np.float64)
    out = x - x.mean(axis=1, keepdims=True)
    if mode == "mean_std":
        out /= np.maximum(x.std(axis=1, keepdims=True), INSTANCE_STD_FLOOR)
    return out.astype(np.float32)


def mel_features(wave: np.ndarray, fp: FeatureParams) -> tuple[np.ndarray, int]:
    """[n_mels, fp.frames] log-mel of a conditioned wave, before the train statistics; and its length.

    Crop (fp.crop), per-utterance normalisation over the frames kept
    (fp.instance_norm), then padding (fp.pad). Silence padding is the log of
    silence expressed in the clip's normalised units, so it still reads as
    far below anything in the clip. Stores and inference share this function.
    """
    mel = logmel(wave, fp)
    if mel.shape[1] > fp.frames:
        mel, _ = fit_frames(mel, fp.frames, fp.crop)
    n = mel.shape[1]
    if fp.instance_norm == "none" or fp.pad == "repeat" or n == fp.frames:
        return fit_frames(instance_normalise(mel, fp.instance_norm), fp.frames, fp.crop, fp.pad)
    # silence padding: normalise the padded array with the valid frames' statistics
    x = mel.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    std = (np.maximum(x.std(axis=1, keepdims=True), INSTANCE_STD_FLOOR) if fp.instance_norm == "mean_std"
           else np.ones_like(mean))
    padded, length = fit_frames(mel, fp.frames, fp.crop, "silence")
    return ((padded.astype(np.float64) - mean) / std).astype(np.float32), length


def _moments(mel: np.ndarray, valid: int) -> np.ndarray:
    """float64 [2, n_mels]: per-bin sum and sum of squares over the first `valid` frames."""
    frames = mel[:, :valid].astype(np.float64)
    return np.stack([frames.sum(axis=1), np.einsum("mf,mf->m", frames, frames)])


def _stats(moments: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean and std (floored at STD_FLOOR) from `_moments` sums over `count` frames.

    Values are dB in [-100, ~40], so E[x^2] - E[x]^2 loses nothing that matters
    in float64; the results are rounded to float32, the dtype they are applied in.
    """
    mean = moments[0] / count
    var = np.maximum(moments[1] / count - mean ** 2, 0.0)
    std = np.maximum(np.sqrt(var), STD_FLOOR)
    return mean.astype(np.float32).astype(np.float64), std.astype(np.float32).astype(np.float64)


def normalise(mel: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(mel - mean) / std per mel bin, in float32 (stores and inference share this)."""
    mean = np.asarray(mean, dtype=np.float32)[:, None]
    std = np.asarray(std, dtype=np.float32)[:, None]
    return ((mel - mean) / std).astype(np.float32, copy=False)


def feature_params_from_meta(meta: dict[str, Any]) -> FeatureParams:
    """The FeatureParams a store (or a checkpoint carrying its meta) was built with.

    A store written before the audio front end existed has no gain / trim /
    instance_norm / pad keys: it was built without them, so they read as off
    (not as today's defaults).
    """
    try:
        return FeatureParams(**{**_LEGACY_FEATURES, **meta["features"]})
    except (KeyError, TypeError) as exc:
        raise ValueError(f"feature meta has no valid 'features' block ({exc}); "
                         "rebuild the store with `dvc repro precompute-mels`") from None


def mel_input(wave: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Normalised [n_mels, frames] log-mel of a wave, exactly as the store was built, and its length.

    `wave` must be mono float32 at meta["sample_rate"] (ser.features.audio.load_audio)
    and already conditioned with the store's params (ser.features.audio.condition),
    as `_decode` does for the stores: `ser predict` conditions a whole file
    once, then cuts it into windows.

    A `mel_norm: speaker` store normalised each clip's valid frames with its
    speaker's statistics, which one file does not have: they are normalised
    with the file's own per-bin mean/std over its valid frames (floored as in
    the store), the closest stand-in, and exactly the store's value for a
    speaker with one clip; padding gets the train statistics, as in the store.
    For a speaker with several clips the store pools their statistics, so
    predictions can differ from evaluation (most for short or stationary clips,
    whose own statistics absorb what the model should see).
    """
    if meta.get("kind") != "mels":
        raise ValueError(f"mel_for_inference needs a 'mels' store meta, got kind={meta.get('kind')!r}")
    fp = feature_params_from_meta(meta)
    mel, length = mel_features(wave, fp)
    train_mean, train_std = np.array(meta["mean"]), np.array(meta["std"])
    if fp.mel_norm == "train":
        return normalise(mel, train_mean, train_std), length
    out = normalise(mel, *_stats(_moments(mel, length), length))
    out[:, length:] = normalise(mel[:, length:], train_mean, train_std)
    return out, length


def mel_for_inference(wave: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The normalised log-mel of `mel_input` (same preconditions), without its length."""
    return mel_input(wave, meta)[0]


def functionals_for_inference(wave: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The raw float32 [n_features] row of a whole wave, as the store of `meta` computed it.

    `wave` must be mono float32 at meta["sample_rate"], decoded and conditioned
    as `_decode` does for the stores.
    """

    kind = meta.get("kind")
    if kind not in FUNCTIONALS:
        raise ValueError(f"functionals_for_inference needs an utterance-level store meta, got kind={kind!r}")
    return functionals(wave, int(meta["sample_rate"]), kind)


# --------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class _Task:
    """One file for a worker; mels are written straight into row `row` of `scratch`."""
    path: str
    scratch: str  # the split's scratch file (mels: [manifest rows, n_mels, frames])
    row: int  # position of the file within its split


@dataclass(frozen=True)
class _Result:
    """What a worker returns for one file: the wave (waves only), or why it was skipped."""
    wave: Optional[np.ndarray]
    length: int  # valid frames (mels) or samples (waves)
    seconds: float
    reason: Optional[str] = None
    detail: str = ""
    # mels: float64 [2, n_mels] sum and sum of squares over the valid frames, so the
    # train (or speaker) statistics need no second pass over the store.
    moments: Optional[np.ndarray] = None


_worker_fp: Optional[FeatureParams] = None
_scratch_fds: dict[str, int] = {}  # per process: the scratch files it has opened for writing


def _init_worker(fp: FeatureParams, limit_threads: bool) -> None:
    """Pool initializer. Forked workers inherit the parent's one-thread BLAS limit;
    other start methods set it here (the pool is the parallelism)."""
    global _worker_fp
    _worker_fp = fp
    if limit_threads:
        threadpool_limits(limits=1)


def _decode(path: str, fp: FeatureParams) -> tuple[Optional[np.ndarray], Optional[_Result]]:
    """Decode, check and condition one file (every store kind goes through here);
    returns (wave, None) or (None, the skip result)."""
    try:
        wave = load_audio(path, fp.sample_rate)
    except AudioError as exc:
        return None, _Result(None, 0, 0.0, exc.reason, str(exc))
    reason = check_audio(wave, fp.sample_rate, fp.min_duration_s, fp.silence_dbfs)
    if reason is not None:
        seconds = wave.shape[0] / fp.sample_rate
        return None, _Result(None, 0, seconds, reason, f"{path}: {reason} ({seconds:.3f} s decoded)")
    return condition(wave, fp), None


def _write_at(path: str, offset: int, data: np.ndarray) -> None:
    """Write `data`'s bytes at `offset` of `path` (positional writes: workers share the file)."""
    if path not in _scratch_fds:
        _scratch_fds[path] = os.open(path, os.O_WRONLY)
    fd, view = _scratch_fds[path], memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _mel_job(task: _Task) -> _Result:
    """Decode, log-mel, fit; the mel is written straight into its row of the split's
    scratch file, not sent through the result pipe (pickling 150 KB per clip cost
    as much as computing it; pwrite is twice as fast as page-faulting a memmap)."""
    fp = _worker_fp
    assert fp is not None, "worker not initialised"
    wave, skipped = _decode(task.path, fp)
    if skipped is not None:
        return skipped
    mel, valid = mel_features(wave, fp)
    _write_at(task.scratch, task.row * mel.nbytes, mel)
    return _Result(None, valid, wave.shape[0] / fp.sample_rate, moments=_moments(mel, valid))


def _wave_job(task: _Task) -> _Result:
    fp = _worker_fp
    assert fp is not None, "worker not initialised"
    wave, skipped = _decode(task.path, fp)
    if skipped is not None:
        return skipped
    return _Result(wave, wave.shape[0], wave.shape[0] / fp.sample_rate)


def _vector_job(kind: str, task: _Task) -> _Result:
    """Decode, the utterance-level vector of the whole clip, written into its scratch row.

    A clip that gets no (or non-finite) features (openSMILE on a clip without voicing) is
    skipped as `non_finite`, so the classifiers never see NaN.
    """

    fp = _worker_fp
    assert fp is not None, "worker not initialised"
    wave, skipped = _decode(task.path, fp)
    if skipped is not None:
        return skipped
    feats = functionals(wave, fp.sample_rate, kind)
    seconds = wave.shape[0] / fp.sample_rate
    if not np.isfinite(feats).all():
        return _Result(None, 0, seconds, "non_finite",
                       f"{task.path}: {kind} gave {int((~np.isfinite(feats)).sum())} non-finite "
                       f"features ({seconds:.3f} s decoded)")
    _write_at(task.scratch, task.row * feats.nbytes, feats)
    return _Result(None, wave.shape[0], seconds)


def _run_jobs(job: Callable[[_Task], _Result], tasks: Sequence[_Task], fp: FeatureParams,
              workers: int, desc: str) -> Iterator[_Result]:
    """Results of `job` over `tasks`, in order, from `workers` processes (1: in-process).

    The caller holds a one-thread BLAS limit (see `_precompute`), which forked
    workers inherit, so both paths compute identical floats.
    """
    global _worker_fp
    if job is _mel_job:
        _analysis_for(fp)  # build the filterbank once; forked workers inherit the cache
    bar = tqdm(total=len(tasks), desc=desc, unit="file", mininterval=1.0, disable=None)
    previous, _worker_fp = _worker_fp, fp
    try:
        if workers <= 1 or len(tasks) < 2:
            for task in tasks:
                result = job(task)
                bar.update()
                yield result
            return
        context = multiprocessing.get_context()
        chunksize = max(1, min(32, len(tasks) // (workers * 16)))
        with context.Pool(workers, initializer=_init_worker,
                          initargs=(fp, context.get_start_method() != "fork")) as pool:
            for result in pool.imap(job, tasks, chunksize=chunksize):
                bar.update()
                yield result
    finally:
        _worker_fp = previous
        for fd in _scratch_fds.values():  # the in-process path's; pool workers' close on exit
            os.close(fd)
        _scratch_fds.clear()
        bar.close()


# --------------------------------------------------------------------------- stores
class _Sink:
    """Collects every clip of a study in a float32 scratch file next to the store, in
    manifest order (the union of the study's folds: each clip decoded once).

    mels: a [clips, n_mels, frames] file the workers fill by row (the
    utterance-level kinds likewise, [clips, n_features]); kept rows are compacted to the front
    afterwards (skips are rare). waves: the parent appends each decoded wave
    (ragged, size unknown up front).
    """

    def __init__(self, root: Path, rows: int, item_shape: tuple[int, ...]) -> None:
        self.path = root / "clips.npy.partial"
        self.item_shape = item_shape  # () for waves
        self.rows: list[IndexRow] = []
        self.positions: list[int] = []  # mels: scratch row of each kept item
        self.count = 0  # waves: samples written
        self.seconds: dict[str, float] = {}  # utt_id -> decoded seconds
        self.moments: list[np.ndarray] = []  # mels: per kept clip, see _Result
        self.fh: Optional[BinaryIO] = self.path.open("wb")
        if item_shape:  # sized up front (sparse); the workers write the rows
            self.fh.truncate(rows * int(np.prod(item_shape)) * 4)
            self.fh.close()
            self.fh = None

    def add(self, utt: Utterance, domain: int, task: _Task, result: _Result) -> None:
        if self.item_shape:
            offset = len(self.rows)
            self.positions.append(task.row)
        else:
            assert self.fh is not None and result.wave is not None
            offset = self.count
            self.fh.write(memoryview(result.wave).cast("B"))
            self.count += result.wave.shape[0]
        self.rows.append(IndexRow(utt.utt_id, utt.corpus, utt.speaker, utt.emotion, domain,
                                  offset, result.length))
        self.seconds[utt.utt_id] = result.seconds
        if result.moments is not None:  # mels only
            self.moments.append(result.moments)

    def array(self) -> np.ndarray:
        """The kept items as one array: [n, *item_shape] or [samples] (a read-only memmap
        for waves; for the fixed-size kinds in RAM up to _IN_RAM_BYTES, else a memmap)."""
        if not self.item_shape:
            if self.fh is not None:
                self.fh.close()
                self.fh = None
            return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.count,))
        if self.path.stat().st_size <= _IN_RAM_BYTES:
            full = np.fromfile(self.path, dtype=np.float32)
        else:
            full = np.memmap(self.path, dtype=np.float32, mode="r+")
        full = full.reshape(-1, *self.item_shape)
        for j, pos in enumerate(self.positions):
            if pos != j:  # pos >= j: moving rows forward never overwrites an unread row
                full[j] = full[pos]
        self.positions = list(range(len(self.positions)))
        return full[: len(self.rows)]

    def discard(self) -> None:
        if self.fh is not None:
            self.fh.close()
        self.path.unlink(missing_ok=True)


def _study_rows(manifests_dir: Path, study: str, labels: Sequence[str]) -> dict[int, list[Utterance]]:
    """Each fold's manifest rows that belong in a store split."""
    folds = {}
    for fold in study_folds(manifests_dir, study):
        path = manifest_path(manifests_dir, study, fold)
        rows = [r for r in read_manifest(path) if r.split in STORE_SPLITS]
        bad = sorted({r.emotion for r in rows if r.emotion not in labels and not (r.split == "adapt" and not r.emotion)})
        if bad:
            raise ManifestError(f"{path}: emotions {bad} are not in the study labels {list(labels)}; "
                                "rebuild the manifest (`dvc repro build-metadata`) after changing labels")
        folds[fold] = rows
    return folds


def _precompute(kind: str, manifests_dir: str | Path, study: str, out_root: str | Path, fp: FeatureParams,
                workers: int, labels: Sequence[str], target: Optional[str]) -> dict[str, Any]:
    # One BLAS thread for the whole call, not only around the pool: forking makes
    # OpenBLAS drop its threads, and restoring the thread count re-creates them
    # busy-spinning (~0.1 s each), which on 2 cores would stall the writing phase.
    with threadpool_limits(limits=1):
        return _precompute_limited(kind, Path(manifests_dir), study, Path(out_root), fp, workers, labels, target)


def _precompute_limited(kind: str, manifests_dir: Path, study: str, out_root: Path, fp: FeatureParams,
                        workers: int, labels: Sequence[str], target: Optional[str]) -> dict[str, Any]:
    started = time.perf_counter()
    folds = _study_rows(manifests_dir, study, labels)
    utts = list({u.utt_id: u for rows in folds.values() for u in rows}.values())  # first-seen order
    log.info("%s/%s: %d clips in %d fold(s) -> %s %s with %d worker(s)",
             manifests_dir, study, len(utts), len(folds), kind, out_root, workers)
    out_root.mkdir(parents=True, exist_ok=True)
    sink = _Sink(out_root, len(utts), _item_shape(kind, fp))
    try:
        skipped = _collect(kind, utts, sink, fp, workers, target, f"{kind} {out_root.name}")
        if not sink.rows:
            raise RuntimeError(f"{manifests_dir / study}: every file was skipped ({len(skipped)}); "
                               "see the skipped files logged above and check the corpus")
        written = _write_store(kind, out_root, sink, folds, fp, labels, target)
    finally:
        sink.discard()

    reasons = Counter(s["reason"] for s in skipped)
    if skipped:
        log.warning("%s: skipped %d file(s): %s", out_root, len(skipped), dict(reasons))
    return {
        "kind": kind, "manifests": str(manifests_dir / study), "out_dir": str(out_root), "workers": workers,
        "files": len(utts), "clips": len(sink.rows), "audio_seconds": round(sum(sink.seconds.values()), 3),
        "folds": written, "skipped": dict(sorted(reasons.items())), "skipped_files": skipped,
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def _collect(kind: str, utts: Sequence[Utterance], sink: _Sink, fp: FeatureParams,
             workers: int, target: Optional[str], desc: str) -> list[dict[str, str]]:
    """Decode every utterance into the sink; returns the skipped files."""
    tasks = [_Task(u.path, str(sink.path), i) for i, u in enumerate(utts)]
    skipped: list[dict[str, str]] = []
    job = _JOBS[kind] if kind in _JOBS else functools.partial(_vector_job, kind)
    # closing(): the pool is shut down even when collecting fails half-way.
    with closing(_run_jobs(job, tasks, fp, workers, desc)) as results:
        for utt, task, result in zip(utts, tasks, results, strict=True):
            if result.reason is not None:
                skipped.append({"utt_id": utt.utt_id, "path": utt.path, "reason": result.reason,
                                "detail": result.detail})
                log.warning("skipped %s (%s): %s", utt.utt_id, result.reason, result.detail)
                continue
            sink.add(utt, int(target is not None and utt.corpus == target), task, result)
    return skipped


def _write_store(kind: str, out_root: Path, sink: _Sink, folds: dict[int, list[Utterance]], fp: FeatureParams,
                 labels: Sequence[str], target: Optional[str]) -> dict[str, dict[str, int]]:
    """clips.npy/clips.csv (every kept clip once, un-normalised), then per fold f<k>/ with
    its splits' index files and meta (mels: the fold's train statistics), then meta.json
    with a fingerprint of all of it. Returns the rows per fold and split."""
    meta: dict[str, Any] = {
        "kind": kind, "sample_rate": fp.sample_rate, "labels": list(labels), "target": target,
        "features": {k: getattr(fp, k) for k in _store_keys(kind)}, "clips": len(sink.rows),
        "folds": sorted(folds),
    }
    by_id = {r.utt_id: i for i, r in enumerate(sink.rows)}
    if kind == "mels":
        meta.update(pad_db=SILENCE_DB,
                    definition="librosa.power_to_db(melspectrogram(power=2, center=True, "
                               "pad_mode='constant'), ref=1.0, amin=1e-10, top_db=None)")
        if fp.mel_norm == "speaker":
            meta["speaker_stats"] = _speaker_stats(sink)
    elif kind not in _JOBS:
        meta.update(functionals_meta(kind))
    for stale in [*out_root.glob("f*"), *(out_root / f"{s}.{ext}" for s in STORE_SPLITS for ext in ("npy", "csv"))]:
        if stale.exists() and (stale.is_file() or not stale.name[1:].isdigit() or int(stale.name[1:]) not in folds):
            log.info("removing stale %s", stale)  # an earlier layout's split or a fold that no longer exists
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    array = sink.array()
    write_split(out_root, "clips", array, sink.rows)
    del array
    written: dict[str, dict[str, int]] = {}
    for fold, rows in folds.items():
        fold_dir = out_root / f"f{fold}"
        fold_meta: dict[str, Any] = {"fold": fold}
        splits = {split: [sink.rows[by_id[u.utt_id]] for u in rows if u.split == split and u.utt_id in by_id]
                  for split in STORE_SPLITS}
        if kind == "mels":
            if not splits["train"]:
                raise RuntimeError(f"{out_root} fold {fold}: no usable train rows; normalisation statistics "
                                   "come from the train split only")
            moments = np.zeros_like(sink.moments[0])
            for r in splits["train"]:  # in manifest order: identical for any worker count
                moments += sink.moments[by_id[r.utt_id]]
            mean, std = _stats(moments, sum(r.length for r in splits["train"]))
            fold_meta.update(mean=mean.tolist(), std=std.tolist())
        fold_meta["splits"] = {s: len(r) for s, r in splits.items() if r}
        for split, split_rows in splits.items():
            if split_rows:
                write_index(fold_dir, split, split_rows)
            elif (fold_dir / f"{split}.csv").exists():  # a split of an earlier run that has no rows now
                log.info("removing stale %s", fold_dir / f"{split}.csv")
                (fold_dir / f"{split}.csv").unlink()
        write_meta(fold_dir, fold_meta)
        written[str(fold)] = fold_meta["splits"]
        log.info("wrote %s: %s", fold_dir, fold_meta["splits"])
    meta["content_sha256"] = store_fingerprint(out_root)
    write_meta(out_root, meta)
    log.info("wrote %s: %d clips, %.1f s of audio", out_root, len(sink.rows), sum(sink.seconds.values()))
    return written


def _speaker_stats(sink: _Sink) -> dict[str, dict[str, list[float]]]:
    """Per-mel-bin mean and std over the valid frames of each (corpus, speaker)'s clips in the
    store: {"<corpus>/<speaker>": {"mean": [...], "std": [...]}}, summed in clip order."""
    moments: dict[str, np.ndarray] = {}
    frames: Counter[str] = Counter()
    for row, m in zip(sink.rows, sink.moments):
        key = speaker_key(row.corpus, row.speaker)
        moments[key] = moments[key] + m if key in moments else m.copy()
        frames[key] += row.length
    stats = {key: _stats(moments[key], frames[key]) for key in moments}
    spread = np.std([m for m, _ in stats.values()], axis=0).mean() if len(stats) > 1 else 0.0
    log.info("mel_norm speaker: statistics of %d speakers (their means spread by %.2f per bin on average)",
             len(stats), spread)
    return {key: {"mean": m.tolist(), "std": s.tolist()} for key, (m, s) in stats.items()}


def precompute_mels(manifests_dir: str | Path, study: str, out_root: str | Path, fp: FeatureParams,
                    workers: int = 1, *, labels: Sequence[str],
                    target: Optional[str] = None) -> dict[str, Any]:
    """Build one study's log-mel store (see the module docstring); returns a report.

    `labels` is the study's label list (stored in meta.json), `target` its
    target corpus (index `domain` = 1 for its rows). Files that cannot be
    decoded or are empty, too short or silent are skipped and listed in the
    report's `skipped_files`; the stage still finishes.
    """
    return _precompute("mels", manifests_dir, study, out_root, fp, workers, labels, target)


def precompute_waves(manifests_dir: str | Path, study: str, out_root: str | Path, fp: FeatureParams,
                     workers: int = 1, *, labels: Sequence[str],
                     target: Optional[str] = None) -> dict[str, Any]:
    """Build one study's waveform store: per split, all clips at fp.sample_rate
    concatenated into one float32 array, located by the index offset/length."""
    return _precompute("waves", manifests_dir, study, out_root, fp, workers, labels, target)


def precompute_functionals(manifests_dir: str | Path, study: str, out_root: str | Path, fp: FeatureParams,
                           workers: int = 1, *, labels: Sequence[str],
                           target: Optional[str] = None, kind: str = "egemaps") -> dict[str, Any]:
    """Build one study's utterance-level vector store (`kind`: one of ser.config.FUNCTIONALS, see
    ser.features.functionals): a float32 [N, n_features] array of raw rows, one per clip."""
    if kind not in FUNCTIONALS:
        raise KeyError(f"unknown utterance-level store kind {kind!r}; known: {list(FUNCTIONALS)}")
    return _precompute(kind, manifests_dir, study, out_root, fp, workers, labels, target)


# kind -> worker job for the log-mel and wave stores; the other kinds are the
# utterance-level vectors of ser.config.FUNCTIONALS, run by _vector_job.
_JOBS: dict[str, Callable[[_Task], _Result]] = {"mels": _mel_job, "waves": _wave_job}


def _store_keys(kind: str) -> tuple[str, ...]:
    """FeatureParams fields that define a store of `kind` (recorded in meta.json)."""
    return {"mels": _MEL_KEYS, "waves": _WAVE_KEYS}.get(kind, _VECTOR_KEYS)


def _item_shape(kind: str, fp: FeatureParams) -> tuple[int, ...]:
    """One stored item's shape: () for the ragged wave store."""
    if kind == "mels":
        return (fp.n_mels, fp.frames)
    if kind == "waves":
        return ()
    return (n_features(kind),)
