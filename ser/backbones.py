"""Encoder backbones as data: the families the pipeline runs, the random presets, and what params and
the local disk alone can tell about a backbone spec (no torch, no transformers, no network).

`models.<name>.encoder.backbone` is `random:<preset>` (PRESETS), a hub id, or a local
save_pretrained / snapshot directory (see ser.models.encoders, which builds and loads them).
check-params runs `check_backbones` before any stage, so a misspelled preset, a missing
directory or a backbone that expects another audio rate fails at once, naming the key.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ser.config import ParamsError
from ser.errors import SerError, UnknownName

if TYPE_CHECKING:
    from ser.config import Params

__all__ = ["FAMILIES", "PRESETS", "UnknownPreset", "BackboneNotFound", "preset", "local_dir", "check_backbone",
           "check_backbones"]

# model_type (config.json) -> (transformers config class, model class) names
FAMILIES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel"),
    "whisper": ("WhisperConfig", "WhisperForAudioClassification"),  # .encoder is used
}

_REG = dict(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1,
            mask_time_prob=0.05)
# Architecturally real models at ~40k parameters: conv strides (5, 8, 8) give the real total
# stride 320 (50 frames/s), so lengths, masks and pooling behave as with the real backbones.
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), conv_bias=True,
             layerdrop=0.0, **_REG)
_BASE_CONV = dict(conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             **_BASE_CONV, **_REG)
_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
              **_BASE_CONV, **_REG)
_GROUP_POSTNORM = dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
_LAYER_PRENORM = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
_POSCONV_TINY = dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
_POSCONV = dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)


def _waveform_fe(normalize: bool, mask: bool) -> dict[str, Any]:
    return {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
            "padding_value": 0.0, "padding_side": "right", "do_normalize": normalize, "return_attention_mask": mask}


_WHISPER_FE = {"feature_extractor_type": "WhisperFeatureExtractor", "sampling_rate": 16000, "hop_length": 160,
               "chunk_length": 30, "n_fft": 400, "padding_value": 0.0, "return_attention_mask": False}
_WHISPER_TINY = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                     decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80,
                     dropout=0.1, encoder_layerdrop=0.0)

# preset -> (model_type, config kwargs, feature extractor config). The architecture values and the
# extractors' do_normalize / return_attention_mask are those of the hub checkpoints named.
PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "wav2vec2-tiny": ("wav2vec2", {**_TINY, **_POSCONV_TINY, "feat_extract_norm": "layer",
                                   "do_stable_layer_norm": True}, _waveform_fe(True, True)),
    # facebook/wav2vec2-base (94.4M); layerdrop: fairseq's base setting
    "wav2vec2-base": ("wav2vec2", {**_BASE, **_POSCONV, **_GROUP_POSTNORM, "layerdrop": 0.05},
                      _waveform_fe(True, False)),
    # facebook/wav2vec2-large-xlsr-53 (315.4M)
    "wav2vec2-large-xlsr": ("wav2vec2", {**_LARGE, **_POSCONV, **_LAYER_PRENORM, "layerdrop": 0.1},
                            _waveform_fe(True, True)),
    "hubert-tiny": ("hubert", {**_TINY, **_POSCONV_TINY, "feat_extract_norm": "group",
                               "do_stable_layer_norm": False}, _waveform_fe(False, False)),
    "hubert-base": ("hubert", {**_BASE, **_POSCONV, **_GROUP_POSTNORM, "layerdrop": 0.05},  # hubert-base-ls960
                    _waveform_fe(False, False)),
    "hubert-large": ("hubert", {**_LARGE, **_POSCONV, **_LAYER_PRENORM, "layerdrop": 0.1},  # hubert-large-ll60k
                     _waveform_fe(True, True)),
    "wavlm-tiny": ("wavlm", {**_TINY, **_POSCONV_TINY, "feat_extract_norm": "layer",
                             "do_stable_layer_norm": True, "num_buckets": 32, "max_bucket_distance": 64},
                   _waveform_fe(True, True)),
    "wavlm-base": ("wavlm", {**_BASE, **_POSCONV, **_GROUP_POSTNORM, "layerdrop": 0.05},  # wavlm-base-plus
                   _waveform_fe(False, True)),
    "wavlm-large": ("wavlm", {**_LARGE, **_POSCONV, **_LAYER_PRENORM, "layerdrop": 0.1},  # microsoft/wavlm-large
                    _waveform_fe(True, True)),
    "data2vec-tiny": ("data2vec-audio", {**_TINY, "num_conv_pos_embedding_groups": 4}, _waveform_fe(True, True)),
    "data2vec-base": ("data2vec-audio", {**_BASE, "conv_bias": True, "layerdrop": 0.0},  # data2vec-audio-base
                      _waveform_fe(True, True)),
    "data2vec-large": ("data2vec-audio", {**_LARGE, "conv_bias": True, "layerdrop": 0.0},
                       _waveform_fe(True, True)),
    "whisper-tiny": ("whisper", _WHISPER_TINY, {**_WHISPER_FE, "feature_size": 80}),
    # openai/whisper-base (encoder 20.6M) and openai/whisper-large-v3 (encoder 635M, 128 mel bins)
    "whisper-base": ("whisper", dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                                     decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048,
                                     num_mel_bins=80), {**_WHISPER_FE, "feature_size": 80}),
    "whisper-large": ("whisper", dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                                      encoder_ffn_dim=5120, decoder_layers=32, decoder_attention_heads=20,
                                      decoder_ffn_dim=5120, num_mel_bins=128), {**_WHISPER_FE, "feature_size": 128}),
}


class UnknownPreset(UnknownName):
    """A `random:<preset>` backbone names no preset of PRESETS."""


class BackboneNotFound(FileNotFoundError, SerError):
    """An encoder backbone that is neither a model directory, a reachable hub id nor a preset."""


def preset(name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(model_type, config kwargs, feature-extractor config) of `random:<name>`, or UnknownPreset."""
    if name not in PRESETS:
        raise UnknownPreset(f"unknown random encoder preset {name!r}; known: {sorted(PRESETS)} "
                            f"(backbone: 'random:<preset>')")
    return PRESETS[name]


