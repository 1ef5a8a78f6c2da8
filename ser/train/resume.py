"""The resume state of a run: after every epoch the trainable tensors (safetensors) and the
optimizer, scheduler, history and fingerprint (torch.save, weights_only on load) go to the
run's resume folder; a killed run restarted with the same command continues from there.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "save_resume", "load_resume", "restore_weights", "trainable_state"]

STATE_FILE = "state.pt"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers: all that training changes (frozen weights are rebuilt)."""
    state = {k: p for k, p in model.named_parameters() if p.requires_grad}
    state.update(dict(model.named_buffers()))
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_resume(resume_dir: Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Weights as safetensors, the rest via torch.save; state.pt is replaced last and names the weights."""
    from safetensors.torch import save_file

    resume_dir.mkdir(parents=True, exist_ok=True)
    weights = f"model-epoch{state['epoch']}.safetensors"
    save_file(trainable_state(model), str(resume_dir / weights))
    state = {**state, "weights": weights}
    tmp = resume_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(resume_dir / STATE_FILE)
    for old in resume_dir.glob("model-epoch*.safetensors"):
        if old.name != weights:
            old.unlink()
    (resume_dir / "fingerprint.txt").write_text(state["fingerprint"] + "\n")


def load_resume(resume_dir: Path, expected: str, runtime: dict[str, Any]) -> Optional[dict[str, Any]]:
    path = resume_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: log and start fresh
        log.warning("%s is unreadable (%s): starting fresh", path, exc)
        return None
    if state.get("fingerprint") != expected:
        if state.get("runtime") not in (None, runtime):
            # Never mix: epochs computed with other threads or on another device would not add up
            # to the weights of either an uninterrupted run here or one there.
            log.warning("%s: the saved epochs ran with %s, this run uses %s: starting fresh rather than "
                        "mixing them", path, state["runtime"], runtime)
        else:
            log.info("%s: fingerprint differs from the current params/features/code: starting fresh", path)
        return None
    return state


def restore_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path))
    current = dict(model.named_parameters())
    current.update(dict(model.named_buffers()))
    expected = set(trainable_state(model))
    if set(saved) != expected:
        raise RuntimeError(f"{path}: tensors do not match the model (missing {sorted(expected - set(saved))[:3]}, "
                           f"unexpected {sorted(set(saved) - expected)[:3]}); delete {path.parent} and retrain")
    with torch.no_grad():
        for key, value in saved.items():
            current[key].copy_(value)
