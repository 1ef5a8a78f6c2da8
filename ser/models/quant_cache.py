"""A cache of pre-quantized 4-bit (bitsandbytes) copies of encoder backbones.

Quantizing on load reads every fp32 weight of the checkpoint (through a memory map) and
packs it tensor by tensor, which makes loading, not training, the peak of a QLoRA process
(bench/qlora_memory.py). `load_4bit` does that once per backbone and quantization setting:
it saves the 4-bit model with save_pretrained into <cache_dir>/<name>-<key hash>/ and every
later load reads the packed weights (uint8 NF4 codes + quantization state) from there,
never the fp32 weights.

The key names everything the packed weights depend on, so a stale copy is never used:
  - the source: a hub id with its snapshot revision (config._commit_hash); a random preset's
    stamp (preset, config, seed, torch version: what its weights are a function of); or for any
    other local directory its path and a fingerprint of its files (relative names, sizes, mtimes);
  - the model class, the compute dtype and every quantization setting
    (BitsAndBytesConfig.to_dict());
  - the bitsandbytes, transformers and torch versions.
It is stored in a stamp file inside the copy and compared on every hit. Copies are written
under a temporary name and renamed, so a concurrent or interrupted build never leaves a
half-written copy behind. Copies of other keys are left alone (another process may use them);
delete <cache_dir> to reclaim the space.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ser.fsutil import apply_umask

__all__ = ["load_4bit", "cache_key", "cache_entry", "default_cache_dir", "count_4bit_layers", "STAMP"]

log = logging.getLogger(__name__)

STAMP = "ser_quantized.json"
RANDOM_STAMP = "ser_random_backbone.json"  # ser.models.encoders._STAMP (not imported: encoders imports us)
FORMAT = 1  # bump when the layout of a cached copy changes


def default_cache_dir() -> Path:
    """$SER_CACHE_DIR/quantized, or ~/.cache/ser/quantized."""
    return Path(os.environ.get("SER_CACHE_DIR") or Path.home() / ".cache" / "ser") / "quantized"


def _fingerprint(directory: Path) -> list[list[Any]]:
    """[relative name, size, mtime_ns] of every file under `directory` (hidden entries skipped)."""
    rows = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        st = path.stat()
        rows.append([rel.as_posix(), st.st_size, st.st_mtime_ns])
    return rows


def _versions() -> dict[str, str]:
    import bitsandbytes
    import transformers
    return {"bitsandbytes": bitsandbytes.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}


def cache_key(model_cls: type, source: str, bnb_config: Any, revision: Optional[str] = None) -> Optional[dict[str, Any]]:
    """What a 4-bit copy of `source` depends on (JSON-able), or None when it cannot be pinned
    (a hub id without a known revision)."""
    path = Path(source)
    stamp = path / RANDOM_STAMP
    if path.is_dir() and stamp.is_file():
        # A random preset (ser.models.encoders.random_backbone_dir): its weights are a function of its
        # stamp (preset, config, seed, torch version), wherever and whenever it was materialised (e.g.
        # inside each run's model directory), so one copy serves every run.
        origin: dict[str, Any] = {"random_preset": json.loads(stamp.read_text())}
    elif path.is_dir():
        origin = {"directory": str(path.resolve()), "files": _fingerprint(path)}
    elif revision:
        origin = {"hub_id": source, "revision": revision}
    else:
        return None
    quant = json.loads(json.dumps(bnb_config.to_dict(), sort_keys=True, default=str))
    return {"format": FORMAT, "model_class": model_cls.__name__, "source": origin,
            "compute_dtype": str(bnb_config.bnb_4bit_compute_dtype).replace("torch.", ""),
            "quantization": quant, "versions": _versions()}


def cache_entry(root: Path, spec: str, key: dict[str, Any]) -> Path:
    """The directory of the copy with `key`: <root>/<readable name>-<hash of the key>."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("._")[:80] or "backbone"
    return root / f"{name}-{digest}"


def _is_complete(target: Path, key: dict[str, Any]) -> bool:
    try:
        saved = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return False
    weights = (target / "model.safetensors").is_file() or (target / "model.safetensors.index.json").is_file()
    return weights and saved.get("key") == key


