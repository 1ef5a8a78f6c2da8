"""Typed, strictly loaded parameters.

`params.yaml` is parsed into frozen dataclasses. Unknown keys, missing keys and
out-of-range values fail at load time with the dotted key path in the message,
before any long work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ser.errors import SerError, UnknownName

__all__ = [
    "ParamsError", "Params", "load_params", "parse_params",
    "CorpusParams", "DemoParams", "StudyParams", "SplitParams", "FeatureParams", "StoreFrontEnd", "STORE_KINDS",
    "OptimParams", "CrnnParams", "LoraParams", "EncoderParams", "REGIMES", "encoder_store_key", "SpecAugmentParams", "ModelParams",
    "ClassicalParams", "TrainParams", "ARCHS",
    "EvalParams", "FusionParams",
]


class ParamsError(ValueError, SerError):
    """A parameter file is malformed; the message names the key and the problem."""


class UnknownModel(UnknownName):
    """A model name that params.yaml `models` does not define (a stage or `ser` argument)."""


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class CorpusParams:
    """Where one corpus comes from and where it lives on disk.

    source: `demo` (synthesised offline), `download` (fetched from `url`),
    or `local` (an existing folder or archive at `path` / `archive`).
    """
    source: Literal["demo", "download", "local"]
    path: str
    adapter: Optional[str] = None  # defaults to the corpus name; "csv" for a generic corpus
    url: Optional[str] = None
    archive: Optional[str] = None  # local archive to extract into `path` (source: local)
    md5: Optional[str] = None  # published checksum, where one exists
    sha256: Optional[str] = None
    csv: Optional[str] = None  # generic CSV corpus: the metadata file
    label_map: Optional[dict[str, str]] = None  # overrides the adapter's table; "" drops a label
    expected_files: Optional[int] = None

    def __post_init__(self) -> None:
        if self.source == "download" and not self.url:
            raise ValueError("source 'download' needs a 'url'")


@dataclass(frozen=True)
class DemoParams:
    """The synthetic demo corpora (see ser.data.demo)."""
    seed: int
    clips_per_speaker: dict[str, int]

    def __post_init__(self) -> None:
        for name, n in self.clips_per_speaker.items():
            if n < 1:
                raise ValueError(f"clips_per_speaker.{name} must be >= 1, got {n}")


@dataclass(frozen=True)
class StudyParams:
    """One study: its canonical label set and the corpora it draws on.

    design "pooled": every run trains on the train splits of all its corpora
    (minus a cross-corpus target) and tests on each test split.
    design "matrix": the cross-corpus train x test matrix; run (fold) i trains
    on corpora[i - 1] alone (its train and val splits) and tests on every
    corpus's test split, so each column of the table is one fixed test set.
    """
    labels: tuple[str, ...]
    corpora: tuple[str, ...]
    design: Literal["pooled", "matrix"] = "pooled"
    # cross-corpus: the labeled training corpus, or a list of them (multi-source: every source's train
    # split is pooled; DANN's domain label is source, any of them, vs target). A single name is read as a list.
    source: Optional[tuple[str, ...]] = None
    target: Optional[str] = None  # cross-corpus: the adaptation / test corpus
    # A target corpus's labels are never trained on unless this says so: its
    # unlisted speakers are left out (not implicit train data), and a train or
    # val list for it is an error.
    train_on_target: bool = False

    def __post_init__(self) -> None:
        if self.design == "matrix" and (self.source or self.target or self.train_on_target):
            raise ValueError("design 'matrix' trains on every corpus in turn: it takes no source, target or "
                             "train_on_target (a DANN model belongs in a pooled cross-corpus study)")
        if self.design == "matrix" and len(self.corpora) < 2:
            raise ValueError(f"design 'matrix' needs >= 2 corpora, got {list(self.corpora)}")
        if self.source is not None and (not self.source or len(set(self.source)) != len(self.source)):
            raise ValueError(f"source must name one corpus or a list of distinct corpora, got {list(self.source)}")
        if self.target is not None and self.target in (self.source or ()):
            raise ValueError(f"source and target are the same corpus {self.target!r}")
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError(f"labels must be >= 2 distinct names, got {list(self.labels)}")
        for role, names in (("source", self.source or ()), ("target", (self.target,) if self.target else ())):
            for name in names:
                if name not in self.corpora:
                    raise ValueError(f"{role} {name!r} is not in corpora {list(self.corpora)}")
        if self.source and self.target:
            others = [c for c in self.corpora if c not in self.source and c != self.target]
            if others:
                raise ValueError(f"corpora {others} are neither the source nor the target: every non-target corpus "
                                 f"is trained on, so list them under source (source: {[*self.source, *others]})")


@dataclass(frozen=True)
class SplitParams:
    """Speaker-independent split protocol for one corpus within one study.

    A study runs as folds (top-level `folds`: which fold numbers to run); the
    fold protocols below give each fold its own split, the single-split ones
    give every fold the same split.

    protocol:
      sessions       IEMOCAP: train/val/test list session numbers (one split).
      loso           IEMOCAP leave-one-session-out: one fold per session; fold f
                     tests session f, the session before it (cyclically: fold 1
                     -> session 5) validates, the rest train. Folds 1..5 test
                     every session exactly once (SUPERB, EmoBox).
      speaker_folds  k-fold over the corpus's speakers (any corpus with a speaker
                     column): `folds` = k (default 6). The speakers are shuffled
                     with `seed` and dealt round-robin into k folds, per gender
                     when every speaker has one (24 RAVDESS actors, 6 folds ->
                     2 F + 2 M each); folds 1..k test every speaker exactly once.
                     Validation: the fold before the test fold (cyclically), or
                     with `val_speakers: N` N speakers drawn with `seed` from the
                     training folds (needed for folds: 2). The rest train.
      speakers       train/val/test (or adapt/test) list speaker ids; an omitted
                     train list means "every speaker not listed elsewhere".
      held_out_words TESS: words are split, both speakers in every split; with
                     `folds: k`, k folds of words (val: val_fraction of the
                     other words), else one split by val/test_fraction.
      all_test       every clip is test data.
    """
    protocol: Literal["sessions", "loso", "speaker_folds", "speakers", "held_out_words", "all_test"]
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    adapt: tuple[str, ...] = ()
    folds: Optional[int] = None  # speaker_folds (default 6: RAVDESS's 24 actors -> 2 F + 2 M per fold), held_out_words
    val_speakers: int = 0  # speaker_folds only: 0 = the previous fold validates
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    @property
    def k(self) -> Optional[int]:
        """Folds this protocol defines from params alone: None for a single split, or
        for loso (one fold per session, known from the data)."""
        if self.protocol == "speaker_folds":
            return self.folds or 6
        if self.protocol == "held_out_words":
            return self.folds
        return None

    def provides(self, implicit_train: bool = True) -> set[str]:
        """The splits this protocol fills, known from params alone (empty lists fill nothing).

        implicit_train: an omitted train list means "every other speaker"
        (False for a cross-corpus target corpus, whose labels are not trained on).
        """
        if self.protocol == "all_test":
            return {"test"}
        if self.protocol in ("loso", "speaker_folds"):
            return {"train", "val", "test"}
        if self.protocol == "held_out_words":
            return {"train", "test"} | ({"val"} if self.val_fraction > 0 else set())
        listed = {name for name in ("train", "val", "test", "adapt") if getattr(self, name)}
        return listed | ({"train"} if implicit_train else set())

    def __post_init__(self) -> None:
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.folds is not None and self.protocol not in ("speaker_folds", "held_out_words"):
            raise ValueError(f"folds applies to protocols speaker_folds and held_out_words, not {self.protocol!r} "
                             "(loso has one fold per session)")
        if self.val_speakers < 0:
            raise ValueError(f"val_speakers must be >= 0, got {self.val_speakers}")
        if self.protocol == "speaker_folds" and self.k == 2 and self.val_speakers == 0:
            # the fold before the test fold is then the only other fold: nothing would be left to train on
            raise ValueError("protocol 'speaker_folds' with folds: 2 has no fold left for training once one "
                             "validates; set val_speakers: N (drawn from the training fold) or folds >= 3")
        if not 0 <= self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1) and test_fraction in (0, 1)")


# The utterance-level vector stores (ser.features.functionals): one [n_features] row per clip, read by the
# classical and MLP heads: openSMILE eGeMAPS and ComParE functionals, GE2E speaker-encoder layer means.
Functional = Literal["egemaps", "compare", "ge2e"]
FUNCTIONALS: tuple[str, ...] = typing.get_args(Functional)
STORE_KINDS = ("mels", "waves", *FUNCTIONALS)  # the feature stores (ser.features.precompute)
VAD_RATES = (8000, 16000)  # the sample rates silero-vad reads (features.vad)
VadMode = Literal["none", "trim", "pauses"]
VAD_MODES: tuple[str, ...] = typing.get_args(VadMode)


@dataclass(frozen=True)
class StoreFrontEnd:
    """One feature family's own front end (`features.front_end.<kind>`): unset keys take the
    `features` values. trim: false turns trimming off for this store (trim_db: its threshold);
    vad: this store's voice-activity handling."""
    gain: Optional[Literal["none", "peak", "rms", "loudness"]] = None
    gain_dbfs: Optional[float] = None
    trim: Optional[bool] = None
    trim_db: Optional[float] = None
    vad: Optional[VadMode] = None

    def __post_init__(self) -> None:
        if self.trim is False and self.trim_db is not None:
            raise ValueError("trim: false with a trim_db: drop one of them")


