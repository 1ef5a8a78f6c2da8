"""`ser predict`: emotion predictions for audio files from a trained checkpoint.

The model directory written by training (meta.json + model.safetensors, see
ser.models.checkpoint) carries everything inference needs: the label list, the input
kind and the feature store's meta. Audio is decoded exactly as the precompute
stages decoded it (ser.features.audio.load_audio: any sample rate, mono or multichannel,
any format libsndfile reads: wav, flac, ogg, mp3, aiff, ...) and turned into the model's input with the stored settings:

  both   ser.features.audio.condition with the stored front end (silence trimming,
         gain normalisation), applied to the whole file as the stores apply
         it to each clip; window times stay times in the original file;
  mels   ser.features.precompute.mel_input: the stored log-mel parameters, pad/crop
         policy, per-utterance and train-split normalisation, and each
         window's valid frame count (the CRNN pools over those). A store
         built with `mel_norm: speaker` has no statistics for an unknown
         speaker: each window is normalised with its own (with a warning),
         so predictions can differ from evaluation's;
  waves  the float waveform at the stored sample rate (16 kHz);
  egemaps / compare / ge2e  (arch classical or mlp) the utterance-level vector of
         the whole conditioned file (ser.features.precompute.functionals_for_inference), the
         store's function. No windows: functionals summarise a whole clip, as
         at training, so --window/--hop are refused. A file has no speaker
         statistics: a model trained with per-speaker standardisation falls
         back to the global train statistics (with a warning). The scores are
         softmax probabilities for logistic regression and a calibrated SVM
         (`calibrate: temperature`), else an SVM's raw decision values (no
         probabilities; the label is still their argmax).

Sliding windows: a recording longer than the window is scored in windows of
`window_s` every `hop_s` seconds (the last window is aligned to the end so the
tail is covered by a full window); the file's probabilities are the mean of its
windows'. A recording no longer than the window is one window: exactly the
input evaluation gives the same clip, so predictions match `ser.eval.evaluate`.
Defaults: the window a model was trained on (mels: frames x hop = 3 s;
encoder models: `encoder.max_seconds`), hop = half a window.

Late fusion (`ser predict --model A --model B ...`, FusedPredictor): every member scores each file
its own way (its windows, its functionals); the file's probabilities are the mean of the members'
file probabilities, in the first member's label order, as the summarize stage fuses their test
predictions (params.yaml `fusions`). A member whose scores are an uncalibrated SVM's decision values is
refused.

Files that cannot be decoded, or are empty, silent or shorter than the stored
`min_duration_s`, get an error result (with the skip reason the precompute
stages use) and the remaining files are still scored.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ser.features.audio import AudioError, check_audio, condition_span, load_audio
from ser.features.precompute import feature_params_from_meta, mel_input, functionals_for_inference
from ser.models.base import Fitted
from ser.models.learner import load_fitted
from ser.runtime import resolve_device

__all__ = ["AUDIO_SUFFIXES", "audio_suffixes", "Window", "FileResult", "Predictor", "FusedPredictor", "collect_audio",
           "window_starts",
           "resolve_device", "render", "summary", "FORMATS"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")  # what every libsndfile build decodes
# File suffixes of the libsndfile formats, by `soundfile.available_formats()` name. RAW
# (needs its layout given) and MAT4/MAT5 (any MATLAB file) are left out on purpose.
_FORMAT_SUFFIXES = {
    "WAV": (".wav",), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",), "FLAC": (".flac",),
    "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",), "AIFF": (".aiff", ".aif", ".aifc"),
    "AU": (".au", ".snd"), "CAF": (".caf",), "AVR": (".avr",), "HTK": (".htk",), "IRCAM": (".sf",),
    "MPC2K": (".mpc2k",), "NIST": (".nist", ".sph"), "PAF": (".paf",), "PVF": (".pvf",), "SD2": (".sd2",),
    "SDS": (".sds",), "SVX": (".8svx", ".iff"), "VOC": (".voc",), "WVE": (".wve",), "XI": (".xi",),
}
FORMATS = ("table", "json", "csv")


@dataclass(frozen=True)
class Window:
    """One scored window: [start_s, end_s) of the file and its class probabilities."""
    start_s: float
    end_s: float
    probabilities: tuple[float, ...]


@dataclass
class FileResult:
    """Predictions for one file, or why it has none (`error`, `reason`)."""
    path: str
    duration_s: Optional[float] = None
    windows: list[Window] = field(default_factory=list)
    error: Optional[str] = None
    reason: Optional[str] = None  # a ser.features.audio.SKIP_REASONS name (or "error")

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def probabilities(self) -> Optional[np.ndarray]:
        """Mean of the window probabilities (None for a failed file)."""
        if not self.windows:
            return None
        return np.mean([w.probabilities for w in self.windows], axis=0)


@lru_cache(maxsize=1)
def audio_suffixes() -> tuple[str, ...]:
    """Lower-case suffixes of every format this soundfile/libsndfile build decodes
    (mp3 needs libsndfile >= 1.1, opus >= 1.0.29)."""
    formats = sf.available_formats()
    found = {s for name, suffixes in _FORMAT_SUFFIXES.items() if name in formats for s in suffixes}
    return tuple(sorted(found | set(AUDIO_SUFFIXES)))


def collect_audio(inputs: Iterable[str | Path]) -> list[Path]:
    """Audio files named by `inputs`: files as given, folders searched recursively
    for every format the decoder reads (`audio_suffixes`, any letter case), each
    folder's files in sorted order. Other files in a folder are skipped with a
    warning that counts them by suffix (hidden files quietly).

    A path that does not exist is kept, so that it gets its own error result.
    """
    suffixes = audio_suffixes()
    files: list[Path] = []
    for item in map(Path, inputs):
        if not item.is_dir():
            files.append(item)
            continue
        found, skipped = [], Counter()
        for p in sorted(item.rglob("*")):
            if not p.is_file() or any(part.startswith(".") for part in p.relative_to(item).parts):
                continue
            if p.suffix.lower() in suffixes:
                found.append(p)
            else:
                skipped[p.suffix.lower() or "(no suffix)"] += 1
        if skipped:
            log.warning("%s: skipped %d file(s) that are not audio the decoder reads: %s", item,
                        sum(skipped.values()), ", ".join(f"{n} {s}" for s, n in sorted(skipped.items())))
        if not found:
            log.warning("%s: no audio files in this folder or below (formats: %s)", item, " ".join(suffixes))
        files.extend(found)
    return files


def window_starts(n: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows over n samples (a clip of <= window samples is one window)."""
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be >= 1 sample, got {window} and {hop}")
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:  # cover the tail with a full window ending at the last sample
        starts.append(n - window)
    return starts


