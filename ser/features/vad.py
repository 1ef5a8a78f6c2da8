"""Voice activity detection for the front end: silero-vad, whose model ships in its wheel (no download).

`vad_span` returns what the front end keeps of a clip under `features.vad`:
  trim    from the first detected speech to the last (VAD_PAD_S kept on each side): leading and
          trailing non-speech goes, whatever its level (the energy trim only removes quiet edges);
  pauses  the speech segments alone, joined: pauses of at least MIN_PAUSE_S inside the clip go
          too (each segment keeps VAD_PAD_S on each side, so joins are soft).
A clip in which the VAD finds no speech, or less than `min_duration_s` of it, is kept as it was
(never dropped here: check_audio decides what is skipped). silero-vad reads 8 or 16 kHz audio.

The model runs single-threaded on the CPU and is deterministic; it is loaded once per process.
Importing silero_vad sets torch's thread count to 1 as a side effect: `_silero` restores it, so
the trainer's recorded thread count stays true.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

from ser.config import VAD_MODES, VAD_RATES

__all__ = ["speech_segments", "vad_span"]

VAD_PAD_S = 0.05  # kept around each speech segment (as the energy trim's margin)
MIN_PAUSE_S = 0.1  # shorter gaps between speech do not split a segment
MIN_SPEECH_S = 0.1  # shorter detections are not speech


@functools.lru_cache(maxsize=1)
def _silero() -> tuple[Any, Callable[..., list[dict[str, int]]]]:
    """(the model, silero's get_speech_timestamps), imported and loaded once, torch's thread count kept."""
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad
        return load_silero_vad(), get_speech_timestamps
    finally:
        torch.set_num_threads(threads)


def speech_segments(wave: np.ndarray, sample_rate: int, threshold: float) -> list[tuple[int, int]]:
    """[start, end) sample spans of speech in a mono float32 wave (silero-vad, padded by VAD_PAD_S)."""
    import torch

    if sample_rate not in VAD_RATES:
        raise ValueError(f"features.vad: silero-vad reads {VAD_RATES} Hz audio, got {sample_rate} Hz")
    model, get_speech_timestamps = _silero()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            found = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), model,
                                          threshold=threshold, sampling_rate=sample_rate,
                                          min_speech_duration_ms=round(1000 * MIN_SPEECH_S),
                                          min_silence_duration_ms=round(1000 * MIN_PAUSE_S),
                                          speech_pad_ms=round(1000 * VAD_PAD_S))
    finally:
        torch.set_num_threads(threads)
    return [(int(t["start"]), int(t["end"])) for t in found]


def vad_span(wave: np.ndarray, sample_rate: int, mode: str, threshold: float,
             min_duration_s: float) -> tuple[np.ndarray, int]:
    """(what `mode` keeps of `wave`, the offset of its first sample in `wave`); see the module docstring."""
    if mode == "none" or not wave.size:
        return wave, 0
    if mode not in VAD_MODES:
        raise ValueError(f"features.vad must be one of {list(VAD_MODES)}, got {mode!r}")
    segments = speech_segments(wave, sample_rate, threshold)
    need = int(math.ceil(min_duration_s * sample_rate))
    if not segments or segments[-1][1] - segments[0][0] < need:
        return wave, 0
    if mode == "trim" or sum(end - start for start, end in segments) < need:
        start, end = segments[0][0], segments[-1][1]
        return wave[start:end], start
    return np.concatenate([wave[start:end] for start, end in segments]), segments[0][0]
