"""wav2vec2 encoder with emotion / domain heads: full fine-tuning, LoRA and QLoRA.

Backbone spec (`models.<name>.wav2vec2.backbone`):
  random:<preset>   a randomly initialised model of a known architecture
                    (tiny, base, large-xlsr), built deterministically and saved
                    with save_pretrained into <cache_dir>/<preset>, so it loads
                    through the same `from_pretrained` path as a real checkpoint
                    (which 4-bit loading needs);
  <hub id>          e.g. facebook/wav2vec2-base, from the Hugging Face cache/hub;
  <directory>       a local save_pretrained / snapshot directory.

Variants:
  full fine-tuning  quantize: none, no lora (optionally the conv feature encoder frozen);
  LoRA              quantize: none + lora: the backbone frozen, adapters on the attention projections;
  QLoRA             quantize: nf4 + lora: the backbone's Linear layers stored as 4-bit NF4
                    (bitsandbytes Linear4bit, frozen), LoRA adapters and heads in full precision.

Device rules for 4-bit models (bitsandbytes 0.50): the backbone is quantized at
load time on the CPU (device_map {"": "cpu"}) so that building is
machine-independent; `module.to(device)` then moves the packed uint8 weights
together with their quant_state (Params4bit.to). Never cast a 4-bit model's
dtype (`model.half()` / `.to(torch.bfloat16)`): Params4bit.to(dtype=...) would
reinterpret the packed bytes as numbers; use autocast (accelerate mixed
precision) instead.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from ser.errors import SerError
from ser.config import LoraParams, Wav2Vec2Params
from ser.models import SERModel
from ser.models.grl import DomainHead

__all__ = ["Wav2Vec2SER", "PRESETS", "BackboneNotFound", "random_backbone_dir", "load_backbone",
           "default_cache_dir"]

log = logging.getLogger(__name__)

RANDOM_SEED = 0      # seed of the random presets: the same weights on every machine and run
HEAD_DROPOUT = 0.1   # dropout inside the emotion and domain heads
# Kept in full precision under nf4: the projection from the conv features into
# the transformer is the model's input interface (as embeddings are for LLMs,
# which bitsandbytes never quantizes). The heads live outside the backbone and
# are never quantized.
FULL_PRECISION_MODULES = ["feature_projection"]

_REGULARISATION = dict(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                       feat_proj_dropout=0.1, mask_time_prob=0.05)
PRESETS: dict[str, dict[str, Any]] = {
    # Architecturally a real wav2vec2 (conv feature encoder, positional conv,
    # pre-norm transformer, large-xlsr's layer-norm layout) but ~40k parameters.
    # Conv strides (5, 8, 8) give the real models' total stride 320 (50 frames/s),
    # so sequence lengths, masks and pooling behave as with the real backbones.
    # layerdrop 0: with 2 layers, dropping one would change the model, not regularise it.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), conv_bias=True,
                 feat_extract_norm="layer", do_stable_layer_norm=True,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0,
                 **_REGULARISATION),
    # facebook/wav2vec2-base (94.4M): group-norm feature encoder, post-norm transformer.
    # The architecture values are the hub config's; layerdrop is fairseq's base setting.
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                 conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
                 num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, layerdrop=0.05,
                 **_REGULARISATION),
    # facebook/wav2vec2-large-xlsr-53 (315.4M): layer-norm feature encoder, pre-norm (stable) transformer
    "large-xlsr": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                       conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
                       num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, layerdrop=0.1,
                       **_REGULARISATION),
}
_STAMP = "ser_random_backbone.json"


class BackboneNotFound(OSError, SerError):
    """A pretrained backbone is neither a local directory nor in the Hugging Face cache."""


def default_cache_dir() -> Path:
    """Where random presets are materialised when no cache_dir is given."""
    return Path(os.environ.get("SER_CACHE_DIR") or Path.home() / ".cache" / "ser") / "wav2vec2-random"


def _preset_config(preset: str) -> Wav2Vec2Config:
    if preset not in PRESETS:
        raise KeyError(f"unknown random wav2vec2 preset {preset!r}; known: {sorted(PRESETS)} "
                       f"(backbone: 'random:<preset>')")
    return Wav2Vec2Config(**PRESETS[preset])


def random_backbone_dir(preset: str, cache_dir: Optional[Path] = None) -> Path:
    """Materialise `random:<preset>` into <cache_dir>/<preset> (once) and return the directory.

    The weights come from a fixed seed inside fork_rng, so the caller's RNG
    stream is untouched and every machine builds the same model. The directory
    is written under a temporary name and renamed, so a concurrent or
    interrupted build never leaves a half-written model behind.
    """
    config = _preset_config(preset)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / preset
    stamp = {"preset": preset, "seed": RANDOM_SEED, "config": json.loads(json.dumps(PRESETS[preset]))}
    if _stamp_matches(target, stamp):
        return target
    root.mkdir(parents=True, exist_ok=True)
    log.info("building random wav2vec2 preset %r (seed %d) into %s (once)", preset, RANDOM_SEED, target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = Wav2Vec2Model(config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{preset}.", dir=root))
    try:
        model.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps({**stamp, "torch": torch.__version__}, indent=2))
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
    return (f"wav2vec2 backbone {spec!r} is not a local directory and is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE})" + (" (HF_HUB_OFFLINE=1, so the hub was not asked)" if offline else "")
            + f". Pre-fetch it on a machine with internet: `hf download {spec}` (older huggingface_hub: "
            f"`huggingface-cli download {spec}`), copy the cache and point HF_HOME at it, then run with "
            f"HF_HUB_OFFLINE=1; or set the backbone to a local directory, or to 'random:<preset>' "
            f"({', '.join(sorted(PRESETS))}) for a randomly initialised model.")


def _bnb_config() -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ImportError("quantize: nf4 needs bitsandbytes (pip install 'bitsandbytes>=0.48')") from exc
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_compute_dtype(), llm_int8_skip_modules=FULL_PRECISION_MODULES)


def _compute_dtype() -> torch.dtype:
    """dtype of the 4-bit matmuls: bf16 where CUDA supports it, else fp32 (CPU)."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def load_backbone(p: Wav2Vec2Params, cache_dir: Optional[Path] = None) -> Wav2Vec2Model:
    """Load the backbone named by `p.backbone`, 4-bit quantized when `p.quantize == "nf4"`."""
    spec = p.backbone
    from_hub = False
    if spec.startswith("random:"):
        source = str(random_backbone_dir(spec.split(":", 1)[1], cache_dir))
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"wav2vec2 backbone directory {path} has no config.json; "
                                        "point the backbone at a save_pretrained / snapshot directory")
            source = str(path)
        elif spec.startswith(("/", ".", "~")):
            raise FileNotFoundError(f"wav2vec2 backbone directory {spec} does not exist")
        else:
            source, from_hub = spec, True
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if p.quantize == "nf4":
        kwargs.update(quantization_config=_bnb_config(), device_map={"": "cpu"})
    if from_hub:  # resolve the config first: a missing model fails before any weights are fetched
        try:
            Wav2Vec2Config.from_pretrained(source)
        except OSError as exc:
            raise BackboneNotFound(_not_found_message(spec)) from exc
        except ValueError as exc:  # huggingface_hub's HFValidationError: not a valid repo id
            if type(exc).__name__ != "HFValidationError":
                raise
            raise BackboneNotFound(f"wav2vec2 backbone {spec!r} is neither an existing directory nor a "
                                   f"valid hub id ({exc})") from exc
    model = Wav2Vec2Model.from_pretrained(source, **kwargs)
    if p.quantize == "nf4":
        _release_checkpoint_mapping(model)
    return model


