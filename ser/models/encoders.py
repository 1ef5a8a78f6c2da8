"""Speech foundation models (wav2vec2, HuBERT, WavLM, data2vec-audio, Whisper encoder) with emotion heads.

Backbone spec (`models.<name>.encoder.backbone`):
  random:<family>-<size>  a randomly initialised model of a known architecture (PRESETS: tiny for
                          tests and the demo, base / large at the published sizes), built from a fixed
                          seed and saved with save_pretrained into <cache_dir>/<preset>, with the
                          feature-extractor config of the model it mirrors, so it loads through the
                          same `from_pretrained` path as a real checkpoint (which 4-bit loading needs);
  <hub id>                e.g. microsoft/wavlm-large, openai/whisper-large-v3, from the Hugging Face
                          cache (or the hub when online);
  <directory>             a local save_pretrained / snapshot directory.
The family comes from the checkpoint's config.json (`model_type`). Whisper checkpoints
(encoder-decoder) load their encoder only (WhisperForAudioClassification's loading path).

Input normalisation is the checkpoint's own feature extractor (preprocessor_config.json):
waveform families get zero-mean unit-variance clips when it says `do_normalize` and an attention
mask when it says `return_attention_mask`; Whisper gets its log-mel features (padded to 30 s).
Checkpoints store that config and evaluation / `ser predict` apply the stored one.

Head (every regime): hidden states -> `layers` (last | index | SUPERB's softmax-weighted sum
over every hidden state, CNN output included) -> linear `projection` -> mean over valid frames ->
MLP classifier (+ DANN domain head on the pooled vector). Everything before the classifier is
linear in the hidden states, so the head applied to per-clip means of each layer (ProbeSER, the
`embeddings` store) is the same function as on frame-level states (EncoderSER).

Regimes: frozen (the backbone runs in eval mode without gradients), full (optionally the CNN
front end frozen), lora (adapters on `lora.target_modules`), qlora (Linear layers in 4-bit NF4 +
LoRA). WavLM's attention calls torch's multi_head_attention_forward with the projection *weights*,
bypassing the Linear modules (so LoRA adapters and 4-bit weights would be ignored or misread); it
is replaced by the same computation through the modules (`_wavlm_module_attention`, tested equal).

Device rules for 4-bit models (bitsandbytes 0.50): the backbone is quantized at load time on
the CPU (device_map {"": "cpu"}); `module.to(device)` then moves the packed weights with their
quant_state. Never cast a 4-bit model's dtype; use autocast (accelerate mixed precision).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ser.backbones import FAMILIES, PRESETS, BackboneNotFound, local_dir
from ser.backbones import preset as preset_spec
from ser.config import EncoderParams, LoraParams
from ser.fsutil import apply_umask
from ser.models.base import SERModel
from ser.models.grl import DomainHead
from ser.models.quant_cache import load_4bit

__all__ = ["EncoderSER", "ProbeSER", "PRESETS", "FAMILIES", "BackboneNotFound", "random_backbone_dir",
           "load_backbone", "encoder_config", "default_cache_dir", "Frontend", "LayerPool"]

log = logging.getLogger(__name__)

RANDOM_SEED = 0      # seed of the random presets: the same weights on every machine and run
HEAD_DROPOUT = 0.1   # dropout inside the emotion and domain heads (after pooling)
# Kept in full precision under nf4: the projection from the conv features into the transformer
# (the input interface, as embeddings are for LLMs) and WavLM's 8-output position gate.
FULL_PRECISION_MODULES = ["feature_projection", "gru_rel_pos_linear", "projector", "classifier"]

_STAMP = "ser_random_backbone.json"


def default_cache_dir() -> Path:
    """Where random presets are materialised when no cache_dir is given."""
    return Path(os.environ.get("SER_CACHE_DIR") or Path.home() / ".cache" / "ser") / "encoders-random"


def _classes(model_type: str) -> tuple[Any, Any]:
    import transformers
    if model_type not in FAMILIES:
        raise ValueError(f"encoder family {model_type!r} is not supported; supported config model_types: "
                         f"{sorted(FAMILIES)}")
    config_name, model_name = FAMILIES[model_type]
    return getattr(transformers, config_name), getattr(transformers, model_name)


def _preset_config(preset: str) -> Any:
    model_type, kwargs, _fe = preset_spec(preset)
    return _classes(model_type)[0](**kwargs)


def random_backbone_dir(preset: str, cache_dir: Optional[Path] = None) -> Path:
    """Materialise `random:<preset>` into <cache_dir>/<preset> (once) and return the directory.

    The weights come from a fixed seed inside fork_rng (the caller's RNG stream is untouched;
    every machine builds the same model). The directory is written under a temporary name and
    renamed, so a concurrent or interrupted build never leaves a half-written model behind.
    """
    model_type, kwargs, fe = preset_spec(preset)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / preset
    stamp = {"preset": preset, "seed": RANDOM_SEED, "family": model_type,
             "config": json.loads(json.dumps(kwargs)), "preprocessor": fe}
    if _stamp_matches(target, stamp):
        return target
    root.mkdir(parents=True, exist_ok=True)
    log.info("building random %s preset %r (seed %d) into %s (once)", model_type, preset, RANDOM_SEED, target)
    config_cls, model_cls = _classes(model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = model_cls(config_cls(**kwargs))
    tmp = Path(tempfile.mkdtemp(prefix=f".{preset}.", dir=root))
    try:
        model.save_pretrained(tmp)
        (tmp / "preprocessor_config.json").write_text(json.dumps(fe, indent=2))
        (tmp / _STAMP).write_text(json.dumps({**stamp, "torch": torch.__version__}, indent=2))
        apply_umask(tmp)
        if _stamp_matches(target, stamp):  # a concurrent run finished the same build first
            return target
        if target.exists():  # stale: built from another preset definition
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _stamp_matches(target, stamp):  # not a concurrent build of the same preset
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _stamp_matches(target: Path, stamp: dict[str, Any]) -> bool:
    try:
        saved = json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    weights = (target / "model.safetensors").is_file()
    return weights and all(saved.get(k) == v for k, v in stamp.items())


def _not_found_message(spec: str) -> str:
    from huggingface_hub import constants
    offline = constants.HF_HUB_OFFLINE
    return (f"encoder backbone {spec!r} is not a local directory and is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE})" + (" (HF_HUB_OFFLINE=1, so the hub was not asked)" if offline else "")
            + f". Pre-fetch it on a machine with internet: `hf download {spec}` (older huggingface_hub: "
            f"`huggingface-cli download {spec}`), copy the cache and point HF_HOME at it, then run with "
            f"HF_HUB_OFFLINE=1; or set the backbone to a local directory, or to 'random:<preset>' "
            f"({', '.join(sorted(PRESETS))}) for a randomly initialised model.")


def resolve_source(spec: str, cache_dir: Optional[Path] = None) -> tuple[str, bool]:
    """(what from_pretrained gets, whether it is a hub id); random presets are materialised."""
    if spec.startswith("random:"):
        return str(random_backbone_dir(spec.split(":", 1)[1], cache_dir)), False
    path = local_dir(spec)
    return (str(path), False) if path else (spec, True)


def encoder_config(spec: str, cache_dir: Optional[Path] = None) -> Any:
    """The backbone's transformers config, without loading (or, for random presets, building) weights."""
    if spec.startswith("random:"):
        return _preset_config(spec.split(":", 1)[1])
    source, from_hub = resolve_source(spec, cache_dir)
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        if not from_hub:
            raise
        raise BackboneNotFound(_not_found_message(spec)) from exc
    except ValueError as exc:  # huggingface_hub's HFValidationError: not a valid repo id; unknown model_type
        if type(exc).__name__ != "HFValidationError":
            raise
        raise BackboneNotFound(f"encoder backbone {spec!r} is neither an existing directory nor a "
                               f"valid hub id ({exc})") from exc
    _classes(config.model_type)  # a supported family
    return config


