"""Synthetic demo corpora in the real corpora's exact on-disk layouts.

The pipeline's offline default: `generate_corpus("ravdess", root, ...)` writes a
small RAVDESS (or IEMOCAP, CREMA-D, TESS) that the real adapters, split lists
and label tables read unchanged: same folder structure, file names, label
files, speaker counts and sample rates as the real corpus (see design.md).

Each clip is a source-filter voice: a glottal pulse train (Rosenberg pulses)
on an f0 contour with syllable accents, declination, jitter, shimmer and
aspiration noise, filtered by time-varying formant resonances that move from
vowel to vowel like syllables, under a syllable-rate amplitude envelope with
fricative onsets. Emotion is carried by audible cues (`STYLES`): pitch level and
range, speaking rate, level, spectral tilt and voice quality (jitter, breathiness,
creak); each corpus scales them by its own expressiveness (IEMOCAP's improvised
speech is milder than acted RAVDESS, RAVDESS/CREMA-D intensity codes matter).
Speakers differ in base f0 (gender, age), vocal-tract length (formant scale),
rate, brightness, breathiness and level. Sentence-based corpora reuse one
vowel sequence per sentence / word, so lexical content is constant across
speakers and emotions as in the real recordings.

Each corpus has its own channel so the cross-corpus gap is real: IEMOCAP a
noisy room (synthetic reverb per session, pink background noise, 60 Hz hum,
90-6500 Hz band), RAVDESS a clean full-band studio, CREMA-D a band-limited
(250-3800 Hz), noisier channel, TESS clean, full band and louder.

Injected faults (`inject_faults=True`), for the pipeline's skip paths; the
labels of these files still parse and they are listed in the marker file:
  - IEMOCAP: one all-silent clip (digital zeros, normal length) and one
    too-short clip (0.1 s of speech); both carry a 4-class label (neu/hap/exc/
    sad/ang) in sessions 1-3, so a 4-class training set would otherwise keep them.
  - CREMA-D: one byte-identical duplicate pair under different emotion labels
    (the real corpus has 3 such pairs): the later file is a copy of the earlier.
No unreadable files are injected.

Determinism: every random draw comes from a generator seeded by (seed, corpus
name, purpose, index), so reruns are byte-identical and corpora do not depend
on each other. Completion: `<root>/.demo-partial.json` is written first and
`<root>/.demo-complete.json` (settings, file count, faults) last; a root whose
complete marker matches the settings (and whose wav count agrees) is left as
is; a root with either marker is regenerated, deleting only the files the
generator wrote (each marker lists them); a file it did not write (a user's
addition) stops the run with its name, so nothing of theirs is deleted; a root
with corpus-looking content but no marker is refused (it may be a real corpus).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import soundfile as sf
import soxr

from ser.fsutil import write_json_atomic
from scipy import fft as sp_fft
from scipy import signal
from tqdm import tqdm

log = logging.getLogger(__name__)

__all__ = ["DEMO_CORPORA", "MARKER", "PARTIAL_MARKER", "generate_corpus", "foreign_files"]

DEMO_CORPORA = ("iemocap", "ravdess", "crema_d", "tess")
MARKER = ".demo-complete.json"
PARTIAL_MARKER = ".demo-partial.json"
# Bump when the generated audio or layout changes: old demo trees then regenerate.
GENERATOR_VERSION = 1

MIN_DURATION_S, MAX_DURATION_S = 1.05, 2.95  # clips are 1-3 s
SHORT_FAULT_S = 0.1


# --------------------------------------------------------------------------- voice model
@dataclass(frozen=True)
class Style:
    """How an emotion sounds; every field is an audible cue."""
    f0: float        # pitch level, x the speaker's base f0
    range_st: float  # syllable accent excursion, semitones
    rate: float      # syllables per second
    gain_db: float   # level relative to neutral
    tilt: float      # extra spectral slope above 500 Hz, dB/octave (0 = bright, -8 = dark)
    jitter: float    # cycle-to-cycle f0 perturbation (fraction)
    breath: float    # aspiration noise (breathiness)
    creak: float     # period-doubling depth (vocal fry)
    rise: float      # contour over the last third, semitones (+ rising, - falling)
    tremor: float    # 6-8 Hz f0 wobble depth, semitones
    oq: float        # glottal open quotient: low = pressed voice, high = lax

    def toward(self, other: "Style", w: float) -> "Style":
        """Interpolate (w=0: self, w=1: other; w>1 exaggerates)."""
        return Style(**{f.name: getattr(self, f.name) + w * (getattr(other, f.name) - getattr(self, f.name))
                        for f in fields(Style)})


STYLES: dict[str, Style] = {
    #                   f0    range rate  gain  tilt  jitter breath creak rise tremor oq
    "neutral":    Style(1.00, 2.5, 4.6,  0.0, -3.0, 0.006, 0.10, 0.00, -2.0, 0.0, 0.60),
    "calm":       Style(0.94, 1.4, 3.7, -7.0, -6.0, 0.005, 0.25, 0.00, -1.5, 0.0, 0.68),
    "happy":      Style(1.30, 6.5, 5.3,  4.0, -1.5, 0.008, 0.08, 0.00, -1.0, 0.0, 0.55),
    "excited":    Style(1.40, 7.5, 5.7,  6.0, -0.5, 0.010, 0.06, 0.00,  0.0, 0.0, 0.50),
    "sad":        Style(0.84, 1.2, 3.2, -6.0, -8.0, 0.012, 0.45, 0.10, -3.0, 0.0, 0.72),
    "angry":      Style(1.32, 4.5, 5.6,  8.0,  1.0, 0.012, 0.05, 0.00, -3.0, 0.0, 0.42),
    "frustrated": Style(1.14, 3.5, 5.0,  4.0, -1.0, 0.010, 0.10, 0.05, -2.5, 0.0, 0.50),
    "fear":       Style(1.45, 3.0, 5.9,  1.0, -2.5, 0.035, 0.30, 0.00,  1.0, 0.8, 0.62),
    "disgust":    Style(0.88, 3.0, 3.5, -1.0, -5.0, 0.020, 0.12, 0.60, -3.0, 0.0, 0.50),
    "surprise":   Style(1.30, 7.5, 4.8,  3.0, -1.5, 0.010, 0.10, 0.00,  6.0, 0.0, 0.55),
}


@dataclass(frozen=True)
class Voice:
    """One speaker's voice."""
    f0: float             # base f0, Hz
    formant_scale: float  # 1 / vocal-tract length: women ~1.16
    rate: float           # speaking-rate factor
    tilt: float           # brightness offset, dB/octave
    breath: float         # habitual breathiness
    jitter: float         # habitual roughness
    level_db: float       # recording level offset


