"""Checkpoints: weights as safetensors, everything else as JSON; never pickle.

A checkpoint directory holds

    model.safetensors   full-precision models: the whole state_dict;
                        LoRA / 4-bit models: only the trainable tensors (adapters,
                        heads) and the heads' buffers - the frozen base is rebuilt
                        from the backbone spec (re-quantized the same way);
    meta.json           the caller's meta (labels, feature params, ...), the
                        model params, the build arguments, the backbone spec,
                        parameter counts, the weights' sha256 and, for partial
                        states, a fingerprint of the frozen base.

`load_checkpoint` rebuilds the model from meta.json alone (ModelParams parsed
as strictly as params.yaml) and refuses weights that do not belong to it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ser.config import ModelParams, _build
from ser.errors import CheckpointError
from ser.fsutil import apply_umask
from ser.models import SERModel, build_model
from ser.models.base import META, WEIGHTS, read_meta

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "FORMAT", "BACKBONE_CACHE"]

log = logging.getLogger(__name__)

FORMAT = "ser-checkpoint/1"
# Random encoder presets are materialised inside the model directory, so that
# models/<name> alone is enough to rebuild the model (evaluation and `ser predict` do).
BACKBONE_CACHE = "backbone"
_RESERVED = ("format", "model_params", "build", "backbone", "parameters", "state", "weights_sha256",
             "base_fingerprint")


def _state_to_save(model: SERModel) -> dict[str, Tensor]:
    if not model.partial_state:
        return model.state_dict()
    # The frozen base is reproducible from the backbone spec; what training
    # changed is exactly the trainable parameters (+ buffers of the heads).
    state = {name: p for name, p in model.named_parameters() if p.requires_grad}
    state.update({name: b for name, b in model.named_buffers() if not name.startswith("backbone.")})
    return state


def _base_fingerprint(model: SERModel, saved: set[str]) -> Optional[str]:
    """sha256 of the frozen full-precision tensors that the checkpoint does not store.

    It detects a LoRA checkpoint being applied to a different base (a new hub
    revision, another local directory). 4-bit layers (weights and biases) are
    left out: their packed bytes depend on where they were quantized, and
    bitsandbytes casts their biases to the compute dtype in place on first use.
    """
    if not model.partial_state:
        return None
    skip: set[int] = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor) and getattr(weight, "quant_state", None) is not None:
            skip.update(id(p) for p in module.parameters(recurse=False))
            skip.add(id(weight))
    digest = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        if name in saved or id(t) in skip:
            continue
        data = t.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: SERModel, out_dir: Path, meta: dict[str, Any]) -> None:
    """Write `out_dir`/model.safetensors and `out_dir`/meta.json.

    `meta` must carry "labels" (class names in logit order) and is stored as
    given (feature params, study, ...). Both files are written into a temporary
    sibling directory first; a new `out_dir` appears by one rename. An existing
    `out_dir` (it may hold other files, e.g. training logs) gets the two files
    by rename, meta.json last, and the weights' sha256 in meta.json lets
    `load_checkpoint` detect a pair torn by a crash in between.
    """
    out_dir = Path(out_dir)
    if model.params is None:
        raise CheckpointError("save_checkpoint: the model was not built by ser.models.build_model "
                              "(it does not know its ModelParams)")
    n_classes = model.build_kwargs["n_classes"]
    labels = meta.get("labels")
    if labels is None or len(labels) != n_classes:
        raise CheckpointError(f"save_checkpoint({out_dir}): meta['labels'] must list the {n_classes} class "
                              f"names in logit order, got {labels!r}")
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise CheckpointError(f"save_checkpoint({out_dir}): meta keys {clash} are reserved for the checkpoint")

    state = {name: t.detach().to("cpu").contiguous() for name, t in _state_to_save(model).items()}
    total, trainable = model.count_parameters()
    describe = getattr(model, "describe_backbone", None)
    doc = {
        **meta,
        "format": FORMAT,
        "model_params": dataclasses.asdict(model.params),
        "build": dict(model.build_kwargs),
        "backbone": describe() if describe is not None else None,
        "parameters": {"total": total, "trainable": trainable},
        "state": "partial" if model.partial_state else "full",
        "base_fingerprint": _base_fingerprint(model, set(state)),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        doc["weights_sha256"] = _sha256(tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        apply_umask(tmp)
        try:
            os.rename(tmp, out_dir)  # atomic; fails when out_dir exists
        except OSError:
            if not out_dir.is_dir():
                raise
            os.replace(tmp / WEIGHTS, out_dir / WEIGHTS)
            os.replace(tmp / META, out_dir / META)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %s checkpoint (%d tensors, %d/%d trainable/total parameters) to %s",
             doc["state"], len(state), trainable, total, out_dir)


def load_checkpoint(path: Path, device: str | torch.device = "cpu",
                    cache_dir: Optional[Path] = None) -> tuple[SERModel, dict[str, Any]]:
    """Rebuild the model described by `path`/meta.json, load its weights, move it
    to `device` and return it in eval mode with the full meta dict.

    cache_dir: where random encoder presets are re-created (see build_model).
    """
    path = Path(path)
    meta_path, weights_path = path / META, path / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (expected {META} and {WEIGHTS}); "
                              "run the model's train stage (`dvc repro`)")
    doc = read_meta(path)
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("labels", "model_params", "build") if k not in doc]
    if missing:
        raise CheckpointError(f"{meta_path}: lacks {missing}; restore it or re-run training")
    if _sha256(weights_path) != doc.get("weights_sha256"):
        raise CheckpointError(f"{weights_path} does not match {meta_path} (sha256): the checkpoint was "
                              "written incompletely or edited; re-run training")
    mp = _build(ModelParams, doc["model_params"], "checkpoint")
    build = doc["build"]
    preprocessor = (doc.get("backbone") or {}).get("preprocessor")  # what training fed (encoders)
    model = build_model(mp, build["n_classes"], with_domain_head=build["with_domain_head"],
                        n_mels=build["n_mels"], cache_dir=cache_dir, preprocessor=preprocessor,
                        n_features=build.get("n_features"))
    state = load_file(str(weights_path), device="cpu")
    expected = set(_state_to_save(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{weights_path}: tensors do not match the model rebuilt from {meta_path}: "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    try:
        model.load_state_dict(state, strict=not model.partial_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path}: {exc}") from None
    fingerprint = _base_fingerprint(model, set(state))
    if fingerprint != doc.get("base_fingerprint"):
        raise CheckpointError(
            f"{path}: the frozen backbone {mp.encoder.backbone if mp.encoder else mp.arch!r} resolves to "
            "different weights than the ones this checkpoint was trained on; its adapters only fit that "
            "exact base. Restore the original backbone (hub revision, local directory, random-preset "
            "cache) or retrain.")
    model.to(device).eval()
    log.info("loaded %s (%s, %s state) onto %s", path, mp.arch, doc["state"], device)
    return model, doc