class Predictor:
    """A loaded model (any family, ser.models.base.Fitted) plus the feature settings it was trained with."""

    def __init__(self, model_dir: str | Path, *, device: str = "auto", window_s: Optional[float] = None,
                 hop_s: Optional[float] = None, batch_size: int = 16) -> None:
        for name, value in (("--window", window_s), ("--hop", hop_s)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        # load_fitted rebuilds the model from meta.json alone; a QLoRA model gets its base
        # re-quantized to 4 bits and its adapters loaded, as saved.
        fitted = load_fitted(self.model_dir, self.device)
        self.meta: dict[str, Any] = fitted.meta
        self.feature_meta: dict[str, Any] = fitted.feature_meta
        self.input: str = fitted.input
        self._check_feature_meta()
        self.fitted: Fitted = fitted.for_audio()  # a probe on cached embeddings runs its encoder on audio
        self.labels: list[str] = fitted.labels
        self.fp = feature_params_from_meta(self.feature_meta)
        self.sample_rate = int(self.feature_meta["sample_rate"])
        caveat = self.fitted.file_caveat()
        if caveat:
            log.warning("%s", caveat)
        self._set_windows(window_s, hop_s)

    @property
    def model(self) -> Any:
        """The underlying model (a torch module, or a linear classifier's weights)."""
        return self.fitted.model

    def _set_windows(self, window_s: Optional[float], hop_s: Optional[float]) -> None:
        if not self.fitted.windowed:  # functionals summarise a whole file: one "window" per file
            if window_s is not None or hop_s is not None:
                raise ValueError(f"--window/--hop do not apply to a model on {self.input}: its openSMILE functionals "
                                 "summarise the whole file")
            self.window_s = self.hop_s = self.window = self.hop = None
            log.info("%s: %s model, labels %s, %s input, whole files", self.model_dir, self.fitted.describe(),
                     self.labels, self.input)
            return
        trained = self.trained_window_s()
        self.window_s = float(window_s) if window_s is not None else trained
        self.hop_s = float(hop_s) if hop_s is not None else self.window_s / 2
        if self.input == "mels" and self.window_s > trained + 1e-9:
            raise ValueError(f"--window {self.window_s:g} s: this mel model sees {self.fp.frames} frames "
                             f"({trained:g} s); a longer window would be cropped to it. Use --window <= {trained:g}")
        if self.window_s < self.fp.min_duration_s:
            raise ValueError(f"--window {self.window_s:g} s is shorter than the {self.fp.min_duration_s:g} s "
                             "minimum clip length the model was trained with")
        self.window = round(self.window_s * self.sample_rate)
        self.hop = max(1, round(self.hop_s * self.sample_rate))
        log.info("%s: %s model on %s, labels %s, %s input, window %.2f s, hop %.2f s", self.model_dir,
                 self.fitted.describe(), self.device, self.labels, self.input, self.window_s, self.hop_s)

    def _check_feature_meta(self) -> None:
        kind = self.feature_meta.get("kind")
        if kind != self.input:
            raise ValueError(f"{self.model_dir}/meta.json: feature kind {kind!r} does not match the model "
                             f"input {self.input!r}; retrain the model (`dvc repro`)")
        needed = ["sample_rate", "features"] + (["mean", "std"] if self.input == "mels" else [])
        missing = [k for k in needed if k not in self.feature_meta]
        if missing:
            raise ValueError(f"{self.model_dir}/meta.json: the feature meta lacks {missing}, so the training "
                             "features cannot be reproduced from audio; train on a store written by the "
                             "precompute stages (`dvc repro`)")

    def trained_window_s(self) -> float:
        """The clip length the model was trained on (mels: frames x hop; encoders: encoder.max_seconds)."""
        if self.input == "mels":
            return self.fp.frames * self.fp.hop_length / self.fp.sample_rate
        if self.input == "embeddings":  # whole clips (chunked beyond chunk_seconds)
            return float(self.meta["model_params"]["encoder"]["chunk_seconds"])
        return float(self.meta["model_params"]["encoder"]["max_seconds"])

    # ------------------------------------------------------------------ inference
    def model_inputs(self, segments: Sequence[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """A model batch for equal-length segments (what the feature stores hold for them: see
        ser.features.dataset.collate_batch) and each row's valid length (None: functionals)."""
        if self.input == "mels":
            mels, lengths = zip(*(mel_input(s, self.feature_meta) for s in segments))
            return np.stack(mels)[:, None], np.asarray(lengths, dtype=np.int64)
        if self.input in ("waves", "embeddings"):  # a probe runs its encoder on the wave (for_audio)
            x = np.stack(segments).astype(np.float32, copy=False)
            return x, np.full(len(segments), x.shape[1], dtype=np.int64)
        return np.stack([functionals_for_inference(s, self.feature_meta) for s in segments]), None

    def predict_wave(self, wave: np.ndarray, offset_s: float = 0.0) -> list[Window]:
        """Window scores for a mono float32 wave at `self.sample_rate`, already conditioned
        (ser.features.audio.condition); window times are shifted by `offset_s`. A model that is
        not `windowed` scores the whole wave as one window."""
        window = self.window if self.window is not None else len(wave)
        starts = window_starts(len(wave), window, self.hop or window)
        size = min(window, len(wave))
        scores = [self.fitted.scores(*self.model_inputs([wave[s:s + size] for s in starts[i:i + self.batch_size]]))
                  for i in range(0, len(starts), self.batch_size)]
        sr = self.sample_rate
        return [Window(round(offset_s + s / sr, 4), round(offset_s + (s + size) / sr, 4),
                       tuple(float(p) for p in row))
                for s, row in zip(starts, np.concatenate(scores))]

    def predict_file(self, path: str | Path) -> FileResult:
        result = FileResult(str(path))
        try:
            wave = load_audio(path, self.sample_rate)
        except AudioError as exc:
            if exc.reason == "unreadable" and Path(path).stat().st_size == 0:
                result.reason, result.error = "empty", f"{path}: empty file (0 bytes)"
                return result
            result.reason = exc.reason
            # AudioError's advice is about corpora (re-download, rebuild the manifest); a user's
            # own recording needs only what is wrong with it.
            result.error = (f"{path}: no such file" if exc.reason == "missing"
                            else str(exc).split("; re-download")[0])
            return result
        result.duration_s = round(len(wave) / self.sample_rate, 4)
        reason = check_audio(wave, self.sample_rate, self.fp.min_duration_s, self.fp.silence_dbfs)
        if reason is not None:
            result.reason = reason
            result.error = {
                "empty": f"{path}: no audio samples",
                "non_finite": f"{path}: the audio contains NaN or infinite samples",
                "too_short": f"{path}: {result.duration_s:.3f} s is shorter than the {self.fp.min_duration_s:g} s "
                             "minimum the model was trained with",
                "silent": f"{path}: silent (peak below {self.fp.silence_dbfs:g} dBFS)",
            }.get(reason, f"{path}: {reason}")
            return result
        wave, start = condition_span(wave, self.fp)  # the stores' front end; times stay file times
        result.windows = self.predict_wave(wave, start / self.sample_rate)
        return result

    def predict_files(self, paths: Sequence[str | Path]) -> list[FileResult]:
        results = []
        for path in tqdm(paths, desc="predict", unit="file", disable=len(paths) < 2, leave=False):
            result = self.predict_file(path)
            if not result.ok:
                log.warning("skipped %s (%s): %s", path, result.reason, result.error)
            results.append(result)
        return results


class FusedPredictor:
    """Late fusion of trained models on audio: the mean of the members' file probabilities (module docstring)."""

    def __init__(self, model_dirs: Sequence[str | Path], **kwargs: Any) -> None:
        if len(model_dirs) < 2:
            raise ValueError(f"a fusion needs two or more models, got {len(model_dirs)}")
        self.members = [Predictor(d, **kwargs) for d in model_dirs]
        first = self.members[0]
        for member in self.members:
            if member.meta.get("scores") == "decision":
                raise ValueError(f"{member.model_dir}: its scores are an SVM's decision values, not class "
                                 "probabilities; fuse models that give probabilities (logistic regression, MLP, "
                                 "CRNN, encoders, an SVM trained with `calibrate: temperature`)")
            if set(member.labels) != set(first.labels):
                raise ValueError(f"{member.model_dir} predicts {member.labels}, {first.model_dir} predicts "
                                 f"{first.labels}: fuse models of one label set")
        self.labels: list[str] = list(first.labels)
        self.model_dir = " + ".join(str(m.model_dir) for m in self.members)
        self.input = " + ".join(m.input for m in self.members)
        self.window_s: Optional[float] = None  # each member keeps its own windows
        self.hop_s: Optional[float] = None

    def predict_files(self, paths: Sequence[str | Path]) -> list[FileResult]:
        """One result per file: one window spanning the file with the fused probabilities, or the first
        member's error when a member cannot score the file."""
        per_member = [m.predict_files(paths) for m in self.members]
        out = []
        for i, path in enumerate(paths):
            results = [r[i] for r in per_member]
            failed = next((r for r in results if not r.ok), None)
            if failed is not None:
                out.append(failed)
                continue
            probs = np.mean([np.asarray(r.probabilities)[[m.labels.index(k) for k in self.labels]]
                             for r, m in zip(results, self.members)], axis=0)
            duration = results[0].duration_s or 0.0
            out.append(FileResult(str(path), duration, [Window(0.0, duration, tuple(float(p) for p in probs))]))
        return out


# ---------------------------------------------------------------------- output
def _label(labels: Sequence[str], probs: Optional[Sequence[float]]) -> Optional[str]:
    return None if probs is None else labels[int(np.argmax(probs))]


def _as_dict(result: FileResult, labels: Sequence[str]) -> dict[str, Any]:
    probs = result.probabilities
    return {
        "path": result.path, "duration_s": result.duration_s, "label": _label(labels, probs),
        "probabilities": None if probs is None else {k: round(float(p), 6) for k, p in zip(labels, probs)},
        "windows": [{"start_s": w.start_s, "end_s": w.end_s, "label": _label(labels, w.probabilities),
                     "probabilities": {k: round(p, 6) for k, p in zip(labels, w.probabilities)}}
                    for w in result.windows],
        "error": result.error, "reason": result.reason,
    }


def _render_json(results: Sequence[FileResult], predictor: Predictor) -> str:
    doc = {"model": str(predictor.model_dir), "labels": predictor.labels, "input": predictor.input,
           "window_s": predictor.window_s, "hop_s": predictor.hop_s,
           "files": [_as_dict(r, predictor.labels) for r in results]}
    return json.dumps(doc, indent=2) + "\n"


def _render_csv(results: Sequence[FileResult], labels: Sequence[str]) -> str:
    """One row per window and one `overall` row per file; a failed file is one row with `error` set."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "window", "start_s", "end_s", "label", *labels, "error", "reason"])
    for r in results:
        if not r.ok:
            writer.writerow([r.path, "", "", "", "", *[""] * len(labels), r.error, r.reason])
            continue
        for i, w in enumerate(r.windows):
            writer.writerow([r.path, i, w.start_s, w.end_s, _label(labels, w.probabilities),
                             *(f"{p:.6f}" for p in w.probabilities), "", ""])
        writer.writerow([r.path, "overall", 0.0, r.duration_s, _label(labels, r.probabilities),
                         *(f"{p:.6f}" for p in r.probabilities), "", ""])
    return buf.getvalue()


def _render_table(results: Sequence[FileResult], labels: Sequence[str]) -> str:
    """Aligned text: one row per file; multi-window files list their windows, then `overall`."""
    rows = [["file", "window", "emotion", *labels]]
    for r in results:
        if not r.ok:
            rows.append([r.path, "-", f"ERROR ({r.reason})", r.error or ""])
            continue
        if len(r.windows) > 1:
            for w in r.windows:
                rows.append([r.path, f"{w.start_s:.2f}-{w.end_s:.2f}s", _label(labels, w.probabilities),
                             *(f"{p:.3f}" for p in w.probabilities)])
        window = "overall" if len(r.windows) > 1 else f"0.00-{r.duration_s:.2f}s"
        rows.append([r.path, window, _label(labels, r.probabilities), *(f"{p:.3f}" for p in r.probabilities)])
    # An error row's message (its 4th cell) overflows: it is left out of the column widths.
    head = len(rows[0])
    widths = [max(len(row[c]) for row in rows if len(row) == head or c < 3) for c in range(head)]
    lines = ["  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def render(results: Sequence[FileResult], predictor: Predictor, fmt: str = "table") -> str:
    """Results as `fmt` (table, json or csv)."""
    if fmt == "json":
        return _render_json(results, predictor)
    if fmt == "csv":
        return _render_csv(results, predictor.labels)
    if fmt == "table":
        return _render_table(results, predictor.labels)
    raise ValueError(f"unknown format {fmt!r}; known: {list(FORMATS)}")


def summary(results: Sequence[FileResult]) -> str:
    """One line for the log: how many files were predicted, which failed and why."""
    failed = [r for r in results if not r.ok]
    windows = sum(len(r.windows) for r in results)
    return (f"{len(results) - len(failed)} of {len(results)} file(s) predicted ({windows} window(s))"
            + (f"; {len(failed)} failed: " + ", ".join(f"{r.path} ({r.reason})" for r in failed[:5])
               + (" ..." if len(failed) > 5 else "") if failed else ""))

