"""GE2E speaker-encoder layer means: a pretrained neural representation that runs offline.

The `resemblyzer` wheel ships a speaker-verification encoder trained with the generalised
end-to-end loss (Wan et al. 2018; 3 LSTM layers of 256 units over 40 mel bands, 10 ms hop,
trained on LibriSpeech and VoxCeleb 1 and 2) together with its weights (`pretrained.pt`), so
no hub is needed. The `ge2e` store keeps, per clip, the mean over the whole clip of each
layer's outputs: float32 [3 x 256] flattened to 768 values, layer 1 first. As with the
openSMILE functionals, global or per-speaker standardisation is the classifier's choice.

The encoder's own input contract is kept: the wave at 16 kHz (resampled with soxr when the
store's rate differs), raised to -30 dBFS when quieter (resemblyzer's `normalize_volume`,
increase only) and resemblyzer's power mel spectrogram. Pause handling is the store's front
end (`features.front_end.ge2e`), not resemblyzer's own webrtcvad trimming. The layers run one
at a time so that every layer's output is kept; on one CPU thread (the precompute workers),
so a clip's row does not depend on the machine's core count.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["N_LAYERS", "N_FEATURES", "RATE", "layer_means", "ge2e_meta"]

N_LAYERS, HIDDEN = 3, 256
N_FEATURES = N_LAYERS * HIDDEN
RATE = 16000
_NOT_INSTALLED = ("the ge2e store needs the `resemblyzer` package (its wheel ships the encoder weights): "
                  "pip install resemblyzer, or `make setup`")


def _weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(_NOT_INSTALLED)
    path = Path(spec.origin).parent / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the resemblyzer package has no pretrained.pt; reinstall it "
                                "(pip install --force-reinstall resemblyzer)")
    return path


@functools.lru_cache(maxsize=1)
def _layers() -> tuple[torch.nn.LSTM, ...]:
    """The encoder's LSTM as one single-layer LSTM per layer (same weights), in eval mode."""
    import torch  # only the stages that compute GE2E rows pay for importing torch

    state = torch.load(_weights_path(), map_location="cpu", weights_only=True)["model_state"]
    layers = []
    for k in range(N_LAYERS):
        layer = torch.nn.LSTM(40 if k == 0 else HIDDEN, HIDDEN, 1, batch_first=True)
        layer.load_state_dict({name.replace(f"_l{k}", "_l0").removeprefix("lstm."): value
                               for name, value in state.items()
                               if name.startswith("lstm.") and name.endswith(f"_l{k}")})
        layers.append(layer.eval())
    return tuple(layers)


def _mel(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """resemblyzer's preprocessing: 16 kHz, raised to -30 dBFS when quieter, power mel [frames, 40]."""
    from resemblyzer import audio, hparams

    if sample_rate != RATE:
        import soxr
        wave = soxr.resample(wave, sample_rate, RATE, quality="HQ")
    wave = audio.normalize_volume(wave.astype(np.float64), hparams.audio_norm_target_dBFS, increase_only=True)
    return audio.wav_to_mel_spectrogram(wave.astype(np.float32))


def layer_means(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 [768]: each LSTM layer's outputs averaged over the clip (see the module docstring)."""
    import torch

    x = torch.from_numpy(_mel(wave, sample_rate))[None]
    means = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for layer in _layers():
                x, _ = layer(x)
                means.append(x[0].mean(dim=0))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(means).numpy().astype(np.float32)


def ge2e_meta() -> dict[str, Any]:
    """What a ge2e store records about its features (encoder, weights' sha256, names, versions)."""
    digest = hashlib.sha256(_weights_path().read_bytes()).hexdigest()
    return {"feature_set": "GE2E speaker encoder (resemblyzer pretrained.pt)", "feature_level": "layer means",
            "feature_names": [f"ge2e_l{k + 1}_{i:03d}" for k in range(N_LAYERS) for i in range(HIDDEN)],
            "n_features": N_FEATURES, "weights_sha256": digest,
            "resemblyzer_version": importlib.metadata.version("resemblyzer")}