def _preprocessor(source: str, spec: str) -> dict[str, Any]:
    from transformers import AutoFeatureExtractor
    try:
        return AutoFeatureExtractor.from_pretrained(source).to_dict()
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"encoder backbone {spec!r} has no usable preprocessor_config.json (the feature-extractor config "
            f"that defines the input normalisation the model was trained with): {exc}") from None


def _bnb_config() -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ImportError("regime qlora needs bitsandbytes (pip install 'bitsandbytes>=0.48')") from exc
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_compute_dtype(), llm_int8_skip_modules=FULL_PRECISION_MODULES)


def _compute_dtype() -> torch.dtype:
    """dtype of the 4-bit matmuls: bf16 where CUDA supports it, else fp32 (CPU)."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def load_backbone(p: EncoderParams, cache_dir: Optional[Path] = None) -> tuple[nn.Module, dict[str, Any]]:
    """(the encoder module named by `p.backbone`, 4-bit under regime qlora; its feature-extractor config)."""
    config = encoder_config(p.backbone, cache_dir)  # fails fast (naming the model) before any weights
    source, hub = resolve_source(p.backbone, cache_dir)
    _config_cls, model_cls = _classes(config.model_type)
    if p.regime == "qlora":  # from a pre-quantized 4-bit copy: the fp32 weights are read once per machine
        # A random preset's copy sits beside the preset (cache_dir, e.g. a run's own folder: tiny, and
        # byte-identical across runs); a real backbone's copy in the shared cache ($SER_CACHE_DIR/quantized),
        # never inside each run's model folder (0.2 GB for XLSR-53).
        random_preset = p.backbone.startswith("random:") and cache_dir is not None
        model = load_4bit(model_cls, source, p.backbone, _bnb_config(),
                          Path(cache_dir) / "quantized" if random_preset else None,
                          getattr(config, "_commit_hash", None) if hub else None)
    else:
        model = model_cls.from_pretrained(source, dtype=torch.float32)
    if config.model_type == "whisper":  # the encoder of WhisperForAudioClassification
        encoder = model.encoder
        encoder.config._commit_hash = getattr(model.config, "_commit_hash", None)
        model = encoder
    if p.regime == "qlora":
        _release_checkpoint_mapping(model)
    return model, _preprocessor(source, p.backbone)


def _release_checkpoint_mapping(model: nn.Module) -> None:
    """Copy a 4-bit model's full-precision tensors out of the memory-mapped checkpoint file.

    transformers keeps the tensors it does not quantize (conv encoder, norms, biases, feature
    projection) as views into the safetensors memory map; while any view lives, every fp32 page
    read while quantizing stays resident (~1.2 GB for XLSR-53 beside ~0.2 GB of 4-bit weights;
    bench/qlora_memory.py). Copying those tensors (~50 MB) unmaps the file. (Loaded from the
    pre-quantized copy, ser.models.quant_cache, the packed 4-bit weights stay copy-on-write views
    of that file, whose pages are those weights; the fp32 file is never read.)
    """
    import bitsandbytes as bnb

    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if not isinstance(param, bnb.nn.Params4bit):
                    param.data = param.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.clone()


def _prepare_4bit(backbone: nn.Module) -> None:
    """Freeze a 4-bit backbone and cast its half-precision tensors to fp32 (what peft's
    prepare_model_for_kbit_training does, which needs the quantized *root* model; Whisper's
    encoder is a child of it). Checkpointing is `_enable_checkpointing`'s, without the input hook
    (speech encoders have no token embeddings)."""
    import bitsandbytes as bnb

    for module in backbone.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # On CPUs with AVX512-BF16, Linear4bit.forward in eval mode re-packs its weight in place
            # into a CPU-only layout that computes in bf16, crashes for in_features < blocksize (64)
            # and survives module.to("cuda"). Keep the one canonical layout.
            module.support_avx512bf16_for_cpu = False
    for param in backbone.parameters():
        param.requires_grad_(False)
        if param.dtype in (torch.float16, torch.bfloat16) and not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.float()


def _enable_checkpointing(backbone: nn.Module) -> None:
    # use_reentrant=False: under LoRA / QLoRA nothing before the transformer is trainable, so
    # reentrant checkpointing would silently drop the adapters' gradients inside checkpointed layers.
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _lora_config(lp: LoraParams, n_layers: int) -> Any:
    from peft import LoraConfig
    if lp.layers is not None:
        bad = [i for i in lp.layers if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"encoder.lora.layers: {bad} out of range; the backbone has "
                             f"{n_layers} encoder layers (0..{n_layers - 1})")
    return LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, bias="none",
                      target_modules=list(lp.target_modules),
                      layers_to_transform=list(lp.layers) if lp.layers is not None else None)


def _wavlm_module_attention(self: nn.Module, hidden_states: Tensor, attention_mask: Optional[Tensor],
                            gated_position_bias: Tensor) -> tuple[Tensor, None]:
    """WavLMAttention.torch_multi_head_self_attention through its q/k/v/out Linear modules."""
    bsz, tgt, embed = hidden_states.shape
    heads, dim = self.num_heads, self.head_dim

    def split(t: Tensor) -> Tensor:
        return t.view(bsz, tgt, heads, dim).transpose(1, 2)

    q, k, v = split(self.q_proj(hidden_states)), split(self.k_proj(hidden_states)), split(self.v_proj(hidden_states))
    bias = gated_position_bias.view(bsz, heads, tgt, tgt).to(q.dtype)
    if attention_mask is not None:
        bias = bias.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
    return self.out_proj(out.transpose(1, 2).reshape(bsz, tgt, embed)), None


def _patch_wavlm(backbone: nn.Module) -> None:
    for module in backbone.modules():
        if type(module).__name__ == "WavLMAttention":
            module.torch_multi_head_self_attention = types.MethodType(_wavlm_module_attention, module)


class Frontend:
    """The input transform of a checkpoint's feature extractor (preprocessor_config.json), in torch.

    Waveform families: zero-mean unit-variance over each clip's valid samples (padding back to 0)
    when `do_normalize`, as Wav2Vec2FeatureExtractor does; an attention mask when
    `return_attention_mask`. Whisper: WhisperFeatureExtractor's log-mels, padded to its 30 s window.
    """

    def __init__(self, preprocessor: dict[str, Any]) -> None:
        self.config = dict(preprocessor)
        self.whisper = preprocessor.get("feature_extractor_type") == "WhisperFeatureExtractor"
        self.sampling_rate = int(preprocessor.get("sampling_rate", 16000))
        self.normalize = bool(preprocessor.get("do_normalize", False))
        self.attention_mask = bool(preprocessor.get("return_attention_mask", False))
        self.extractor = None
        if self.whisper:
            from transformers import WhisperFeatureExtractor
            self.extractor = WhisperFeatureExtractor.from_dict(
                {k: v for k, v in preprocessor.items() if k != "feature_extractor_type"})
            self.max_samples = int(self.extractor.n_samples)

    def waveform(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        if self.normalize:
            n = lengths[:, None].to(x.dtype)
            mean = (x * valid).sum(1, keepdim=True) / n
            var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        return x, (valid.long() if self.attention_mask else None)

    def log_mels(self, x: Tensor, lengths: Tensor) -> Tensor:
        waves = [x[i, :int(n)].detach().float().cpu().numpy() for i, n in enumerate(lengths)]
        device = "cuda" if x.is_cuda else "cpu"
        feats = self.extractor(waves, sampling_rate=self.sampling_rate, return_tensors="pt", device=device,
                               padding="max_length")["input_features"]
        return feats.to(x.device)


class LayerPool(nn.Module):
    """Hidden states [S, ...] -> [...]: one state (last / index) or SUPERB's softmax-weighted sum."""

    def __init__(self, n_states: int, layers: str) -> None:
        super().__init__()
        self.n_states = n_states
        self.mode = layers if layers in ("last", "weighted") else "index"
        self.index = -1 if layers == "last" else (None if layers == "weighted" else int(layers))
        if self.index is not None and not -n_states <= self.index < n_states:
            raise ValueError(f"encoder.layers: {layers} out of range; the backbone has {n_states} hidden states "
                             f"(0 = CNN / embedding output .. {n_states - 1} = last layer)")
        self.weights = nn.Parameter(torch.zeros(n_states)) if self.mode == "weighted" else None

    def needs_all(self) -> bool:
        return self.mode != "last"

    def forward(self, states: Tensor) -> Tensor:
        if self.weights is None:
            return states[self.index] if states.shape[0] == self.n_states else states[-1]
        w = torch.softmax(self.weights.float(), 0).to(states.dtype)
        return torch.tensordot(w, states, dims=([0], [0]))

    def normalised_weights(self) -> Optional[list[float]]:
        """The softmax weights per hidden state (None unless weighted)."""
        return None if self.weights is None else torch.softmax(self.weights.detach().float(), 0).cpu().tolist()