def count_4bit_layers(model: nn.Module) -> int:
    """Number of bnb Linear4bit layers whose weight is packed (Params4bit, uint8, with a quant_state).

    Raises ValueError when a Linear4bit holds anything else (e.g. unquantized weights)."""
    import bitsandbytes as bnb

    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        w = module.weight
        if not (isinstance(w, bnb.nn.Params4bit) and w.dtype == torch.uint8 and w.quant_state is not None):
            raise ValueError(f"{name}: Linear4bit without packed 4-bit weights ({type(w).__name__}, {w.dtype})")
        count += 1
    return count


def _quantize(model_cls: Any, source: str, bnb_config: Any, revision: Optional[str]) -> nn.Module:
    """4-bit model quantized on load from the full-precision source (reads every fp32 weight)."""
    kwargs: dict[str, Any] = {"revision": revision} if revision and not Path(source).is_dir() else {}
    return model_cls.from_pretrained(source, dtype=torch.float32, quantization_config=bnb_config,
                                     device_map={"": "cpu"}, **kwargs)


def _load_copy(model_cls: Any, target: Path) -> nn.Module:
    """The pre-quantized copy (its config.json carries the quantization config)."""
    model = model_cls.from_pretrained(target, dtype=torch.float32, device_map={"": "cpu"})
    if count_4bit_layers(model) == 0:
        raise ValueError(f"{target}: no 4-bit layers in the cached copy")
    return model


def _save(model: nn.Module, root: Path, target: Path, key: dict[str, Any], spec: str) -> None:
    """save_pretrained into a temporary directory in `root`, then rename it to `target`."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        model.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps({"spec": spec, "key": key}, indent=2))
        apply_umask(tmp)
        if _is_complete(target, key):  # a concurrent run saved the same copy first
            return
        if target.exists():  # unreadable or half-written by an older version
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, key):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_4bit(model_cls: Any, source: str, spec: str, bnb_config: Any, cache_dir: Optional[Path] = None,
              revision: Optional[str] = None) -> nn.Module:
    """`model_cls` from `source` in 4-bit on the CPU, through the cache of pre-quantized copies.

    source: what from_pretrained gets (a directory or a hub id); spec: the backbone as the user
    named it (for names and messages); revision: the hub snapshot (config._commit_hash) of a hub
    id; cache_dir: where copies live (default: default_cache_dir()). A hit reads only the 4-bit
    copy; a miss quantizes from the source once, saves the copy and loads it back, so every use
    gets the same model. Where no copy can be pinned or written, the model is quantized on load.
    The returned config keeps the source's name and revision.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(model_cls, source, bnb_config, revision)
    model: Optional[nn.Module] = None
    if key is None:
        log.warning("%s: hub revision unknown, so no pre-quantized copy can be pinned; quantizing on load", spec)
        model = _quantize(model_cls, source, bnb_config, revision)
    else:
        target = cache_entry(root, spec, key)
        if _is_complete(target, key):
            try:
                model = _load_copy(model_cls, target)
                log.info("%s: loaded the pre-quantized 4-bit copy %s", spec, target)
            except Exception as exc:  # noqa: BLE001  (a damaged copy: safetensors, json, 4-bit check)
                log.warning("%s: the cached 4-bit copy %s is unusable (%s); quantizing again", spec, target, exc)
                shutil.rmtree(target, ignore_errors=True)
        if model is None:
            log.info("%s: quantizing to 4-bit from the full-precision weights (once; cached in %s)", spec, target)
            fresh = _quantize(model_cls, source, bnb_config, revision)
            try:
                _save(fresh, root, target, key, spec)
            except OSError as exc:
                log.warning("%s: cannot save the 4-bit copy into %s (%s); using the model quantized on load",
                            spec, root, exc)
                model = fresh
            else:
                del fresh
                gc.collect()  # drop the quantizing model (and its views of the fp32 file) first
                model = _load_copy(model_cls, target)
    model.config._commit_hash = revision
    model.config.name_or_path = source
    return model
