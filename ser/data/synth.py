"""The demo corpora's voice synthesiser: source-filter speech with emotional cues and a channel.

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

A corpus's demo is a `DemoSpec` (sample rate, `Channel`, a plan of `Clip`s and
the root entries it owns), defined in that corpus's file (ser.data.corpora.<name>);
ser.data.demo renders it. Every random draw comes from `rng_for(seed, corpus
name, purpose, index)`, so reruns are byte-identical and corpora do not depend
on each other.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

__all__ = ["Style", "STYLES", "Voice", "make_voice", "Channel", "Clip", "Plan", "DemoSpec", "rng_for",
           "vowels_for", "balanced", "check_capacity", "render_speech", "room_ir", "apply_channel",
           "SHORT_FAULT_S"]

MIN_DURATION_S, MAX_DURATION_S = 1.05, 2.95  # clips are 1-3 s
SHORT_FAULT_S = 0.1  # a plan's `short` clips are cut to this


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


def make_voice(rng: np.random.Generator, gender: str, age: float = 35.0) -> Voice:
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
class Clip:
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
class DemoSpec:
    sample_rate: int
    channel: Channel
    plan: Callable[[int, int, bool], "Plan"]  # (seed, clips_per_speaker, faults) -> plan
    owned: tuple[str, ...]                     # root entries this generator writes (and may wipe)


@dataclass
class Plan:
    clips: list[Clip]
    silent: set[int]                      # indices written as digital silence
    short: set[int]                       # indices cut to SHORT_FAULT_S
    duplicates: list[tuple[int, int]]     # (original, copy) index pairs
    extra: Callable[[Path, list[int]], None] = lambda root, lengths: None  # label files etc.
    extra_files: tuple[str, ...] = ()     # what `extra` writes, relative to the root

    def paths(self) -> list[str]:
        """Every file this plan writes, relative to the corpus root."""
        return sorted({c.rel for c in self.clips} | set(self.extra_files))


def rng_for(seed: int, name: str, *keys: int) -> np.random.Generator:
    # crc32, not hash(): Python's str hash is salted per process.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), *keys])


def vowels_for(text: str, n: int) -> tuple[int, ...]:
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


def render_speech(rng: np.random.Generator, style: Style, voice: Voice, sr: int,
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


def room_ir(rng: np.random.Generator, sr: int, rt60: float) -> np.ndarray:
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


def apply_channel(y: np.ndarray, sr: int, ch: Channel, rng: np.random.Generator,
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
def balanced(pools: Sequence[list], n: int, offset: int) -> list:
    """Take n items round-robin over pools, starting at pool `offset`, skipping empty ones.

    Rotating the offset per speaker balances the label counts over the corpus.
    """
    order = [pools[(offset + i) % len(pools)] for i in range(len(pools))]
    out: list = []
    for r in range(max(len(p) for p in pools)):
        out.extend(p[r] for p in order if r < len(p))
    return out[:n]


def check_capacity(name: str, n: int, most: int) -> None:
    if n > most:
        raise ValueError(f"demo {name}: clips_per_speaker={n}, but the real {name} naming allows at most "
                         f"{most} distinct files per speaker; lower demo.clips_per_speaker.{name} in params.yaml")