def local_dir(spec: str) -> Optional[Path]:
    """The model directory a backbone spec names, None for a hub id or a `random:` preset; a path-like
    spec (/, ., ~) that is no directory, or a directory without config.json, is BackboneNotFound."""
    if spec.startswith("random:"):
        return None
    path = Path(spec).expanduser()
    if not path.is_dir():
        if spec.startswith(("/", ".", "~")):
            raise BackboneNotFound(f"backbone directory {spec} does not exist; give a save_pretrained or hub "
                                   "snapshot directory, a hub id, or 'random:<preset>'")
        return None
    if not (path / "config.json").is_file():
        raise BackboneNotFound(f"backbone directory {path} has no config.json; point it at a save_pretrained "
                               "or hub snapshot directory")
    return path


def _local_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _cached_preprocessor(repo_id: str) -> Optional[dict[str, Any]]:
    """A hub backbone's preprocessor config when it is in the local Hugging Face cache (no request)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        path = try_to_load_from_cache(repo_id, "preprocessor_config.json")
    except Exception:  # not a valid repo id, or an old huggingface_hub: nothing to check on disk
        return None
    return _local_json(Path(path)) if isinstance(path, str) else None


def check_backbone(spec: str, sample_rate: int, key: str) -> None:
    """What params and the local disk alone tell about a backbone, before any stage runs: a `random:`
    preset must exist; a path must be a model directory; the audio rate the backbone's preprocessor
    expects (preset, local directory, or a hub id already in the cache) must be `sample_rate`.
    Raises ParamsError naming `key`; a hub id not cached is left to the stage that fetches it."""
    try:
        if spec.startswith("random:"):
            preprocessor: Optional[dict[str, Any]] = preset(spec.split(":", 1)[1])[2]
        else:
            path = local_dir(spec)
            preprocessor = _local_json(path / "preprocessor_config.json") if path else _cached_preprocessor(spec)
    except (UnknownPreset, BackboneNotFound) as exc:
        raise ParamsError(f"{key}: {exc}") from None
    rate = (preprocessor or {}).get("sampling_rate")
    if rate and int(rate) != int(sample_rate):
        raise ParamsError(f"{key}: {spec} expects {int(rate)} Hz audio (its preprocessor config), but "
                          f"features.sample_rate is {sample_rate}; set features.sample_rate: {int(rate)}")


def check_backbones(params: Params) -> None:
    """check_backbone for every encoder model of params.yaml (the check-params stage)."""
    for name, mp in params.models.items():
        if mp.encoder is not None:
            check_backbone(mp.encoder.backbone, params.features.sample_rate, f"models.{name}.encoder.backbone")
