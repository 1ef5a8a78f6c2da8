"""Audio decoding, sanity checks and conditioning shared by the precompute stages and `ser predict`.

`load_audio` reproduces `librosa.load(path, sr=sample_rate)` (soundfile decode,
channel mean, soxr "HQ" resampling, length fixed to ceil(n * ratio)) without
librosa's per-call overhead, so stored features match the librosa definition.

`condition` is the level/silence front end every feature kind applies after
`check_audio` (see FeatureParams): trimming of leading/trailing silence, optional
voice-activity detection (ser.features.vad), then per-utterance gain normalisation (peak, RMS over active samples, or ITU-R
BS.1770 gated loudness), with a limiter so no sample exceeds 0 dBFS.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import scipy.signal
import soundfile as sf
import soxr

from ser.errors import SerError
from ser.features.vad import vad_span

if TYPE_CHECKING:
    from ser.config import FeatureParams

__all__ = ["AudioError", "load_audio", "check_audio", "SKIP_REASONS", "condition", "condition_span",
           "trim_span", "normalise_gain", "peak_dbfs", "active_rms_dbfs", "loudness_lufs"]

# Reasons `check_audio` (and the precompute stages) give for skipping a file.
SKIP_REASONS = ("missing", "unreadable", "empty", "non_finite", "too_short", "silent")


class AudioError(RuntimeError, SerError):
    """A file cannot be decoded; the message names the file and what to do."""

    def __init__(self, path: str | Path, problem: str, reason: str = "unreadable") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {problem}")


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Decode `path` to float32 mono at `sample_rate`.

    Matches `librosa.load(path, sr=sample_rate)`: float32 decode, mean over
    channels, `soxr.resample(quality="HQ")` (librosa's default res_type
    "soxr_hq"), then zero-pad/trim to ceil(n * ratio) samples as librosa's
    `resample(fix=True)` does; bit-identical results. 16-bit WAV (every corpus
    here) is read as integers and converted in numpy (see `_pcm16_mono`).
    Raises AudioError for missing or corrupt files.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file; rebuild the manifest (`dvc repro build-metadata`) "
                               "or restore the file", reason="missing")
    try:
        with sf.SoundFile(path) as fh:
            native_sr = fh.samplerate
            # The int16 fast path is for WAV only: FLAC/OGG decode through libsndfile's float path.
            if fh.format in ("WAV", "WAVEX") and fh.subtype == "PCM_16":
                data = _pcm16_mono(fh.read(dtype="int16", always_2d=True))
            else:
                data = _channel_mean(fh.read(dtype="float32", always_2d=True))
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(path, f"cannot decode audio ({exc}); re-download or re-extract the corpus, "
                               "or remove the file from it") from None
    if native_sr != sample_rate and data.size:
        n_out = int(math.ceil(data.shape[0] * float(sample_rate) / native_sr))
        data = soxr.resample(data, native_sr, sample_rate, quality="HQ")
        if data.shape[0] != n_out:  # soxr may be off by one sample; librosa fixes the length
            data = np.pad(data, (0, n_out - data.shape[0])) if data.shape[0] < n_out else data[:n_out]
    return np.ascontiguousarray(data, dtype=np.float32)


_PCM16_SCALE = np.float32(1.0 / 32768.0)  # libsndfile's int16 -> float normalisation


def _pcm16_mono(ints: np.ndarray) -> np.ndarray:
    """Mono float32 from [n, channels] int16, bit-identical to a float32 read + librosa.to_mono.

    libsndfile converts PCM_16 to float as x * 2**-15, exact in float32, and
    every partial sum over channels of such values is exact too, so summing
    the integers first and scaling once gives the same floats. Reading int16
    skips libsndfile's slower float conversion (0.5 -> 0.15 ms per 2 s of
    48 kHz stereo).
    """
    if ints.shape[1] == 1:
        return ints[:, 0].astype(np.float32) * _PCM16_SCALE
    total = ints[:, 0].astype(np.int32)
    for c in range(1, ints.shape[1]):  # column adds: a reduction over the short channel axis is slow
        total += ints[:, c]
    return (total.astype(np.float32) * _PCM16_SCALE) / np.float32(ints.shape[1])


def _channel_mean(data: np.ndarray) -> np.ndarray:
    """Mean over channels of [n, channels] float32, bit-identical to librosa.to_mono.

    librosa takes np.mean of the transposed [channels, n] view over axis 0,
    which numpy evaluates as a sequential float32 sum over channels divided by
    the count; that strided reduction costs ~3 ms per 2 s of 48 kHz stereo,
    column adds cost a tenth of it.
    """
    if data.shape[1] == 1:
        return data[:, 0].copy()
    total = data[:, 0].copy()
    for c in range(1, data.shape[1]):
        total += data[:, c]
    total /= np.float32(data.shape[1])
    return total


def check_audio(wave: np.ndarray, sample_rate: int, min_duration_s: float,
                silence_dbfs: float) -> Optional[str]:
    """Why a decoded clip is unusable (a SKIP_REASONS name), or None if it is fine.

    Silence is judged on the peak level: a clip whose loudest sample is below
    `silence_dbfs` carries no speech, while quiet but real speech (low RMS
    with pauses) is kept.
    """
    if wave.size == 0:
        return "empty"
    if not np.isfinite(wave).all():
        return "non_finite"
    if wave.shape[0] < min_duration_s * sample_rate:
        return "too_short"
    peak = float(np.max(np.abs(wave)))
    if peak <= 0.0 or 20.0 * math.log10(peak) < silence_dbfs:
        return "silent"
    return None


# --------------------------------------------------------------------------- conditioning
_FRAME_S = 0.025  # analysis frame of trimming and active-RMS (25 ms, as the STFT window)
_HOP_S = 0.010  # 10 ms hop
TRIM_MARGIN_S = 0.05  # kept on each side of the detected speech: onsets/offsets are soft
ACTIVE_DB = 40.0  # rms gain: frames within this many dB of the loudest frame are "active"
_FLOOR = 1e-10  # power floor (-100 dB), as the log-mels'


def _frame_power_db(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, int]:
    """Mean-square power (dB) of 25 ms frames every 10 ms, frame and hop in samples."""
    frame = max(1, round(_FRAME_S * sample_rate))
    hop = max(1, round(_HOP_S * sample_rate))
    x = wave.astype(np.float64)
    if x.shape[0] < frame:
        x = np.pad(x, (0, frame - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    power = np.mean(frames * frames, axis=1)
    return 10.0 * np.log10(np.maximum(power, _FLOOR)), frame, hop


def trim_span(wave: np.ndarray, sample_rate: int, top_db: float, min_duration_s: float) -> tuple[int, int]:
    """[start, end) of `wave` without its leading/trailing silence.

    Like `librosa.effects.trim(top_db=...)`: a frame is silent when its power
    is more than `top_db` below the loudest frame's (digital zeros always
    are). TRIM_MARGIN_S is kept on each side, but no leading or trailing
    exact zeros. Never trims to nothing: a span
    shorter than `min_duration_s` is widened symmetrically (within the clip)
    to that minimum, so a trimmed clip passes the same length check.
    """
    n = wave.shape[0]
    db, frame, hop = _frame_power_db(wave, sample_rate)
    loud = np.flatnonzero(db > db.max() - top_db)
    margin = round(TRIM_MARGIN_S * sample_rate)
    start = max(0, int(loud[0]) * hop - margin)
    end = min(n, int(loud[-1]) * hop + frame + margin)
    nonzero = np.flatnonzero(wave[start:end])  # the margin never keeps digital zeros
    if nonzero.size:
        start, end = start + int(nonzero[0]), start + int(nonzero[-1]) + 1
    need = min(n, int(math.ceil(min_duration_s * sample_rate)))
    if end - start < need:
        start = max(0, min(n - need, (start + end - need) // 2))
        end = start + need
    return start, end


def peak_dbfs(wave: np.ndarray) -> float:
    """Sample peak in dBFS (-inf for an all-zero clip)."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def active_rms_dbfs(wave: np.ndarray, sample_rate: int) -> float:
    """RMS level in dBFS over the active frames: those within ACTIVE_DB of the loudest.

    Pauses and digital silence do not count, so a clip's level does not depend
    on how much silence surrounds the speech.
    """
    db, _frame, _hop = _frame_power_db(wave, sample_rate)
    active = db[db > db.max() - ACTIVE_DB]
    return float(10.0 * math.log10(max(np.mean(10.0 ** (active / 10.0)), _FLOOR)))