def _make_voice(rng: np.random.Generator, gender: str, age: float = 35.0) -> Voice:
    female = gender == "F"
    # f0 drops a little with age in women (and rises slightly in men); jitter grows.
    aging = max(0.0, age - 40.0)
    f0 = rng.normal(205.0, 16.0) - 0.6 * aging if female else rng.normal(115.0, 10.0) + 0.2 * aging
    return Voice(
        f0=float(f0),
        formant_scale=float(rng.normal(1.16 if female else 1.0, 0.03)),
        rate=float(rng.normal(1.0, 0.07)),
        tilt=float(rng.normal(0.0, 1.0)),
        breath=float(rng.uniform(0.0, 0.12) + (0.05 if female else 0.0)),
        jitter=float(rng.uniform(0.0, 0.004) + 0.0002 * aging),
        level_db=float(rng.normal(0.0, 1.5)),
    )


# Peterson & Barney (1952) adult male F1-F4 (Hz): i, ɪ, ɛ, æ, ɑ, ʌ, ʊ, u, ɝ.
VOWELS = np.array([
    [270, 2290, 3010, 3700], [390, 1990, 2550, 3600], [530, 1840, 2480, 3500],
    [660, 1720, 2410, 3500], [730, 1090, 2440, 3400], [640, 1190, 2390, 3400],
    [440, 1020, 2240, 3300], [300, 870, 2240, 3300], [490, 1350, 1690, 3300],
], dtype=float)
BANDWIDTHS = np.array([80.0, 100.0, 140.0, 200.0])


@dataclass(frozen=True)
class Channel:
    """A recording chain: room, background, band limits, level."""
    level_db: float                        # corpus-wide level offset
    noise_db: float                        # background noise RMS, dBFS
    noise_slope: float                     # noise power ~ f^-slope (0 white, 1 pink)
    band: Optional[tuple[float, float]]    # Butterworth band-pass, Hz
    band_order: int = 2
    rt60: float = 0.0                      # reverb decay time, s (0 = dry)
    drr_db: float = 0.0                    # direct-to-reverberant ratio
    hum_db: Optional[float] = None         # 60 Hz mains hum (US recordings), dBFS


@dataclass(frozen=True)
class _Clip:
    """What to render for one file."""
    rel: str                        # path under the corpus root
    label: str                      # the corpus's own emotion code
    speaker: str
    style: Style
    voice: Voice
    vowels: Optional[tuple[int, ...]]  # fixed lexical content; None = free speech
    room: int = 0                   # which room impulse response (IEMOCAP session)
    pad: tuple[float, float] = (0.06, 0.2)  # silence before/after the speech, s


@dataclass(frozen=True)
class _Corpus:
    sample_rate: int
    channel: Channel
    plan: Callable[[int, int, bool], "_Plan"]  # (seed, clips_per_speaker, faults) -> plan
    owned: tuple[str, ...]                     # root entries this generator writes (and may wipe)


@dataclass
class _Plan:
    clips: list[_Clip]
    silent: set[int]                      # indices written as digital silence
    short: set[int]                       # indices cut to SHORT_FAULT_S
    duplicates: list[tuple[int, int]]     # (original, copy) index pairs
    extra: Callable[[Path, list[int]], None] = lambda root, lengths: None  # label files etc.
    extra_files: tuple[str, ...] = ()     # what `extra` writes, relative to the root

    def paths(self) -> list[str]:
        """Every file this plan writes, relative to the corpus root."""
        return sorted({c.rel for c in self.clips} | set(self.extra_files))


def _rng(seed: int, name: str, *keys: int) -> np.random.Generator:
    # crc32, not hash(): Python's str hash is salted per process.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *keys])