def _release_checkpoint_mapping(model: nn.Module) -> None:
    """Copy a 4-bit model's full-precision tensors out of the memory-mapped checkpoint file.

    transformers reads safetensors through one memory map and keeps the tensors
    it does not quantize (conv encoder, norms, biases, feature projection) as
    views into it. While any view lives, the whole mapping stays in the
    process's resident set, including every fp32 page read while quantizing:
    ~1.2 GB for XLSR-53 beside ~0.2 GB of 4-bit weights, which made a QLoRA
    training step peak at ~40% of a full fine-tune's memory instead of ~20%
    (bench/qlora_memory.py). Copying those tensors (~50 MB) unmaps the file.
    """
    import bitsandbytes as bnb

    with torch.no_grad():
        for module in model.modules():
            for param in module.parameters(recurse=False):
                if not isinstance(param, bnb.nn.Params4bit):
                    param.data = param.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.clone()


def _prepare_4bit(backbone: Wav2Vec2Model) -> None:
    """Make a 4-bit backbone trainable through adapters.

    peft's prepare_model_for_kbit_training freezes every base parameter and casts
    fp16/bf16 non-quantized parameters (norms, biases, conv) to fp32; it is used
    as is. Its other half, use_gradient_checkpointing=True, suits causal LMs only:
    it calls enable_input_require_grads(), which hooks the *token embeddings* so
    that reentrant checkpointing sees an input requiring grad - wav2vec2 has no
    input embeddings. Checkpointing is instead enabled (or not) by
    `_enable_checkpointing` with use_reentrant=False, which needs no such hook.
    """
    import bitsandbytes as bnb
    from peft import prepare_model_for_kbit_training

    for module in backbone.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # On CPUs with AVX512-BF16, Linear4bit.forward in eval mode re-packs its
            # weight in place into a CPU-only layout (quant_state.packing_format_for_cpu)
            # that computes in bf16, crashes for in_features < blocksize (64), is not
            # undone by module.to("cuda"), and is then also used in training mode.
            # Keep the one canonical layout.
            module.support_avx512bf16_for_cpu = False
    prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)