@dataclass(frozen=True)
class FeatureParams:
    """Log-mel and waveform settings (analysis defaults follow the reference study).

    Front end (ser.features.audio.condition, applied to every store kind and at
    inference, after the skip checks on the decoded clip):
      trim_db        trim leading/trailing audio whose 25 ms frame power is more
                     than trim_db below the clip's loudest frame (as librosa's
                     `effects.trim(top_db)`; digital zeros always go), keeping
                     50 ms on each side; null: off. A clip is never trimmed
                     below min_duration_s: a shorter span is widened (within
                     the clip) to that minimum.
      vad            voice-activity detection (silero-vad, ser.features.vad) after the
                     energy trim: "trim" keeps first to last detected speech,
                     "pauses" also drops the pauses (>= 100 ms) inside the clip,
                     "none" is off. vad_threshold: silero's speech probability
                     threshold. Needs sample_rate 8000 or 16000.
      gain           per-utterance level normalisation to gain_dbfs:
                     "peak" (sample peak, dBFS), "rms" (RMS over the active
                     frames, within 40 dB of the loudest, dBFS), "loudness"
                     (ITU-R BS.1770-4 K-weighted, gated integrated loudness,
                     LUFS) or "none". The gain is then limited so no sample
                     exceeds 0 dBFS (a peaky clip can stay below its target).
    Log-mels:
      instance_norm  per-utterance, per-mel-bin normalisation over the clip's
                     valid frames ("mean": subtract the mean; "mean_std":
                     also divide by the std, floored at 1 dB; "none"), applied
                     before the train-split statistics, which stay.
      pad            how clips shorter than `frames` are filled: "silence"
                     (-100 dB, the index `length` is the valid frame count) or
                     "repeat" (the clip's frames repeated; every frame is real
                     speech, so `length` is `frames` and the model pools over all).
      mel_norm       the per-mel-bin mean/std the stored log-mels are z-scored
                     with, after instance_norm: "train" (the valid frames of
                     the train split, applied to every split) or "speaker"
                     (the valid frames of each (corpus, speaker)'s clips in the
                     store, whatever their split, applied to that speaker's
                     clips; no labels are read). "speaker" removes a speaker's
                     or corpus's channel and level (a per-bin offset and scale
                     in dB) as eGeMAPS `standardise: speaker` does. Speakers
                     never span splits except under held_out_words (TESS):
                     there a speaker's statistics include its unlabeled test
                     clips. Padded frames are normalised with the train
                     statistics, as under "train", so silence reads the same
                     for every speaker (and carries no speaker's level).
                     `ser predict` has no speaker: it uses the file's own
                     statistics (ser.features.precompute.mel_input).

    Defaults, from a proxy (per-clip log-mel statistics + logistic regression,
    4 classes, EmoDB <-> RAVDESS actors 01-12; a level gap of 18 dB between
    them): without level normalisation cross-corpus UAR falls to 0.41 / 0.31
    and collapses onto one class (61-92 % of predictions); any gain mode gives
    0.44-0.49 / 0.46-0.55, within noise of each other. "loudness" at -23 LUFS
    (EBU R128) was the steadiest and needs the limiter on < 1 % of clips
    (rms at -20 dBFS: 16 % of EmoDB). trim_db 60 (librosa's top_db) was neutral
    (+-3 points) and removes RAVDESS's leading digital silence; instance_norm
    "mean"/"mean_std" cost 1-20 points; "repeat" padding cost 6-9 points
    cross-corpus over "silence". Level normalisation costs ~5 points within
    RAVDESS, where absolute level is an arousal cue that does not transfer.
    """
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    fmin: float = 0.0
    fmax: Optional[float] = None
    frames: int = 300
    crop: Literal["center", "start"] = "center"
    min_duration_s: float = 0.25
    silence_dbfs: float = -60.0
    gain: Literal["none", "peak", "rms", "loudness"] = "loudness"
    gain_dbfs: float = -23.0
    trim_db: Optional[float] = 60.0
    vad: VadMode = "none"
    vad_threshold: float = 0.5
    instance_norm: Literal["none", "mean", "mean_std"] = "none"
    pad: Literal["silence", "repeat"] = "silence"
    mel_norm: Literal["train", "speaker"] = "train"
    # Utterance-level vector stores to build (precompute-functionals@<kind>, see FUNCTIONALS):
    # egemaps (eGeMAPSv02, 88), compare (ComParE_2016, 6373), ge2e (GE2E speaker-encoder layer means, 768).
    functionals: tuple[Functional, ...] = ("egemaps",)
    # Per feature family (mels, waves, egemaps, compare, ge2e): its own gain / gain_dbfs / trim, since the
    # front end interacts with each family's normalisation differently (see for_store).
    front_end: Optional[dict[str, StoreFrontEnd]] = None

    def for_store(self, kind: str) -> "FeatureParams":
        """The settings a store of `kind` is built with: these, with `front_end.<kind>` applied."""
        override = (self.front_end or {}).get(kind)
        if override is None:
            return dataclasses.replace(self, front_end=None)
        changes: dict[str, Any] = {k: getattr(override, k) for k in ("gain", "gain_dbfs", "trim_db", "vad")
                                   if getattr(override, k) is not None}
        if override.trim is False:
            changes["trim_db"] = None
        return dataclasses.replace(self, front_end=None, **changes)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.front_end or {}) - set(STORE_KINDS))
        if unknown:
            raise ValueError(f"front_end: unknown store kind {unknown[0]!r}; kinds: {list(STORE_KINDS)}")
        for kind in self.front_end or {}:
            try:
                self.for_store(kind)  # the settings it results in must be valid too
            except ValueError as exc:
                raise ValueError(f"front_end.{kind}: {exc}") from None
        if not self.functionals or len(set(self.functionals)) != len(self.functionals):
            raise ValueError(f"functionals must list some of {list(FUNCTIONALS)}, each once, got "
                             f"{list(self.functionals)}")
        if self.win_length > self.n_fft:
            raise ValueError("win_length must be <= n_fft")
        for name in ("sample_rate", "n_mels", "n_fft", "hop_length", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        # Literal fields are checked by the loader; FeatureParams is also built from store meta.
        for name, allowed in (("gain", ("none", "peak", "rms", "loudness")), ("crop", ("center", "start")),
                              ("instance_norm", ("none", "mean", "mean_std")), ("pad", ("silence", "repeat")),
                              ("mel_norm", ("train", "speaker"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.vad not in VAD_MODES:
            raise ValueError(f"vad must be one of {list(VAD_MODES)}, got {self.vad!r}")
        if self.vad != "none" and self.sample_rate not in VAD_RATES:
            raise ValueError(f"vad {self.vad!r}: silero-vad reads {list(VAD_RATES)} Hz audio; set sample_rate to "
                             f"one of them (now {self.sample_rate}) or vad: none")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if not -70.0 <= self.gain_dbfs <= 0.0:
            raise ValueError(f"gain_dbfs must be in [-70, 0] (dBFS or LUFS), got {self.gain_dbfs}")
        if self.trim_db is not None and not 0.0 < self.trim_db <= 120.0:
            raise ValueError(f"trim_db must be in (0, 120] dB or null (off), got {self.trim_db}")
        if self.min_duration_s < 0:
            raise ValueError(f"min_duration_s must be >= 0, got {self.min_duration_s}")


# --------------------------------------------------------------------------- models
# The torch networks of ser.models.MODELS plus "classical" (sklearn heads on utterance-level vectors,
# ser.models.linear); ser.train.learners maps each to its learner, and a test keeps them in step.
Arch = Literal["crnn", "encoder", "mlp", "classical"]
ARCHS: tuple[str, ...] = typing.get_args(Arch)


def _check_min(obj: Any, names: tuple[str, ...], low: int = 1) -> None:
    for name in names:
        if getattr(obj, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(obj, name)}")


def _check_dropout(value: float, name: str = "dropout") -> None:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class OptimParams:
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3  # heads (and the whole model when lr_encoder is null)
    lr_encoder: Optional[float] = None
    weight_decay: float = 0.0
    grad_clip: Optional[float] = None
    scheduler: Literal["none", "plateau"] = "none"
    plateau_patience: int = 5
    plateau_factor: float = 0.7

    def __post_init__(self) -> None:
        if self.lr <= 0 or (self.lr_encoder is not None and self.lr_encoder <= 0):
            raise ValueError("learning rates must be > 0")
        if not 0 < self.plateau_factor < 1:
            raise ValueError("plateau_factor must be in (0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 (or null for no clipping), got {self.grad_clip}")
        _check_min(self, ("plateau_patience",), 0)


@dataclass(frozen=True)
class CrnnParams:
    channels: tuple[int, ...] = (32, 64, 128)
    lstm_hidden: int = 128
    fc_hidden: int = 128
    dropout: float = 0.3
    domain_hidden: int = 128

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive sizes, got {list(self.channels)}")
        _check_min(self, ("lstm_hidden", "fc_hidden", "domain_hidden"))
        _check_dropout(self.dropout)


@dataclass(frozen=True)
class LoraParams:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: Optional[tuple[int, ...]] = None  # None: every encoder layer

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha < 1:
            raise ValueError(f"lora.alpha must be >= 1, got {self.alpha}")
        _check_dropout(self.dropout, "lora.dropout")
        if not self.target_modules:
            raise ValueError("lora.target_modules must name at least one module")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"lora.layers must be null or non-negative layer indices, got {self.layers}")


def encoder_store_key(backbone: str, chunk_seconds: float) -> str:
    """`<backbone, sanitised>-<8 hex>`: one embedding store per (backbone, chunking); readable and unique."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", backbone.strip("/")).strip("-")[-48:] or "encoder"
    digest = hashlib.sha256(json.dumps([backbone, float(chunk_seconds)]).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


Regime = Literal["frozen", "full", "lora", "qlora"]
REGIMES: tuple[str, ...] = typing.get_args(Regime)


@dataclass(frozen=True)
class EncoderParams:
    """A speech foundation model (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper encoder) + emotion head.

    backbone: a hub id, a local save_pretrained directory, or `random:<family>-<size>`
    (see ser.models.encoders.PRESETS) for a randomly initialised model.
    regime: frozen (a probe: only the head trains), full (fine-tune; `freeze_feature_encoder`
    keeps the CNN front end fixed), lora (adapters on `lora.target_modules`), qlora (the
    backbone's Linear layers in 4-bit NF4 + LoRA adapters).
    layers: which hidden states feed the head: last, an index (0 = the CNN / embedding
    output, 1..L the transformer layers; negative counts from the end) or weighted
    (SUPERB: softmax-normalised learnable weights over every hidden state).
    projection: width of the linear frame projection before mean pooling (null: none).
    chunk_seconds: clips longer than this are encoded in chunks (Whisper's limit is 30 s)
    and their frames pooled together. max_seconds: training crop of waveform inputs.
    """
    backbone: str
    regime: Regime = "full"
    layers: str = "last"
    projection: Optional[int] = 256
    head_hidden: int = 256
    domain_hidden: int = 64
    freeze_feature_encoder: bool = True
    lora: Optional[LoraParams] = None
    gradient_checkpointing: bool = False
    max_seconds: float = 6.0
    chunk_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.backbone:
            raise ValueError("backbone must name a hub id, a directory or random:<family>-<size>")
        _check_min(self, ("head_hidden", "domain_hidden"))
        if self.projection is not None and self.projection < 1:
            raise ValueError(f"projection must be >= 1 or null (none), got {self.projection}")
        for name in ("max_seconds", "chunk_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.layers not in ("last", "weighted"):
            try:
                int(self.layers)
            except ValueError:
                raise ValueError(f"layers must be last, weighted or a hidden-state index, got {self.layers!r}") \
                    from None
        if self.regime in ("lora", "qlora") and self.lora is None:
            raise ValueError(f"regime {self.regime} needs a lora: section (r, alpha, dropout, target_modules)")
        if self.regime in ("frozen", "full") and self.lora is not None:
            raise ValueError(f"regime {self.regime} trains no adapters; remove lora: or set regime: lora / qlora")
        if self.gradient_checkpointing and self.regime == "frozen":
            raise ValueError("gradient_checkpointing does not apply to regime frozen (no backbone gradients)")

    @property
    def store_key(self) -> str:
        """Name of the embedding store of this encoder: what the cached hidden-state means depend on."""
        return encoder_store_key(self.backbone, self.chunk_seconds)

    @property
    def layer_index(self) -> Optional[int]:
        """The hidden-state index of `layers: <int>`, None for last / weighted."""
        return None if self.layers in ("last", "weighted") else int(self.layers)


@dataclass(frozen=True)
class SpecAugmentParams:
    """SpecAugment (Park et al. 2019) masking of training log-mels, without time warping.

    Each training clip gets `freq_masks` bands of 0..freq_width mel bins and
    `time_masks` spans of 0..time_width frames (inside its valid frames) set
    to 0, which is the train mean of a normalised log-mel store.
    """
    freq_masks: int = 2
    freq_width: int = 8
    time_masks: int = 2
    time_width: int = 20

    def __post_init__(self) -> None:
        _check_min(self, ("freq_masks", "freq_width", "time_masks", "time_width"), 0)


@dataclass(frozen=True)
class MlpParams:
    """A small MLP on an utterance-level vector store (arch `mlp`, ser.models.mlp), trained by the one loop.

    hidden: the layer widths (nkululeko's default MLP is [64, 16]); each layer is
    Linear -> ReLU -> dropout. standardise: z-score the functionals with the train
    split's statistics ("global") or each speaker's own ("speaker"), or map each speaker's values
    to normal quantiles of their ranks ("speaker_rank"; ser.features.scaling).
    domain_hidden: width of the DANN domain classifier's hidden layer (objective dann).
    """
    hidden: tuple[int, ...] = (64, 16)
    dropout: float = 0.2
    standardise: Literal["global", "speaker", "speaker_rank"] = "speaker"
    domain_hidden: int = 64

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of positive widths, got {list(self.hidden)}")
        _check_min(self, ("domain_hidden",))
        _check_dropout(self.dropout)


@dataclass(frozen=True)
class SelfTrainParams:
    """Self-training on the unlabeled target clips (`classical.self_train`; cross-corpus studies with
    an `adapt` split). After selection, each round labels the adapt clips with the current model and,
    per class, keeps the `fraction` x n_adapt / n_classes clips it predicts as that class with the
    highest decision value (fewer where fewer are predicted so); the grid is refitted on train plus
    those pseudo-labeled clips and the fit with the best source-validation UAR is kept. The equal
    per-class quota stops the classes the source favours from taking over the pseudo-labels (a target
    whose classes are far from balanced can lose by it). Test clips are never read."""
    rounds: int = 3
    fraction: float = 0.3

    def __post_init__(self) -> None:
        _check_min(self, ("rounds",))
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


@dataclass(frozen=True)
class ClassicalParams:
    """A classical head on an utterance-level vector store (arch `classical`, ser.models.linear).

    classifier: `logreg` (logistic regression), `svm` (linear SVM) or `rbf_svm`
    (an SVM with the RBF kernel exp(-gamma |x - x'|^2)).
    C: the grid of inverse regularisation strengths; gamma (rbf_svm only): the grid
    of kernel widths, null: [1 / n_features] (sklearn's "scale" on z-scored features).
    Every (C, gamma) is fitted on train; the best validation UAR is kept (ties: the
    smaller C, then the smaller gamma). standardise: z-score with the train split's
    statistics ("global") or each speaker's own ("speaker"), or each speaker's rank-Gauss
    values ("speaker_rank", ser.features.scaling). calibrate: "temperature"
    turns the chosen fit's decision values d into probabilities softmax(d / T), T
    fitted on the validation split by log-loss (temperature scaling); the argmax,
    and so every label metric, is unchanged. An SVM then scores with probabilities,
    so it can be a fusion member; "none": an SVM scores with its decision values.
    self_train: null, or pseudo-labeled target rounds (SelfTrainParams).
    """
    classifier: Literal["svm", "logreg", "rbf_svm"]
    C: tuple[float, ...]
    standardise: Literal["global", "speaker", "speaker_rank"]
    class_weight: Literal["none", "balanced"] = "balanced"
    max_iter: int = 10000
    gamma: Optional[tuple[float, ...]] = None
    calibrate: Literal["none", "temperature"] = "none"
    self_train: Optional[SelfTrainParams] = None

    def __post_init__(self) -> None:
        if not self.C or min(self.C) <= 0:
            raise ValueError(f"C must be a non-empty list of values > 0, got {list(self.C)}")
        if self.gamma is not None and (self.classifier != "rbf_svm" or not self.gamma or min(self.gamma) <= 0):
            raise ValueError("gamma: a non-empty list of values > 0, for classifier rbf_svm only "
                             f"(got {list(self.gamma)} for {self.classifier})")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class ModelParams:
    """One trained model of one study.

    balance: how training copes with class imbalance. "loss": cross-entropy
    weighted by inverse train-split class frequency (weights of mean 1);
    "sampler": class-balanced batches (drawn with replacement); "none".
    spec_augment: SpecAugment masks on training batches (input mels only).
    patience: stop when val UAR has not improved for this many epochs (null: never).
    select: which epoch's weights the run keeps: "val" the best validation UAR, "last" the
    final epoch (for DANN, whose source validation UAR swings from epoch to epoch while the
    adversarial game runs, so its best epoch is close to a random pick).
    """
    study: str
    arch: Arch  # registry key, see ser.models
    objective: Literal["ce", "dann"]
    input: Literal["mels", "waves", "embeddings", Functional]
    epochs: int
    batch_size: int
    optim: OptimParams
    crnn: Optional[CrnnParams] = None
    encoder: Optional[EncoderParams] = None
    balance: Literal["none", "loss", "sampler"] = "loss"
    spec_augment: Optional[SpecAugmentParams] = None
    patience: Optional[int] = None
    # arch classical: epochs, batch_size and optim are required but unused (one fit per C).
    classical: Optional[ClassicalParams] = None
    mlp: Optional[MlpParams] = None
    select: Literal["val", "last"] = "val"

    @property
    def store_key(self) -> Optional[str]:
        """The sub-store of an `embeddings` input (one per encoder), None for the other inputs."""
        return self.encoder.store_key if self.input == "embeddings" and self.encoder is not None else None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.spec_augment is not None and self.input != "mels":
            raise ValueError(f"spec_augment masks log-mels; input {self.input!r} has none (remove spec_augment)")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or null: no early stopping), got {self.patience}")
        if (self.input in FUNCTIONALS) != (self.arch in ("classical", "mlp")):
            raise ValueError(f"arch {self.arch!r} with input {self.input!r}: the utterance-level inputs "
                             f"({', '.join(FUNCTIONALS)}) go with arch 'classical' or 'mlp', and only with them")
        if self.arch == "classical" and self.objective != "ce":
            raise ValueError(f"objective {self.objective!r} does not apply to arch 'classical' (a classifier on "
                             "fixed features has no encoder to adapt); use objective: ce, or arch: mlp")
        if self.select == "last" and self.patience is not None:
            raise ValueError("select: last keeps the final epoch; patience (early stopping on val UAR) contradicts "
                             "it: set patience: null, or select: val")
        if self.input == "embeddings" and (self.arch != "encoder" or self.encoder is None
                                           or self.encoder.regime != "frozen"):
            raise ValueError("input 'embeddings' (the cached hidden-state means of a frozen encoder) needs arch "
                             "encoder with encoder.regime: frozen; other regimes train on input: waves")
        if self.arch == "classical" and self.classical is None:
            raise ValueError("arch 'classical' needs a 'classical:' section (classifier, C, standardise)")

    @property
    def scores(self) -> Literal["softmax", "decision"]:
        """What its predictions CSVs score with: class probabilities, or an uncalibrated SVM's decision values."""
        cp = self.classical
        svm = self.arch == "classical" and cp is not None and cp.classifier != "logreg" and cp.calibrate == "none"
        return "decision" if svm else "softmax"


@dataclass(frozen=True)
class TrainParams:
    """Trainer knobs shared by every model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    bucket_by_length: bool = True
    deterministic: bool = True
    # torch intra-op threads; null: the cores this process may use (see ser.runtime.set_torch_threads).
    # Under `dvc queue start -j N` set it to cores / N: oversubscribed threads slow training many-fold.
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or null: the cores available), got {self.threads}")


@dataclass(frozen=True)
class RuntimeParams:
    """How fast, never what: knobs that cannot change a result. No stage depends on this section,
    so changing it re-runs nothing. (Threads, device and precision do change results: they are
    `train.threads`, `train.device`, `train.mixed_precision`, and every run records them.)"""
    workers: int = 2        # precompute processes (each clip is computed alone: same store for any count)
    num_workers: int = 0    # DataLoader workers (crops and batches derive from (seed, epoch, item): same batches)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class EvalParams:
    bootstrap: int = 1000
    ci: float = 0.95
    seed: int = 0  # bootstrap resampling (fixed: rerunning a seed's cell reproduces its intervals)

    def __post_init__(self) -> None:
        if not 0 < self.ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {self.ci}")


@dataclass(frozen=True)
class FusionParams:
    """A late fusion (`fusions.<name>`, computed by summarize): for every run (fold, seed) and test
    set, the mean of its members' class probabilities per clip, then the argmax. The members are
    two or more `models` of one study that score with probabilities (not an uncalibrated SVM's decision values)."""
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.members) < 2 or len(set(self.members)) != len(self.members):
            raise ValueError(f"members: name two or more distinct models, got {list(self.members)}")


# --------------------------------------------------------------------------- root
@dataclass(frozen=True)
class Params:
    """The whole params.yaml. Every model runs once per (fold, seed) in `folds` x `seeds`
    (one DVC stage each); `seed` is the seed of the run being executed (set by
    `for_run`, never read from the file)."""
    seeds: tuple[int, ...]
    folds: tuple[int, ...]
    lambda_domain: float
    max_alpha: float
    corpora: dict[str, CorpusParams]
    demo: DemoParams
    studies: dict[str, StudyParams]
    splits: dict[str, dict[str, SplitParams]]  # study -> corpus -> protocol
    features: FeatureParams
    train: TrainParams
    models: dict[str, ModelParams]
    evaluation: EvalParams = field(default_factory=EvalParams)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)
    fusions: dict[str, FusionParams] = field(default_factory=dict)
    seed: int = 0
    fold: int = 1

    def for_run(self, fold: int, seed: int) -> "Params":
        """These params for the run (fold, seed) of the matrix."""
        return dataclasses.replace(self, fold=fold, seed=seed)

    def __post_init__(self) -> None:
        for name in ("seeds", "folds"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list of distinct integers, got {list(values)}")
        if min(self.folds) < 1:
            raise ValueError(f"folds are numbered from 1, got {list(self.folds)}")
        if self.lambda_domain < 0:
            raise ValueError(f"lambda_domain must be >= 0, got {self.lambda_domain}")
        if not 0 <= self.max_alpha <= 1:
            raise ValueError(f"max_alpha must be in [0, 1], got {self.max_alpha}")
        for sname, study in self.studies.items():
            for corpus in study.corpora:
                if corpus not in self.corpora:
                    raise ValueError(f"studies.{sname}: corpus {corpus!r} is not configured under corpora "
                                     f"(known: {sorted(self.corpora)})")
                if corpus not in self.splits.get(sname, {}):
                    raise ValueError(f"splits.{sname}.{corpus}: missing split protocol")
        for sname in self.splits:
            if sname not in self.studies:
                raise ValueError(f"splits.{sname}: no such study (known: {sorted(self.studies)})")
        for mname, model in self.models.items():
            if model.study not in self.studies:
                raise ValueError(f"models.{mname}.study: unknown study {model.study!r} "
                                 f"(known: {sorted(self.studies)})")
            needs = {"crnn": (("mels",), "crnn"), "encoder": (("waves", "embeddings"), "encoder"),
                     "mlp": (FUNCTIONALS, "mlp")}.get(model.arch)
            if needs and model.input not in needs[0]:
                raise ValueError(f"models.{mname}: arch {model.arch!r} reads {' or '.join(needs[0])}; "
                                 f"set input: {needs[0][0]}")
            if needs and getattr(model, needs[1]) is None:
                raise ValueError(f"models.{mname}: arch {model.arch!r} needs a '{needs[1]}:' section")
            if model.input in FUNCTIONALS and model.input not in self.features.functionals:
                raise ValueError(f"models.{mname}: input {model.input!r} needs {model.input!r} in "
                                 f"features.functionals (now {list(self.features.functionals)})")
            if model.objective == "dann" and self.studies[model.study].target is None:
                raise ValueError(f"models.{mname}: objective 'dann' needs a study with a target corpus")
        for sname, study in self.studies.items():
            target = study.target
            if target is not None and not study.train_on_target:
                sp = self.splits[sname][target]
                if sp.protocol not in ("speakers", "sessions", "all_test") or sp.train or sp.val:
                    raise ValueError(
                        f"splits.{sname}.{target}: {target} is the target corpus of study {sname!r}, and its "
                        f"labels are never trained on by default; use protocol speakers/sessions with only "
                        f"`adapt` and `test` lists (or all_test), or set studies.{sname}.train_on_target: true")
        for sname in sorted({m.study for m in self.models.values()}):
            self._check_study_splits(sname)
        for fname, fusion in self.fusions.items():
            self._check_fusion(fname, fusion)

    def _check_fusion(self, fname: str, fusion: FusionParams) -> None:
        where = f"fusions.{fname}"
        if fname in self.models:
            raise ValueError(f"{where}: {fname!r} is also a model's name; a fusion needs a name of its own")
        unknown = [m for m in fusion.members if m not in self.models]
        if unknown:
            raise ValueError(f"{where}.members: {unknown} not in `models` (defined: {sorted(self.models)})")
        studies = sorted({self.models[m].study for m in fusion.members})
        if len(studies) > 1:
            raise ValueError(f"{where}.members: models of different studies ({studies}) are not tested on "
                             "the same clips; fuse models of one study")
        if self.studies[studies[0]].design == "matrix":
            raise ValueError(f"{where}: study {studies[0]!r} is a matrix study (one training corpus per fold); "
                             "fuse models of a single-design study")
        svm = [m for m in fusion.members if self.models[m].scores != "softmax"]
        if svm:
            raise ValueError(f"{where}.members: {svm} score with an SVM's decision values, not class "
                             "probabilities, so there is nothing to average; fuse softmax models (logreg, mlp, "
                             "crnn, encoders) or give the SVM `calibrate: temperature`")

    def study_of(self, name: str) -> str:
        """The study of model or fusion `name`."""
        if name in self.fusions:
            return self.models[self.fusions[name].members[0]].study
        return self.model(name).study

    def _check_study_splits(self, sname: str) -> None:
        """Combinations that cannot train or evaluate fail here, before any work (see SplitParams.provides)."""
        study, splits = self.studies[sname], self.splits[sname]
        target = study.target
        if study.design == "matrix":
            for c in study.corpora:
                sp = splits[c]
                if sp.protocol == "loso" or sp.k is not None:
                    raise ValueError(f"splits.{sname}.{c}: a 'matrix' study runs one fold per training corpus, so "
                                     f"each corpus needs a single split (sessions, speakers, held_out_words "
                                     f"without folds), not {sp.protocol!r}" + (f" with folds: {sp.k}" if sp.k else ""))
                for split in ("train", "val", "test"):
                    if split not in sp.provides(True):
                        raise ValueError(f"splits.{sname}.{c}: a 'matrix' study trains on every corpus and tests "
                                         f"on each, so {c} needs a {split} split")
            return
        labeled = [c for c in study.corpora if c != target or study.train_on_target]
        implicit = {c: c != target for c in study.corpora}
        for split in ("train", "val"):
            if not any(split in splits[c].provides(implicit[c]) for c in labeled):
                raise ValueError(
                    f"splits.{sname}: no corpus of study {sname!r} has {split} data ({', '.join(labeled)}: "
                    f"list {split} speakers or sessions); training needs a {split} split")
        mine = [(m, mp) for m, mp in self.models.items() if mp.study == sname]
        dann = sorted(m for m, mp in mine if mp.objective == "dann")
        selftrain = sorted(m for m, mp in mine if mp.classical is not None and mp.classical.self_train is not None)
        for names, what in ((dann, "objective dann"), (selftrain, "classical.self_train")):
            if names and (target is None or "adapt" not in splits[target].provides(False)):
                raise ValueError(f"splits.{sname}.{target}: models {names} ({what}) need unlabeled target "
                                 f"data: list the adaptation speakers under `adapt`"
                                 + ("" if target is not None else f" of a target corpus (studies.{sname}.target)"))
        if not any("test" in splits[c].provides(implicit[c]) for c in study.corpora):
            raise ValueError(f"splits.{sname}: no corpus of study {sname!r} has test data, so nothing "
                             f"can be evaluated; list test speakers or sessions")

    def store_plan(self) -> dict[str, list[str]]:
        """The feature stores the models read: {kind: [study, ...]} for mels, waves and each
        functionals kind (an empty list: no model reads that kind)."""
        kinds = ("mels", "waves", "embeddings", *self.features.functionals)
        plan = {kind: sorted({m.study for m in self.models.values() if m.input == kind}) for kind in kinds}
        # embeddings are computed from the waveform store
        plan["waves"] = sorted(set(plan["waves"]) | set(plan["embeddings"]))
        return plan

    def probe_encoders(self) -> dict[str, list[EncoderParams]]:
        """{study: the encoders whose cached embeddings some model reads}, one per store key."""
        out: dict[str, dict[str, EncoderParams]] = {}
        for m in self.models.values():
            if m.input == "embeddings" and m.encoder is not None:
                out.setdefault(m.study, {}).setdefault(m.encoder.store_key, m.encoder)
        return {study: list(encs.values()) for study, encs in sorted(out.items())}

    def embedding_plan(self) -> dict[str, dict[str, str]]:
        """{study: {store key: backbone}}: what precompute-embeddings builds (check-params writes it)."""
        return {study: {e.store_key: e.backbone for e in encs} for study, encs in self.probe_encoders().items()}

    def model(self, name: str) -> "ModelParams":
        """The `models` entry `name`, or UnknownModel listing the names params.yaml defines."""
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; params.yaml `models` defines: {sorted(self.models)}")
        return self.models[name]

    def study(self, name: str) -> StudyParams:
        if name not in self.studies:
            raise KeyError(f"unknown study {name!r}; known: {sorted(self.studies)}")
        return self.studies[name]

    def run_spec(self, name: str) -> dict[str, Any]:
        """Everything of params.yaml that the runs of model `name` read, as plain data.

        Its own `models` entry and its study; the `train` knobs for a model the torch
        trainer runs (threads, device and precision change its weights, never a
        classical model's); `lambda_domain` and `max_alpha` for objective dann only.
        bind@<model> writes it to data/bind/<model>.json and the model's train@ and
        evaluate@ stages depend on that file, not on top-level keys: a change reaches
        exactly the models that read it. The trainer's resume fingerprint hashes it.
        """
        if name not in self.models:
            raise KeyError(f"unknown model {name!r}; params.yaml `models` defines: {sorted(self.models)}")
        mp = self.models[name]
        spec: dict[str, Any] = {"model": dataclasses.asdict(mp), "study": dataclasses.asdict(self.study(mp.study))}
        if mp.arch != "classical":
            spec["train"] = dataclasses.asdict(self.train)
        if mp.objective == "dann":
            spec["dann"] = {"lambda_domain": self.lambda_domain, "max_alpha": self.max_alpha}
        # JSON's view (tuples -> lists): the spec is compared with the one read back from the bind file.
        return json.loads(json.dumps(spec, sort_keys=True))


# --------------------------------------------------------------------------- loading
def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if _is_optional(tp):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner, value, where)
    if value is None:
        raise ParamsError(f"{where}: must not be null")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ParamsError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__}")
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__}")
        _k, inner = typing.get_args(tp)
        return {str(k): _convert(inner, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # PyYAML reads `1e-3` (no dot) as a string: accept numeric strings.
        if isinstance(value, bool):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # speaker ids such as 1001 or 01
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp!r} at {where}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ParamsError(f"{where or 'params'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ParamsError(f"unknown key {prefix}{unknown[0]!s}"
                          + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                          + f"; allowed here: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"missing key {prefix}{name}")
            continue
        kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (ValueError, KeyError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ParamsError(f"{where or 'params'}: {msg}") from None


RENAMED = {
    "seed": "seed is now `seeds: [<int>, ...]` (one run of every model per seed); the bootstrap seed is "
            "evaluation.seed",
    "fold": "the fold is set per run; list the folds to run under `folds: [1, 2, ...]`",
}


def parse_params(data: dict[str, Any]) -> Params:
    """Build `Params` from an already-parsed mapping (strict)."""
    if isinstance(data, dict):
        for key, hint in RENAMED.items():
            if key in data:
                raise ParamsError(f"unknown key {key}: {hint}")
        if isinstance(data.get("features"), dict) and "opensmile_sets" in data["features"]:
            raise ParamsError("unknown key features.opensmile_sets: it is now features.functionals (the same "
                              f"list; it may also name ge2e, kinds: {list(FUNCTIONALS)})")
        for section, key in (("features", "workers"), ("train", "num_workers")):
            if isinstance(data.get(section), dict) and key in data[section]:
                raise ParamsError(f"unknown key {section}.{key}: it is now runtime.{key} (the `runtime:` section "
                                  "holds what cannot change a result, and no stage depends on it)")
        if isinstance(data.get("studies"), dict):  # `source: <corpus>` is a list of one
            data = {**data, "studies": {k: {**v, "source": [v["source"]]} if isinstance(v, dict)
                                        and isinstance(v.get("source"), str) else v
                                        for k, v in data["studies"].items()}}
        for sname, corpora in (data.get("splits") or {}).items():
            for cname, sp in (corpora or {}).items():
                if isinstance(sp, dict) and "fold" in sp:
                    raise ParamsError(f"unknown key splits.{sname}.{cname}.fold: the fold is no longer chosen "
                                      "in the split; the top-level `folds: [1, 2, ...]` lists the folds run")
        for mname, model in (data.get("models") or {}).items():
            if isinstance(model, dict):
                _check_model_renames(mname, model)
    return _build(Params, data, "")


def _check_model_renames(mname: str, model: dict[str, Any]) -> None:
    """Keys of the wav2vec2-only model schema, with what replaced them."""
    where = f"models.{mname}"
    if model.get("arch") == "linear":
        raise ParamsError(f"{where}.arch: 'linear' is now `arch: classical` (logreg, svm or rbf_svm under "
                          "`classical.classifier`)")
    if model.get("arch") == "wav2vec2":
        raise ParamsError(f"{where}.arch: 'wav2vec2' is now `arch: encoder` (any wav2vec2, HuBERT, WavLM, "
                          "data2vec-audio or Whisper encoder; the backbone's config names the family)")
    if "wav2vec2" in model:
        raise ParamsError(f"unknown key {where}.wav2vec2: the section is now `encoder:` (same backbone spec; "
                          "random presets are named random:<family>-<size>, e.g. random:wav2vec2-tiny)")
    enc = model.get("encoder")
    if isinstance(enc, dict) and "quantize" in enc:
        raise ParamsError(f"unknown key {where}.encoder.quantize: choose the regime instead, "
                          "`regime: qlora` (4-bit NF4 + LoRA), `lora`, `full` or `frozen`")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate a params file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_params(data or {})
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