def _vowels_for(text: str, n: int) -> tuple[int, ...]:
    """A fixed vowel sequence for a sentence/word: same words, same formant path."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return tuple(int(v) for v in rng.integers(0, len(VOWELS), n))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def _smooth(x: np.ndarray, taps: int) -> np.ndarray:
    return np.convolve(x, np.ones(taps) / taps, mode="same")


def _stft(x: np.ndarray, nfft: int, hop: int) -> np.ndarray:
    """Centred Hann STFT of (..., n) float32 signals -> (..., frames, bins)."""
    n = x.shape[-1]
    n_frames = 1 + -(-n // hop)
    padded = np.zeros(x.shape[:-1] + ((n_frames - 1) * hop + nfft,), np.float32)
    padded[..., nfft // 2: nfft // 2 + n] = x
    frames = np.lib.stride_tricks.sliding_window_view(padded, nfft, axis=-1)[..., ::hop, :]
    return sp_fft.rfft(frames * _hann(nfft), axis=-1)


def _istft(spec: np.ndarray, nfft: int, hop: int, n: int) -> np.ndarray:
    """Inverse of `_stft` for one signal (weighted overlap-add)."""
    frames = sp_fft.irfft(spec, n=nfft, axis=-1) * _hann(nfft)
    out = np.zeros((len(frames) - 1) * hop + nfft, np.float32)
    step = nfft // hop
    for j in range(step):  # frames j, j+step, ... tile the signal without overlapping
        tiles = frames[j::step].reshape(-1)
        out[j * hop: j * hop + len(tiles)] += tiles
    # Periodic Hann analysis + synthesis at hop nfft/4 sums to 1.5.
    return out[nfft // 2: nfft // 2 + n] / 1.5


@lru_cache(maxsize=None)
def _hann(nfft: int) -> np.ndarray:
    return signal.get_window("hann", nfft).astype(np.float32)


@lru_cache(maxsize=None)
def _glottal_table(oq: float, size: int = 8192) -> np.ndarray:
    """Rosenberg glottal flow over one period (opening 60 %, closing 40 % of the open phase)."""
    frac = np.linspace(0.0, 1.0, size)
    tp, tn = 0.6 * oq, 0.4 * oq
    flow = np.where(frac < tp, 0.5 * (1.0 - np.cos(np.pi * frac / tp)),
                    np.where(frac < oq, np.cos(0.5 * np.pi * np.clip((frac - tp) / tn, 0, 1)), 0.0))
    return flow.astype(np.float32)


def _glottal_source(rng: np.random.Generator, style: Style, voice: Voice, sr: int, total: float, lead: float,
                    speech: float, centers: np.ndarray, stress: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The voiced excitation (float32, with aspiration noise) and its 5 ms control grid."""
    n = int(round(total * sr))
    t = np.arange(n) / sr
    # f0 contour on a 5 ms control grid: accents on stressed syllables, declination,
    # the emotion's final rise/fall and tremor; jitter held for ~1 period.
    step = 0.005
    tc = np.arange(0.0, total + 2 * step, step)
    u = np.clip((tc - lead) / speech, 0.0, 1.0)
    semis = np.interp(tc, centers, (stress - 0.35) * style.range_st) - 1.5 * u
    semis += style.rise * np.clip(3.0 * u - 2.0, 0.0, 1.0) ** 2
    semis += style.tremor * np.sin(2 * np.pi * rng.uniform(6.0, 8.0) * tc + rng.uniform(0, 2 * np.pi))
    jitter = style.jitter + voice.jitter
    f0c = voice.f0 * style.f0 * 2.0 ** (semis / 12.0) * (1.0 + jitter * rng.standard_normal(len(tc)))
    f0 = f0c[np.minimum((t * (1 / step)).astype(np.int32), len(tc) - 1)]

    # Rosenberg glottal flow; its derivative (lip radiation) is the excitation.
    phase = np.cumsum(f0 / sr)
    cycle = phase.astype(np.int64)
    frac = phase - cycle
    breath = style.breath + voice.breath
    oq = round(float(np.clip(style.oq + 0.3 * voice.breath, 0.3, 0.9)), 3)
    table = _glottal_table(oq)
    source = np.diff(table[(frac * (len(table) - 1)).astype(np.int32)], prepend=np.float32(0))
    per_cycle = 1.0 + 2.0 * jitter * rng.standard_normal(cycle[-1] + 2)  # shimmer
    per_cycle *= 1.0 - 0.75 * style.creak * (np.arange(cycle[-1] + 2) % 2)  # creak: alternate pulses
    source *= (per_cycle / _rms(source)).astype(np.float32)[cycle]
    # Aspiration noise, louder while the glottis is open.
    aspiration = rng.standard_normal(n, dtype=np.float32) * np.where(frac < oq, 1.0, 0.4).astype(np.float32)
    source += np.float32(0.25 * breath) * aspiration
    return source, tc


def _excitation(rng: np.random.Generator, source: np.ndarray, sr: int, tc: np.ndarray, edges: np.ndarray,
                stress: np.ndarray) -> np.ndarray:
    """[2, n]: the voiced source under syllable envelopes, and the fricative onsets' noise."""
    k, n = len(stress), len(source)
    t = np.arange(n) / sr
    # Syllable envelopes on the control grid, smoothed (no clicks), then to samples.
    seg = np.clip(np.searchsorted(edges, tc, side="right") - 1, 0, k - 1)
    inside = (tc >= edges[0]) & (tc < edges[-1])
    pos = (tc - edges[seg]) / (edges[seg + 1] - edges[seg])
    onset = np.where(rng.random(k) < 0.65, rng.uniform(0.15, 0.3, k), 0.0)[seg]
    vpos = np.clip((pos - onset) / (1.0 - onset), 0.0, 1.0)
    env_v = np.where(pos >= onset, 0.2 + 0.8 * np.sin(np.pi * vpos) ** 0.8, 0.0)
    env_v *= (0.55 + 0.45 * stress)[seg] * inside
    env_c = np.where(pos < onset, np.sin(np.pi * pos / np.maximum(onset, 1e-6)), 0.0) * inside
    env_c *= rng.uniform(0.08, 0.2)
    excitation = np.empty((2, n), np.float32)
    excitation[0] = source * np.interp(t, tc, _smooth(env_v, 5))
    excitation[1] = rng.standard_normal(n, dtype=np.float32) * np.interp(t, tc, _smooth(env_c, 3))
    return excitation