@functools.lru_cache(maxsize=8)
def _k_weighting(sample_rate: int) -> np.ndarray:
    """ITU-R BS.1770 K-weighting (high shelf + RLB high-pass) as second-order sections.

    Designed for any rate from the analogue prototypes (the parameters
    libebur128 derives; at 48 kHz they give the coefficients tabled in BS.1770).
    """
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / sample_rate)
    vh = 10.0 ** (gain_db / 20.0)
    vb = vh ** 0.4996667741545416
    a0 = 1.0 + k / q + k * k
    shelf = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0,
             1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / sample_rate)
    a0 = 1.0 + k / q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0]
    return np.array([shelf, highpass])


def loudness_lufs(wave: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness (LUFS) of a mono clip, ITU-R BS.1770-4.

    K-weighting, 400 ms blocks with 75 % overlap, absolute gate at -70 LUFS,
    relative gate 10 LU below the absolutely gated mean. A clip shorter than
    one block is measured as one block; when every block is gated out the
    ungated mean is used, so the result is always finite for a non-zero clip.
    """
    y = scipy.signal.sosfilt(_k_weighting(sample_rate), wave.astype(np.float64))
    block, step = round(0.4 * sample_rate), round(0.1 * sample_rate)
    if y.shape[0] <= block:
        z = np.array([np.mean(y * y)])
    else:
        z = np.mean(np.lib.stride_tricks.sliding_window_view(y * y, block)[::step], axis=1)
    level = -0.691 + 10.0 * np.log10(np.maximum(z, _FLOOR))
    gated = z[level > -70.0]
    if gated.size:
        relative = -0.691 + 10.0 * math.log10(float(np.mean(gated))) - 10.0
        gated = gated[-0.691 + 10.0 * np.log10(np.maximum(gated, _FLOOR)) > relative]
    return float(-0.691 + 10.0 * math.log10(max(float(np.mean(gated if gated.size else z)), _FLOOR)))


def normalise_gain(wave: np.ndarray, sample_rate: int, mode: str, target_dbfs: float) -> np.ndarray:
    """Scale `wave` so its peak / active RMS / loudness is `target_dbfs` (dBFS or LUFS).

    The one gain is then limited so that no sample exceeds 0 dBFS (the whole
    clip is scaled down, no compression): a very peaky clip can end below its
    target level rather than clip. mode "none" returns `wave` unchanged.
    """
    if mode == "none":
        return wave
    measure = {"peak": lambda: peak_dbfs(wave), "rms": lambda: active_rms_dbfs(wave, sample_rate),
               "loudness": lambda: loudness_lufs(wave, sample_rate)}
    if mode not in measure:
        raise ValueError(f"gain must be one of ['none', *{sorted(measure)}], got {mode!r}")
    level = measure[mode]()
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if not math.isfinite(level) or peak <= 0.0:
        return wave  # all zeros: nothing to scale (check_audio rejects such clips anyway)
    gain = min(10.0 ** ((target_dbfs - level) / 20.0), 1.0 / peak)
    return np.clip(wave.astype(np.float64) * gain, -1.0, 1.0).astype(np.float32)


def condition_span(wave: np.ndarray, fp: "FeatureParams") -> tuple[np.ndarray, int]:
    """`condition(wave, fp)` and the offset (samples) of its first sample in `wave`."""
    start, end = 0, wave.shape[0]
    if fp.trim_db is not None and wave.size:
        start, end = trim_span(wave, fp.sample_rate, fp.trim_db, fp.min_duration_s)
    kept, offset = vad_span(wave[start:end], fp.sample_rate, fp.vad, fp.vad_threshold, fp.min_duration_s)
    out = normalise_gain(kept, fp.sample_rate, fp.gain, fp.gain_dbfs)
    return np.ascontiguousarray(out, dtype=np.float32), start + offset


def condition(wave: np.ndarray, fp: "FeatureParams") -> np.ndarray:
    """The front end every feature kind applies to a checked clip (see FeatureParams).

    Trim leading/trailing silence (`fp.trim_db`), keep what the voice-activity
    detector calls speech (`fp.vad`: ser.features.vad), then normalise the level of
    what is left (`fp.gain`, `fp.gain_dbfs`), limited to 0 dBFS peak.
    """
    return condition_span(wave, fp)[0]