def _enable_checkpointing(backbone: Wav2Vec2Model) -> None:
    # use_reentrant=False: under LoRA / QLoRA nothing before the transformer is
    # trainable, so its input does not require grad, and reentrant checkpointing
    # would silently drop the gradients of the adapters inside the checkpointed
    # layers (tests/test_models.py::test_gradient_checkpointing_keeps_lora_gradients).
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
            raise ValueError(f"wav2vec2.lora.layers: {bad} out of range; the backbone has "
                             f"{n_layers} encoder layers (0..{n_layers - 1})")
    return LoraConfig(r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, bias="none",
                      target_modules=list(lp.target_modules),
                      layers_to_transform=list(lp.layers) if lp.layers is not None else None)


class Wav2Vec2SER(SERModel):
    """wav2vec2 + masked mean pooling + emotion head (+ domain head).

    Input: x [B, T] float waveforms at 16 kHz, zero-padded; lengths [B] valid samples.
    """

    def __init__(self, p: Wav2Vec2Params, n_classes: int, *, with_domain_head: bool = False,
                 cache_dir: Optional[Path] = None) -> None:
        super().__init__()
        self.spec = p.backbone
        self.quantized = p.quantize == "nf4"
        self.uses_lora = p.lora is not None
        self.partial_state = self.quantized or self.uses_lora
        backbone = load_backbone(p, cache_dir)
        config = backbone.config
        self.compute_dtype = str(_compute_dtype() if self.quantized else torch.float32).replace("torch.", "")
        self.revision = getattr(config, "_commit_hash", None)  # hub snapshot, for the record
        if self.quantized:
            _prepare_4bit(backbone)
        if p.gradient_checkpointing:
            _enable_checkpointing(backbone)
        if self.partial_state:
            backbone.requires_grad_(False)
        if self.partial_state or p.freeze_feature_encoder:
            # Not just requires_grad: the feature encoder marks its own output as
            # requiring grad unless _freeze_parameters() ran, which would make
            # autograd backpropagate through the whole frozen conv stack.
            backbone.freeze_feature_encoder()
        if p.lora is not None:
            from peft import get_peft_model
            backbone = get_peft_model(backbone, _lora_config(p.lora, config.num_hidden_layers))
        self.backbone = backbone
        # Group-norm feature encoders (wav2vec2-base) were trained without an
        # attention mask: their padding is plain zeros (see Wav2Vec2FeatureExtractor).
        self.use_attention_mask = config.feat_extract_norm == "layer"
        self.feature_dim = config.hidden_size
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, p.head_hidden), nn.ReLU(), nn.Dropout(HEAD_DROPOUT),
            nn.Linear(p.head_hidden, n_classes))
        if with_domain_head:
            self.domain_head = DomainHead(self.feature_dim, p.domain_hidden, 2, HEAD_DROPOUT)

    @property
    def wav2vec2(self) -> Wav2Vec2Model:
        """The underlying transformers model (inside the peft wrapper when LoRA is on)."""
        return self.backbone.get_base_model() if self.uses_lora else self.backbone

    def describe_backbone(self) -> dict[str, Any]:
        """What checkpoints record about the backbone."""
        return {"spec": self.spec, "quantized": self.quantized, "lora": self.uses_lora,
                "compute_dtype": self.compute_dtype, "revision": self.revision,
                "hidden_size": self.feature_dim}

    def embed(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"wav2vec2 expects waveforms [B, T], got {tuple(x.shape)}")
        batch, total = x.shape
        x = x.float()
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.long, device=x.device)
        lengths = lengths.to(device=x.device, dtype=torch.long).clamp(1, total)
        valid = torch.arange(total, device=x.device)[None, :] < lengths[:, None]
        # Zero mean / unit variance over each clip's valid samples, padding back
        # to 0: what Wav2Vec2FeatureExtractor(do_normalize=True) does.
        n = lengths[:, None].to(x.dtype)
        mean = (x * valid).sum(1, keepdim=True) / n
        var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / n
        x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        mask = valid.long() if self.use_attention_mask else None
        hidden = self.backbone(input_values=x, attention_mask=mask).last_hidden_state   # [B, F, D]
        frames = self.wav2vec2._get_feat_extract_output_lengths(lengths).clamp(1, hidden.shape[1])
        keep = (torch.arange(hidden.shape[1], device=x.device)[None, :] < frames[:, None]).to(hidden.dtype)
        return (hidden * keep.unsqueeze(-1)).sum(1) / frames[:, None].to(hidden.dtype)