class _EncoderHead(SERModel):
    """The head shared by EncoderSER and ProbeSER: layer pool, projection, classifier, domain head."""

    def _build_head(self, p: EncoderParams, n_states: int, hidden: int, n_classes: int,
                    with_domain_head: bool) -> None:
        self.encoder_params = p
        self.n_states, self.hidden_size = n_states, hidden
        self.layer_pool = LayerPool(n_states, p.layers)
        self.projection = nn.Linear(hidden, p.projection) if p.projection is not None else nn.Identity()
        self.feature_dim = p.projection or hidden
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, p.head_hidden), nn.ReLU(), nn.Dropout(HEAD_DROPOUT),
            nn.Linear(p.head_hidden, n_classes))
        if with_domain_head:
            self.domain_head = DomainHead(self.feature_dim, p.domain_hidden, 2, HEAD_DROPOUT)

    def head_modules(self) -> list[nn.Module]:
        return [self.layer_pool, self.projection, *super().head_modules()]

    def layer_weights(self) -> Optional[list[float]]:
        return self.layer_pool.normalised_weights()


class ProbeSER(_EncoderHead):
    """The frozen-encoder probe on cached embeddings: x [B, S, D], each clip's mean over valid frames
    of every hidden state (the `embeddings` store). Never runs the encoder."""

    def __init__(self, p: EncoderParams, n_classes: int, *, with_domain_head: bool = False,
                 cache_dir: Optional[Path] = None) -> None:
        super().__init__()
        config = encoder_config(p.backbone, cache_dir)
        self._build_head(p, _n_states(config), _hidden(config), n_classes, with_domain_head)

    def embed(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.n_states, self.hidden_size):
            raise ValueError(f"the probe expects cached embeddings [B, {self.n_states}, {self.hidden_size}] "
                             f"(hidden states x hidden size of {self.encoder_params.backbone}), got {tuple(x.shape)}; "
                             "re-run the precompute-embeddings stage")
        states = x.float().transpose(0, 1)  # [S, B, D]
        return self.projection(self.layer_pool(states))