def _vocal_tract(rng: np.random.Generator, excitation: np.ndarray, sr: int, style: Style, voice: Voice,
                 centers: np.ndarray, vowels: np.ndarray) -> np.ndarray:
    """The excitation through a time-varying vocal tract, in the STFT domain (~21-32 ms frames).

    Cascade resonances (DC gain 1) whose F1-F4 glide between the syllables' vowel
    targets, fixed higher formants of a neutral tube, and the emotion's spectral
    tilt. Fricative onsets get a high band of their own.
    """
    n = excitation.shape[1]
    nfft = 512 if sr <= 32000 else 1024
    hop = nfft // 4
    spec = _stft(excitation, nfft, hop)
    f = np.arange(nfft // 2 + 1) * (sr / nfft)
    times = np.arange(spec.shape[1]) * (hop / sr)
    # |H|^2 of a cascade resonance with DC gain 1: F^4 / ((F^2 - f^2)^2 + (B f)^2);
    # products, not sums of logs: logs over frames x bins cost more than the FFTs.
    static = np.ones_like(f)
    for fh in np.arange(4500.0, min(0.45 * sr, 11000.0), 1000.0) * voice.formant_scale:
        static *= fh ** 4 / ((fh ** 2 - f ** 2) ** 2 + ((150 + 0.05 * fh) * f) ** 2)
    # The emotion's spectral tilt, as a power ratio per octave above 500 Hz.
    static *= (np.maximum(f, 500.0) / 500.0) ** ((style.tilt + voice.tilt) * np.log2(10) / 10)
    power = static.astype(np.float32)[None, :]
    f2 = (f ** 2).astype(np.float32)
    targets = VOWELS[vowels] * voice.formant_scale
    widen = 1.0 + 0.8 * (style.breath + voice.breath)  # breathy voices have damped (wider) first formants
    for i in range(4):
        fi2 = (np.interp(times, centers, targets[:, i]) ** 2).astype(np.float32)[:, None]
        b2f2 = float(BANDWIDTHS[i] * (widen if i == 0 else 1.0)) ** 2 * f2
        power = power * (fi2 * fi2 / (np.square(fi2 - f2) + b2f2))
    fc = min(rng.uniform(3500.0, 5500.0) * voice.formant_scale, 0.4 * sr)
    h_fric = (3.0 / (1.0 + ((f - fc) / 1500.0) ** 2) * (f > 1200)).astype(np.float32)
    return _istft(spec[0] * np.sqrt(power) + spec[1] * h_fric, nfft, hop, n)


def _render_speech(rng: np.random.Generator, style: Style, voice: Voice, sr: int,
                   vowels: Optional[Sequence[int]], pad: tuple[float, float] = (0.06, 0.2)) -> np.ndarray:
    """One dry utterance (float32), RMS-normalised to its emotion's and speaker's level.

    `pad` bounds the silence before and after the speech, in seconds. The random draws
    happen in a fixed order (timing, source, envelopes, tract, level): a seed gives one clip.
    """
    rate = style.rate * voice.rate * rng.normal(1.0, 0.05)
    lead, trail = rng.uniform(*pad), rng.uniform(*pad)
    if vowels is None:  # free speech: length first, then as many syllables as fit
        target = rng.uniform(1.2, MAX_DURATION_S)
        vowels = rng.integers(0, len(VOWELS), max(3, round((target - lead - trail) * rate)))
    vowels = np.asarray(vowels)
    k = len(vowels)
    total = float(np.clip(lead + k / rate + trail, MIN_DURATION_S, MAX_DURATION_S))
    speech = total - lead - trail

    w = rng.uniform(0.7, 1.3, k)
    edges = lead + speech * np.concatenate(([0.0], np.cumsum(w) / w.sum()))
    centers = 0.5 * (edges[:-1] + edges[1:])
    stress = rng.uniform(0.0, 1.0, k)

    source, tc = _glottal_source(rng, style, voice, sr, total, lead, speech, centers, stress)
    excitation = _excitation(rng, source, sr, tc, edges, stress)
    y = _vocal_tract(rng, excitation, sr, style, voice, centers, vowels)
    level = -27.0 + style.gain_db + voice.level_db + rng.normal(0.0, 1.0)
    active = slice(int(edges[0] * sr), int(edges[-1] * sr))
    return y * np.float32(10 ** (level / 20) / _rms(y[active]))


def _room_ir(rng: np.random.Generator, sr: int, rt60: float) -> np.ndarray:
    """A synthetic late-reverb impulse response: decaying, slightly darkened noise."""
    t = np.arange(int(min(1.2 * rt60, 0.6) * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-6.91 * t / rt60)
    ir[: int(0.003 * sr)] = 0.0  # pre-delay: the first reflections arrive after the direct sound
    return _smooth(ir, 3).astype(np.float32)  # air absorption


def _colored_noise(rng: np.random.Generator, n: int, sr: int, slope: float) -> np.ndarray:
    """Unit-RMS noise with power ~ f^-slope (float32)."""
    if slope == 0:
        return rng.standard_normal(n, dtype=np.float32)
    m = sp_fft.next_fast_len(n, real=True)  # an odd length would make the FFT 10x slower
    spec = sp_fft.rfft(rng.standard_normal(m, dtype=np.float32))
    spec *= (np.maximum(sp_fft.rfftfreq(m, 1.0 / sr), 50.0) ** (-slope / 2)).astype(np.float32)
    x = sp_fft.irfft(spec, m)[:n]
    return x / np.float32(_rms(x))


@lru_cache(maxsize=None)
def _hum(sr: int) -> np.ndarray:
    """Unit-RMS 60 Hz mains hum with two harmonics, long enough for any clip."""
    t = np.arange(int((MAX_DURATION_S + 0.1) * sr)) / sr
    hum = sum(a * np.sin(2 * np.pi * 60.0 * h * t + h) for h, a in ((1, 1.0), (2, 0.5), (3, 0.3)))
    return (hum / _rms(hum)).astype(np.float32)


@lru_cache(maxsize=None)
def _bandpass(sr: int, band: tuple[float, float], order: int) -> np.ndarray:
    return signal.butter(order, band, btype="bandpass", fs=sr, output="sos")


def _apply_channel(y: np.ndarray, sr: int, ch: Channel, rng: np.random.Generator,
                   ir: Optional[np.ndarray]) -> np.ndarray:
    if ir is not None:
        wet = signal.fftconvolve(y, ir)[: len(y)]
        y = y + wet * (_rms(y) / _rms(wet) * 10 ** (-ch.drr_db / 20))
    n = len(y)
    y = y + _colored_noise(rng, n, sr, ch.noise_slope) * 10 ** ((ch.noise_db + rng.normal(0, 1.5)) / 20)
    if ch.hum_db is not None:
        start = int(rng.integers(0, sr // 60))  # random phase of the mains cycle
        y = y + _hum(sr)[start: start + n] * np.float32(10 ** (ch.hum_db / 20))
    if ch.band is not None:
        y = signal.sosfilt(_bandpass(sr, ch.band, ch.band_order), y)
    y = y * 10 ** (ch.level_db / 20)
    # Soft limiter above 0.8: loud (angry) takes saturate instead of wrapping.
    y = y.astype(np.float32)
    over = np.abs(y) > 0.8
    if over.any():
        y[over] = np.sign(y[over]) * (0.8 + 0.2 * np.tanh((np.abs(y[over]) - 0.8) / 0.2))
    return y


# --------------------------------------------------------------------------- corpora
def _balanced(pools: Sequence[list], n: int, offset: int) -> list:
    """Take n items round-robin over pools, starting at pool `offset`, skipping empty ones.

    Rotating the offset per speaker balances the label counts over the corpus.
    """
    order = [pools[(offset + i) % len(pools)] for i in range(len(pools))]
    out: list = []
    for r in range(max(len(p) for p in pools)):
        out.extend(p[r] for p in order if r < len(p))
    return out[:n]


def _check_capacity(name: str, n: int, most: int) -> None:
    if n > most:
        raise ValueError(f"demo {name}: clips_per_speaker={n}, but the real {name} naming allows at most "
                         f"{most} distinct files per speaker; lower demo.clips_per_speaker.{name} in params.yaml")


# IEMOCAP ------------------------------------------------------------------
IEMOCAP_STYLE = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad",
                 "ang": "angry", "fru": "frustrated"}
IEMOCAP_EVALUATOR = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
                     "ang": "Anger", "fru": "Frustration", "oth": "Other"}
# Typical mean evaluator ratings (valence, activation, dominance), 1-5.
IEMOCAP_VAD = {"neu": (3, 2.5, 2.5), "hap": (4, 3, 3), "exc": (4, 3.5, 3), "sad": (2, 2, 2),
               "ang": (1.5, 4, 4), "fru": (2, 3, 3.5), "oth": (3, 3, 3), "xxx": (2.5, 3, 3)}
IEMOCAP_DIALOGS = ("{s}F_impro01", "{s}M_impro03", "{s}F_script01_1", "{s}M_script02_2")
IEMOCAP_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
IEMOCAP_INTENSITY = 0.75  # improvised/scripted dyadic speech is milder than acted corpora
IEMOCAP_FAULT_LABELS = ("neu", "hap", "exc", "sad", "ang")


def _iemocap_plan(seed: int, n: int, faults: bool) -> _Plan:
    rng = _rng(seed, "iemocap", 0)
    neutral = STYLES["neutral"]
    clips: list[_Clip] = []
    turns: dict[tuple[int, str], list[tuple[str, int]]] = {}  # (session, dialog) -> [(gender, clip)]
    for s in range(1, 6):
        sess = f"Ses{s:02d}"
        dialogs = [d.format(s=sess) for d in IEMOCAP_DIALOGS]
        for g_i, gender in enumerate("FM"):
            spk = 2 * (s - 1) + g_i
            voice = _make_voice(_rng(seed, "iemocap", 1, spk), gender)
            # A few turns without a majority (xxx) or outside the categories (oth): the
            # pipeline's exclusion counts then have something to count.
            n_excl = max(1, round(0.08 * n)) if n >= 4 else 0
            cats = list(IEMOCAP_STYLE)
            # Each speaker continues the category cycle where the previous one stopped.
            labels = [cats[(spk * (n - n_excl) + i) % len(cats)] for i in range(n - n_excl)]
            labels += [("xxx", "oth")[(spk + i) % 2] for i in range(n_excl)]
            rng.shuffle(labels)
            for i, lab in enumerate(labels):
                if lab in IEMOCAP_STYLE:
                    style = STYLES[IEMOCAP_STYLE[lab]]
                elif lab == "oth":  # something outside the category set
                    style = STYLES[str(rng.choice(["fear", "surprise", "disgust", "calm"]))]
                else:  # evaluators disagreed: a blend of two categories
                    a, b = rng.choice(list(IEMOCAP_STYLE.values()), 2, replace=False)
                    style = STYLES[str(a)].toward(STYLES[str(b)], 0.5)
                dialog = dialogs[i % len(dialogs)]
                turns.setdefault((s, dialog), []).append((gender, len(clips)))
                clips.append(_Clip(rel="", label=lab, speaker=f"{sess}{gender}",
                                   style=neutral.toward(style, IEMOCAP_INTENSITY),
                                   voice=voice, vowels=None, room=s))
    # Utterance ids number each speaker's turns within a dialog: _F000, _F001, _M000 ...
    final: list[_Clip] = list(clips)
    dialog_turns: dict[tuple[int, str], list[int]] = {}
    for (s, dialog), items in turns.items():
        counters = {"F": 0, "M": 0}
        by_gender = [[c for g, c in items if g == gender] for gender in "FM"]
        # A conversation: the two speakers take turns.
        order = [lst[j] for j in range(max(map(len, by_gender))) for lst in by_gender if j < len(lst)]
        for c in order:
            gender = clips[c].speaker[-1]
            utt = f"{dialog}_{gender}{counters[gender]:03d}"
            counters[gender] += 1
            final[c] = dataclasses.replace(clips[c], rel=f"Session{s}/sentences/wav/{dialog}/{utt}.wav")
        dialog_turns[(s, dialog)] = order

    silent: set[int] = set()
    short: set[int] = set()
    if faults:
        eligible = [i for i, c in enumerate(final)
                    if c.label in IEMOCAP_FAULT_LABELS and c.room <= 3] or list(range(len(final)))
        if len(eligible) >= 2:
            a, b = rng.choice(eligible, 2, replace=False)
            silent, short = {int(a)}, {int(b)}

    def write_labels(root: Path, lengths: list[int]) -> None:
        _write_emo_evaluation(root, final, dialog_turns, lengths, seed)

    labels = tuple(f"Session{s}/dialog/EmoEvaluation/{dialog}.txt" for s, dialog in sorted(dialog_turns))
    return _Plan(final, silent, short, [], write_labels, labels)


def _write_emo_evaluation(root: Path, clips: list[_Clip], dialog_turns: dict[tuple[int, str], list[int]],
                          lengths: list[int], seed: int) -> None:
    """EmoEvaluation/<dialog>.txt in the real format, turn times from the written files."""
    rng = _rng(seed, "iemocap", 4)
    sr = CORPORA["iemocap"].sample_rate
    for (s, dialog), order in sorted(dialog_turns.items()):
        start = float(rng.uniform(1.0, 6.0))
        entries = []
        for c in order:
            clip = clips[c]
            end = start + lengths[c] / sr
            utt = Path(clip.rel).stem
            entries.append(_emo_entry(rng, start, end, utt, clip.label))
            start = end + float(rng.uniform(0.2, 2.5))
        path = root / f"Session{s}/dialog/EmoEvaluation/{dialog}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(IEMOCAP_HEADER + "\n\n" + "\n".join(entries))


def _emo_entry(rng: np.random.Generator, start: float, end: float, utt: str, label: str) -> str:
    """One turn: the consensus line, three categorical and two dimensional evaluators."""
    cats = list(IEMOCAP_EVALUATOR.values())
    if label == "xxx":  # no majority: three different answers
        votes = [str(v) for v in rng.choice(cats[:-1], 3, replace=False)]
    else:
        main = IEMOCAP_EVALUATOR[label]
        votes = [main, main, main if rng.random() < 0.6 else str(rng.choice(cats[:-1]))]
    notes = {"Other": "(" + str(rng.choice(["amused", "confused", "sarcastic", "bored"])) + ")"}
    ratings = np.clip(np.round(np.array(IEMOCAP_VAD[label]) + rng.normal(0, 0.6, (2, 3))), 1, 5).astype(int)
    v, a, d = ratings.mean(axis=0)
    lines = [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]"]
    lines += [f"C-E{j + 1}:\t{vote};\t{notes.get(vote, '()')}" for j, vote in enumerate(votes)]
    lines += [f"A-E{j + 1}:\tval {r[0]}; act {r[1]}; dom  {r[2]};\t()" for j, r in enumerate(ratings)]
    return "\n".join(lines) + "\n"


# RAVDESS ------------------------------------------------------------------
RAVDESS_STYLE = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                 "05": "angry", "06": "fear", "07": "disgust", "08": "surprise"}
RAVDESS_INTENSITY = {"01": 0.85, "02": 1.25}  # normal, strong
# "Kids are talking by the door", "Dogs are sitting by the door": 7 syllables each.
RAVDESS_STATEMENTS = {"01": ("Kids are talking by the door", 7), "02": ("Dogs are sitting by the door", 7)}


def _ravdess_plan(seed: int, n: int, faults: bool) -> _Plan:
    rng = _rng(seed, "ravdess", 0)
    pools = []
    for emo in RAVDESS_STYLE:
        levels = ("01",) if emo == "01" else ("01", "02")  # neutral has no strong intensity
        pools.append([(emo, lv, st, rep) for lv in levels for st in ("01", "02") for rep in ("01", "02")])
    _check_capacity("ravdess", n, sum(map(len, pools)))
    clips = []
    for actor in range(1, 25):
        voice = _make_voice(_rng(seed, "ravdess", 1, actor), "M" if actor % 2 else "F")  # odd = male
        shuffled = [[p[i] for i in rng.permutation(len(p))] for p in pools]
        for emo, lv, st, rep in _balanced(shuffled, n, (actor - 1) * n):
            style = STYLES["neutral"].toward(STYLES[RAVDESS_STYLE[emo]], RAVDESS_INTENSITY[lv])
            text, syll = RAVDESS_STATEMENTS[st]
            clips.append(_Clip(rel=f"Actor_{actor:02d}/03-01-{emo}-{lv}-{st}-{rep}-{actor:02d}.wav",
                               label=emo, speaker=f"{actor:02d}", style=style, voice=voice,
                               vowels=_vowels_for(text, syll)))
    return _Plan(clips, set(), set(), [])


# CREMA-D ------------------------------------------------------------------
CREMA_D_STYLE = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMA_D_INTENSITY = {"LO": 0.6, "MD": 0.9, "HI": 1.2, "XX": 0.9}
CREMA_D_SENTENCES = {  # code: (sentence, syllables)
    "IEO": ("It's eleven o'clock", 5), "TIE": ("That is exactly what happened", 8),
    "IOM": ("I'm on my way to the meeting", 8), "IWW": ("I wonder what this is about", 8),
    "TAI": ("The airplane is almost full", 7), "MTI": ("Maybe tomorrow it will be cold", 9),
    "IWL": ("I would like a new alarm clock", 8), "ITH": ("I think I have a doctor's appointment", 10),
    "DFA": ("Don't forget a jacket", 6), "ITS": ("I think I've seen this before", 7),
    "TSI": ("The surface is slick", 5), "WSI": ("We'll stop in a couple of minutes", 9),
}
CREMA_D_ACTORS = range(1001, 1092)
CREMA_D_MALE = 48  # 48 male, 43 female actors


def _crema_d_plan(seed: int, n: int, faults: bool) -> _Plan:
    rng = _rng(seed, "crema_d", 0)
    pools = []
    for emo in CREMA_D_STYLE:
        # Only "It's eleven o'clock" was recorded at three intensities; neutral and
        # the other sentences are unspecified (XX).
        combos = [(s, "XX") for s in CREMA_D_SENTENCES if s != "IEO"]
        combos += [("IEO", lv) for lv in (("XX",) if emo == "NEU" else ("LO", "MD", "HI"))]
        pools.append([(emo, s, lv) for s, lv in combos])
    _check_capacity("crema_d", n, sum(map(len, pools)))
    is_male = np.zeros(len(CREMA_D_ACTORS), bool)
    is_male[rng.permutation(len(CREMA_D_ACTORS))[:CREMA_D_MALE]] = True
    ages = rng.integers(20, 75, len(CREMA_D_ACTORS))
    clips = []
    for i, actor in enumerate(CREMA_D_ACTORS):
        voice = _make_voice(_rng(seed, "crema_d", 1, actor), "M" if is_male[i] else "F", float(ages[i]))
        shuffled = [[p[j] for j in rng.permutation(len(p))] for p in pools]
        for emo, sent, lv in _balanced(shuffled, n, i * n):
            text, syll = CREMA_D_SENTENCES[sent]
            clips.append(_Clip(rel=f"AudioWAV/{actor}_{sent}_{emo}_{lv}.wav", label=emo, speaker=str(actor),
                               style=STYLES["neutral"].toward(STYLES[CREMA_D_STYLE[emo]], CREMA_D_INTENSITY[lv]),
                               voice=voice, vowels=_vowels_for(text, syll)))
    duplicates = []
    if faults:  # the first later clip with another label becomes a byte copy of clip 0
        other = next((j for j, c in enumerate(clips) if c.label != clips[0].label), None)
        duplicates = [(0, other)] if other is not None else []

    def write_demographics(root: Path, lengths: list[int]) -> None:
        # VideoDemographics.csv as in the real release (gender is not in file names).
        races = ["Caucasian", "African American", "Asian", "Unknown"]
        demo_rng = _rng(seed, "crema_d", 4)
        rows = ["ActorID,Age,Sex,Race,Ethnicity"]
        for i, actor in enumerate(CREMA_D_ACTORS):
            race = races[int(demo_rng.choice(4, p=[0.6, 0.25, 0.1, 0.05]))]
            eth = "Hispanic" if demo_rng.random() < 0.1 else "Not Hispanic"
            rows.append(f"{actor},{ages[i]},{'Male' if is_male[i] else 'Female'},{race},{eth}")
        (root / "VideoDemographics.csv").write_text("\n".join(rows) + "\n")

    return _Plan(clips, set(), set(), duplicates, write_demographics, ("VideoDemographics.csv",))


# TESS ---------------------------------------------------------------------
TESS_STYLE = {"angry": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy",
              "neutral": "neutral", "ps": "surprise", "sad": "sad"}
# Folder names as spelled in the distributed copies (inconsistent case and wording).
TESS_FOLDERS = {
    "OAF": {"angry": "OAF_angry", "disgust": "OAF_disgust", "fear": "OAF_Fear", "happy": "OAF_happy",
            "neutral": "OAF_neutral", "ps": "OAF_Pleasant_surprise", "sad": "OAF_Sad"},
    "YAF": {"angry": "YAF_angry", "disgust": "YAF_disgust", "fear": "YAF_fear", "happy": "YAF_happy",
            "neutral": "YAF_neutral", "ps": "YAF_pleasant_surprised", "sad": "YAF_sad"},
}
TESS_AGES = {"OAF": 64.0, "YAF": 26.0}
# Short monosyllables like TESS's targets (words of the NU-6 auditory test),
# spoken in the carrier phrase "Say the word ___".
TESS_WORDS = tuple("""
back bar base bath bean beg bite boat bone book bought burn cab calm came cause chain chair chalk chat
check cheek chief choice cool dab date dead death deep dime dip ditch dodge dog doll door fail fall far
fat fit five food gap gas gaze germ get gin goal good goose gun half hall hash hate have haze hire hit
hole home hurl jail jar join judge jug juice keen keep keg kick kill king kite knock late laud lean
learn lease lid life limb live loaf long lore lose lot love luck make match merge mess met mill mob
mode mood moon mop mouse nag name near neat nice note numb pad page pain pass pearl peg perch phone
pick pike pole pool puff rag raid rain raise rat reach read red ring ripe road room rose rot rough
rush said sail search seize sell shack shall shawl sheep shirt should shout size soap soup sour south
sub such sure take talk tape team tell thin third thought thumb time tip tire ton tool tough turn
vine voice void vote wag walk wash week wheat when which whip white wife wire witch yearn yes young youth
""".split())


def _tess_plan(seed: int, n: int, faults: bool) -> _Plan:
    emotions = list(TESS_STYLE)
    _check_capacity("tess", n, len(TESS_WORDS) * len(emotions))
    carrier = _vowels_for("Say the word", 3)
    clips = []
    for s_i, spk in enumerate(("OAF", "YAF")):
        voice = _make_voice(_rng(seed, "tess", 1, s_i), "F", TESS_AGES[spk])
        for i in range(n):  # word by word, every emotion: 84 clips = 12 words x 7 emotions
            word, emo = TESS_WORDS[i // len(emotions)], emotions[i % len(emotions)]
            clips.append(_Clip(rel=f"{TESS_FOLDERS[spk][emo]}/{spk}_{word}_{emo}.wav", label=emo, speaker=spk,
                               style=STYLES[TESS_STYLE[emo]], voice=voice,
                               vowels=carrier + _vowels_for(word, 1), pad=(0.2, 0.5)))
    return _Plan(clips, set(), set(), [])


CORPORA: dict[str, _Corpus] = {
    "iemocap": _Corpus(16000, Channel(level_db=-2.0, noise_db=-54.0, noise_slope=1.0, band=(90.0, 6500.0),
                                      rt60=0.4, drr_db=4.0, hum_db=-60.0),
                       _iemocap_plan, tuple(f"Session{s}" for s in range(1, 6))),
    "ravdess": _Corpus(48000, Channel(level_db=0.0, noise_db=-82.0, noise_slope=0.0, band=None),
                       _ravdess_plan, tuple(f"Actor_{a:02d}" for a in range(1, 25))),
    "crema_d": _Corpus(16000, Channel(level_db=-3.0, noise_db=-46.0, noise_slope=0.3, band=(250.0, 3800.0),
                                      band_order=4, rt60=0.12, drr_db=10.0),
                       _crema_d_plan, ("AudioWAV", "VideoDemographics.csv")),
    "tess": _Corpus(24414, Channel(level_db=3.0, noise_db=-80.0, noise_slope=0.0, band=None),
                    _tess_plan, tuple(sorted({f for d in TESS_FOLDERS.values() for f in d.values()}))),
}


# --------------------------------------------------------------------------- driver
def _settings(name: str, seed: int, clips_per_speaker: int, inject_faults: bool) -> dict:
    return {"name": name, "seed": seed, "clips_per_speaker": clips_per_speaker,
            "inject_faults": inject_faults, "version": GENERATOR_VERSION}


def _read_marker(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _files_under(root: Path, entries: Optional[Sequence[str]] = None) -> list[str]:
    """Files and links under `root` (or only under its `entries`), relative, markers left out."""
    out: list[str] = []
    for top in ([root / e for e in entries] if entries is not None else [root]):
        if top.is_symlink() or top.is_file():
            out.append(top.relative_to(root).as_posix())
            continue
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow links
            here = Path(dirpath)
            links = [d for d in dirnames if (here / d).is_symlink()]
            out += [(here / f).relative_to(root).as_posix() for f in [*filenames, *links]]
    return sorted(set(out) - {MARKER, PARTIAL_MARKER})


def _written_by_us(root: Path) -> set[str]:
    """The files the markers in `root` say the generator wrote (a marker from before the
    file list existed: the files its settings produce)."""
    ours: set[str] = set()
    for marker in (MARKER, PARTIAL_MARKER):
        doc = _read_marker(root / marker) or {}
        if isinstance(doc.get("paths"), list):
            ours.update(map(str, doc["paths"]))
        elif doc.get("version") == GENERATOR_VERSION and doc.get("name") in CORPORA:
            try:
                ours.update(CORPORA[doc["name"]].plan(doc["seed"], doc["clips_per_speaker"],
                                                      doc["inject_faults"]).paths())
            except (KeyError, TypeError, ValueError):
                pass
    return ours


def foreign_files(root: str | Path) -> list[str]:
    """Files under a demo root that the demo generator did not write (a user's additions)."""
    root = Path(root)
    ours = _written_by_us(root)
    return [f for f in _files_under(root) if f not in ours]


def _prepare_root(name: str, root: Path, owned: tuple[str, ...], settings: dict, planned: list[str]) -> None:
    """Mark the root as in progress and delete the files a previous demo wrote.

    Refuses, deleting nothing, when the folders it writes hold a file it did not
    write, or when there is no demo marker at all (it may be a real corpus).
    """
    present = [e for e in owned if (root / e).exists() or (root / e).is_symlink()]
    ours = (root / MARKER).exists() or (root / PARTIAL_MARKER).exists()
    if present and not ours:
        raise FileExistsError(
            f"{root} holds {present[:3]}{' ...' if len(present) > 3 else ''} but no demo marker "
            f"({MARKER} / {PARTIAL_MARKER}): it may be a real {name} corpus, so the demo will not "
            f"overwrite it. Set corpora.{name}.source to 'local', or move it away and rerun.")
    # An interrupted run of these settings wrote (part of) `planned`: those are ours too.
    written = _written_by_us(root) | set(planned)
    existing = _files_under(root, present)
    foreign = [f for f in existing if f not in written]
    if foreign:
        raise FileExistsError(
            f"{root} holds {len(foreign)} file(s) the demo generator did not write: "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}. Regenerating the demo would "
            f"delete them, so nothing was changed: move them out of {root} and rerun (or set "
            f"corpora.{name}.source: local to use the folder as it is).")
    # Partial marker first: a run interrupted from here on is recognisably ours, file by file.
    write_json_atomic(root / PARTIAL_MARKER, {**settings, "paths": sorted(written)})
    (root / MARKER).unlink(missing_ok=True)
    for rel in existing:
        (root / rel).unlink()
    for e in present:  # the folders emptied above, deepest first
        top = root / e
        if top.is_dir() and not top.is_symlink():
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                if not os.listdir(dirpath):
                    os.rmdir(dirpath)


def generate_corpus(name: str, root: str | Path, clips_per_speaker: int, seed: int,
                    inject_faults: bool = True) -> int:
    """Write demo corpus `name` under `root` in its real layout; return the number of wav files.

    Idempotent: a root whose `.demo-complete.json` records the same settings
    is left untouched. Otherwise the previous demo content is removed and the
    corpus regenerated; the completion marker is written last.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown demo corpus {name!r}; known: {list(DEMO_CORPORA)}")
    if clips_per_speaker < 1:
        raise ValueError(f"demo {name}: clips_per_speaker must be >= 1, got {clips_per_speaker}")
    root = Path(root)
    spec = CORPORA[name]
    settings = _settings(name, seed, clips_per_speaker, inject_faults)

    marker = _read_marker(root / MARKER)
    if marker is not None and all(marker.get(k) == v for k, v in settings.items()):
        on_disk = sum(1 for _ in root.rglob("*.wav"))
        if on_disk == marker.get("files"):
            log.info("demo %s: %s already complete (%d files, seed %d), skipping", name, root, on_disk, seed)
            return on_disk
        log.warning("demo %s: %s has %d wav files but its marker records %d; regenerating",
                    name, root, on_disk, marker.get("files"))

    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    plan = spec.plan(seed, clips_per_speaker, inject_faults)
    _prepare_root(name, root, spec.owned, settings, plan.paths())
    sr = spec.sample_rate
    # Voices above 24 kHz are rendered at half rate (content to 12 kHz, where speech
    # energy has died away) and upsampled: half the work for RAVDESS's 48 kHz.
    voice_sr = sr if sr <= 24414 else sr // 2
    rooms: dict[int, np.ndarray] = {}
    lengths: list[int] = []
    audio_s = 0.0
    for i, clip in enumerate(tqdm(plan.clips, desc=f"demo {name}", unit="clip", leave=False, disable=None)):
        rng = _rng(seed, name, 2, i)
        y = _render_speech(rng, clip.style, clip.voice, voice_sr, clip.vowels, clip.pad)
        if voice_sr != sr:
            y = soxr.resample(y, voice_sr, sr, quality="HQ")
        ir = None
        if spec.channel.rt60 > 0:
            if clip.room not in rooms:  # one room per IEMOCAP session, a little different each
                room_rng = _rng(seed, name, 3, clip.room)
                rooms[clip.room] = _room_ir(room_rng, sr, spec.channel.rt60 * room_rng.uniform(0.8, 1.2))
            ir = rooms[clip.room]
        y = _apply_channel(y, sr, spec.channel, rng, ir)
        if i in plan.silent:
            y = np.zeros_like(y)
        if i in plan.short:
            mid = len(y) // 2
            y = y[mid - int(SHORT_FAULT_S * sr) // 2: mid + int(SHORT_FAULT_S * sr) // 2]
        path = root / clip.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, y, sr, subtype="PCM_16")
        lengths.append(len(y))
        audio_s += len(y) / sr
    for original, copy in plan.duplicates:
        shutil.copyfile(root / plan.clips[original].rel, root / plan.clips[copy].rel)
    plan.extra(root, lengths)

    faults = {"silent": sorted(plan.clips[i].rel for i in plan.silent),
              "short": sorted(plan.clips[i].rel for i in plan.short),
              "duplicates": [[plan.clips[a].rel, plan.clips[b].rel] for a, b in plan.duplicates]}
    n_files = len(plan.clips)
    write_json_atomic(root / MARKER, {**settings, "files": n_files, "sample_rate": sr,
                                       "speakers": len({c.speaker for c in plan.clips}), "faults": faults,
                                       "paths": plan.paths()})
    (root / PARTIAL_MARKER).unlink(missing_ok=True)
    labels = sorted({c.label for c in plan.clips})
    log.info("demo %s: wrote %d clips (%d speakers, %d Hz, %.1f min audio, labels %s) to %s in %.1f s; "
             "faults: %d silent, %d short, %d duplicate pair(s)",
             name, n_files, len({c.speaker for c in plan.clips}), sr, audio_s / 60, " ".join(labels), root,
             time.perf_counter() - started, len(plan.silent), len(plan.short), len(plan.duplicates))
    return n_files
