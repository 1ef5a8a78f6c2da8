"""Which learner fits which arch: the one place the family of a model is chosen for training.

`train_model` is what the train stage runs: it picks the learner of the model's arch
(ser.models.base.Learner) and fits the run with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ser.config import Params
from ser.models.base import EpochCallback, Learner
from ser.models.linear import ClassicalLearner
from ser.train.loop import TorchLearner

__all__ = ["LEARNERS", "learner_for", "train_model"]

# arch (params.yaml `models.<name>.arch`) -> its learner; a test keeps the keys equal to config.Arch.
LEARNERS: dict[str, Learner] = {"crnn": TorchLearner(), "encoder": TorchLearner(), "mlp": TorchLearner(),
                                "classical": ClassicalLearner()}


def learner_for(arch: str) -> Learner:
    if arch not in LEARNERS:
        raise KeyError(f"unknown arch {arch!r}; known: {sorted(LEARNERS)}")
    return LEARNERS[arch]


def train_model(params: Params, name: str, features_root: Path, out_dir: Path, resume_dir: Path,
                live_dir: Path, *, on_epoch_end: Optional[EpochCallback] = None,
                timing_path: Optional[Path] = None) -> dict[str, Any]:
    """Fit model `name` of params.models with its arch's learner (see Learner.fit)."""
    learner = learner_for(params.model(name).arch)
    return learner.fit(params, name, Path(features_root), Path(out_dir), Path(resume_dir), Path(live_dir),
                       on_epoch_end=on_epoch_end, timing_path=timing_path)