def _n_states(config: Any) -> int:
    return int(getattr(config, "encoder_layers", None) or config.num_hidden_layers) + 1


def _hidden(config: Any) -> int:
    return int(getattr(config, "d_model", None) or config.hidden_size)


class EncoderSER(_EncoderHead):
    """A foundation-model encoder + head on waveforms. x [B, T] float at 16 kHz, zero-padded;
    lengths [B] valid samples. Clips longer than `chunk_seconds` are encoded in chunks."""

    def __init__(self, p: EncoderParams, n_classes: int, *, with_domain_head: bool = False,
                 cache_dir: Optional[Path] = None, preprocessor: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.spec = p.backbone
        self.regime = p.regime
        self.quantized = p.regime == "qlora"
        self.uses_lora = p.lora is not None
        self.partial_state = p.regime != "full"
        backbone, own_preprocessor = load_backbone(p, cache_dir)
        if preprocessor is not None and preprocessor != own_preprocessor:
            log.warning("%s: its preprocessor config differs from the checkpoint's; using the checkpoint's "
                        "(what training fed): %s", self.spec, preprocessor)
        self.preprocessor = preprocessor if preprocessor is not None else own_preprocessor
        self.frontend = Frontend(self.preprocessor)
        config = backbone.config
        self.family = config.model_type
        self.compute_dtype = str(_compute_dtype() if self.quantized else torch.float32).replace("torch.", "")
        self.revision = getattr(config, "_commit_hash", None)  # hub snapshot, for the record
        if self.family == "wavlm":
            _patch_wavlm(backbone)
        if self.quantized:
            _prepare_4bit(backbone)
        if p.gradient_checkpointing:
            _enable_checkpointing(backbone)
        if self.partial_state:
            backbone.requires_grad_(False)
        if self.partial_state or p.freeze_feature_encoder:
            self._freeze_front_end(backbone)
        if p.lora is not None:
            from peft import get_peft_model
            backbone = get_peft_model(backbone, _lora_config(p.lora, _n_states(config) - 1))
        self.backbone = backbone
        chunk = int(round(p.chunk_seconds * self.frontend.sampling_rate))
        if self.frontend.whisper and chunk > self.frontend.max_samples:
            raise ValueError(f"encoder.chunk_seconds {p.chunk_seconds} exceeds Whisper's input window "
                             f"({self.frontend.max_samples / self.frontend.sampling_rate:.0f} s)")
        self.chunk_samples = chunk
        self._padding_invariant: Optional[bool] = None
        self._build_head(p, _n_states(config), _hidden(config), n_classes, with_domain_head)

    def _freeze_front_end(self, backbone: nn.Module) -> None:
        if self.family == "whisper":
            for module in (backbone.conv1, backbone.conv2):
                module.requires_grad_(False)
        else:
            # Not just requires_grad: the feature encoder marks its own output as requiring grad
            # unless _freeze_parameters() ran, which would backpropagate through the frozen convs.
            backbone.feature_extractor._freeze_parameters()

    def train(self, mode: bool = True) -> "EncoderSER":
        super().train(mode)
        if self.regime == "frozen":  # a probe: no dropout, masking or layerdrop inside the encoder
            self.backbone.eval()
        return self

    @property
    def base_model(self) -> nn.Module:
        """The underlying transformers model (inside the peft wrapper when LoRA is on)."""
        return self.backbone.get_base_model() if self.uses_lora else self.backbone

    def describe_backbone(self) -> dict[str, Any]:
        """What checkpoints record about the backbone (the preprocessor config is applied on reload)."""
        return {"spec": self.spec, "family": self.family, "regime": self.regime, "quantized": self.quantized,
                "lora": self.uses_lora, "compute_dtype": self.compute_dtype, "revision": self.revision,
                "hidden_size": self.hidden_size, "hidden_states": self.n_states,
                "preprocessor": self.preprocessor}

    def _frames(self, lengths: Tensor, total: int) -> Tensor:
        if self.frontend.whisper:  # 10 ms mel frames, then conv2's stride 2
            frames = (lengths // int(self.frontend.extractor.hop_length) + 1) // 2
        else:
            frames = self.base_model._get_feat_extract_output_lengths(lengths)
        return frames.clamp(1, total)

    def hidden_states(self, x: Tensor, lengths: Tensor, all_states: bool = True) -> tuple[Tensor, Tensor]:
        """(states [S, B, F, D] (S = 1, the last, unless all_states), valid frames [B]) of clips no longer
        than chunk_samples."""
        grad = torch.enable_grad() if self.regime != "frozen" else torch.no_grad()
        with grad:
            if self.frontend.whisper:
                out = self.backbone(input_features=self.frontend.log_mels(x, lengths), output_hidden_states=all_states)
            else:
                values, mask = self.frontend.waveform(x, lengths)
                out = self.backbone(input_values=values, attention_mask=mask, output_hidden_states=all_states)
        states = torch.stack(out.hidden_states) if all_states else out.last_hidden_state[None]
        return states, self._frames(lengths, states.shape[2])

    def _chunked(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split clips longer than chunk_samples: (chunks [C, T'], their lengths, owning clip [C])."""
        if int(lengths.max()) <= self.chunk_samples:
            return x[:, :int(lengths.max())], lengths, torch.arange(len(lengths), device=x.device)
        pieces, piece_len, owner = [], [], []
        for i, n in enumerate(lengths.tolist()):
            for start in range(0, n, self.chunk_samples):
                size = min(self.chunk_samples, n - start)
                pieces.append(x[i, start:start + size])
                piece_len.append(size)
                owner.append(i)
        width = max(piece_len)
        chunks = x.new_zeros(len(pieces), width)
        for row, piece in enumerate(pieces):
            chunks[row, :piece.shape[0]] = piece
        as_long = dict(dtype=torch.long, device=x.device)
        return chunks, torch.tensor(piece_len, **as_long), torch.tensor(owner, **as_long)

    def pooled(self, x: Tensor, lengths: Optional[Tensor], per_frame: Callable[[Tensor], Tensor],
               all_states: bool = True) -> Tensor:
        """Mean over every valid frame of each clip (all its chunks) of per_frame(states) [B', F, ...]."""
        if x.dim() != 2:
            raise ValueError(f"the encoder expects waveforms [B, T], got {tuple(x.shape)}")
        batch, total = x.shape
        x = x.float()
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long, device=x.device)
        lengths = lengths.to(device=x.device, dtype=torch.long).clamp(1, total)
        chunks, chunk_lengths, owner = self._chunked(x, lengths)
        if self.padding_invariant() or bool((chunk_lengths == chunk_lengths[0]).all()):
            groups = [torch.arange(len(chunk_lengths), device=x.device)]
        else:  # each length on its own: a clip's output must not depend on its batch mates' lengths
            groups = [torch.nonzero(chunk_lengths == n).flatten() for n in torch.unique(chunk_lengths)]
        sums, frame_counts, order = [], [], []
        for group in groups:
            group_lengths = chunk_lengths[group]
            states, frames = self.hidden_states(chunks[group, :int(group_lengths.max())], group_lengths, all_states)
            feats = per_frame(states)
            keep = torch.arange(feats.shape[1], device=x.device)[None, :] < frames[:, None]
            sums.append((feats * keep.view(*keep.shape, *([1] * (feats.dim() - 2))).to(feats.dtype)).sum(1))
            frame_counts.append(frames)
            order.append(owner[group])
        summed, frames, owners = torch.cat(sums), torch.cat(frame_counts), torch.cat(order)
        out = summed.new_zeros((batch, *summed.shape[1:])).index_add_(0, owners, summed)
        count = frames.new_zeros(batch).index_add_(0, owners, frames).to(out.dtype)
        return out / count.view(-1, *([1] * (out.dim() - 1)))

    def padding_invariant(self) -> bool:
        """Whether a clip's hidden states ignore zero padding after it (measured once on a random clip).

        Not so for group-norm feature encoders (wav2vec2-base, HuBERT-base, WavLM-base+: the first conv
        layer is normalised over time, padding included), models without an attention mask, and stacked
        positional convolutions (data2vec-audio). For those, `pooled` encodes each clip length on its own,
        so training, evaluation, the cached embeddings and `ser predict` all see a clip the same way,
        whatever it is batched with. Whisper pads every input to its 30 s window anyway.
        """
        if self._padding_invariant is None:
            if self.frontend.whisper:
                self._padding_invariant = True
            else:
                device = next(self.backbone.parameters()).device
                x = torch.randn(2, 9600, generator=torch.Generator().manual_seed(0)).to(device)
                x[1, 4800:] = 0
                was_training = self.backbone.training
                self.backbone.eval()
                try:
                    with torch.no_grad():
                        full, frames = self.hidden_states(x, torch.tensor([9600, 4800], device=device))
                        alone, _ = self.hidden_states(x[1:, :4800], torch.tensor([4800], device=device))
                finally:
                    self.backbone.train(was_training)
                n = int(frames[1])
                self._padding_invariant = bool(torch.allclose(full[:, 1, :n].float(), alone[:, 0, :n].float(),
                                                              rtol=1e-3, atol=1e-4))
            log.info("%s: hidden states %s zero padding%s", self.spec,
                     "ignore" if self._padding_invariant else "depend on",
                     "" if self._padding_invariant else "; clips of different lengths are encoded separately")
        return self._padding_invariant

    def embed(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        return self.pooled(x, lengths, lambda states: self.projection(self.layer_pool(states)),
                           all_states=self.layer_pool.needs_all())

    @torch.no_grad()
    def layer_means(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """[B, S, D]: each clip's mean over valid frames of every hidden state (the embeddings store)."""
        return self.pooled(x, lengths, lambda states: states.permute(1, 2, 0, 3).float())
