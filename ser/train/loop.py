"""The one training loop. Models differ in what they are, their objective and
their optimizer parameter groups; nothing else.

    for batch in loader:
        loss, logs = objective(model, batch, target_batch, progress)
        accelerator.backward(loss); clip; optimizer.step(); optimizer.zero_grad()

Objectives (ser.train.objectives): CrossEntropy (baseline, fine-tune, QLoRA) and
DomainAdversarial (DANN: CE on labeled source + lambda * domain CE on source and
unlabeled target features through gradient reversal).

`Trainer` holds one run's pieces (data, model, optimizer, objective, prepared by
accelerate) and `train_step` is the one optimizer step; bench/ times exactly these.
`train_model` is the run: set-up, resume, the epochs, the finish.

Real corpora are imbalanced and small: `models.<name>.balance` weights the
cross-entropy by inverse class frequency ("loss") or draws class-balanced
batches ("sampler"); `spec_augment` masks training log-mels; `patience` stops
when val UAR has not improved for that many epochs.

Resumable: after every epoch the training state goes to `resume_dir`; a killed
run restarted with the same command continues from the last completed epoch
and ends with the same weights and metrics as an uninterrupted run, because
every random stream (batch order, crops, masks, dropout) is re-derived from
(seed, epoch) rather than carried over. A run resumes only when the params,
features and training code all match (`fingerprint`).

The model directory holds only what the weights determine (meta.json is
byte-identical across identical runs); wall-clock timings go to `timing_path`.

Multi-process data parallelism (DDP) needs no code change:
`accelerate launch --multi_gpu --num_processes 2 stages/train.py ...` (also on a
CPU-only machine, where it runs over gloo; accelerate's `--cpu` launcher
starts a single process). Only the main process writes files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ser import codegraph
from ser.config import FUNCTIONALS, ModelParams, Params, TrainParams
from ser.features.dataset import FeatureDataset, epoch_seed, make_loader, max_samples_for
from ser.features.scaling import Standardiser
from ser.features.stores import FeatureStore, fold_root
from ser.fsutil import write_json_atomic
from ser.logutil import open_live
from ser.models import build_model
from ser.models.base import EpochCallback, Learner
from ser.models.checkpoint import BACKBONE_CACHE, load_checkpoint, save_checkpoint
from ser.models.learner import TorchFitted
from ser.runtime import runtime_record
from ser.stats import compute_metrics
from ser.train.augment import spec_augment
from ser.train.objectives import Batch, class_weights, embed, make_objective
from ser.train.resume import load_resume, restore_weights, save_resume

log = logging.getLogger(__name__)

__all__ = ["TorchLearner", "Trainer", "train_step", "ObjectiveModule", "RunData", "set_epoch", "target_batches",
           "seed_everything", "set_determinism", "fingerprint", "code_fingerprint", "make_accelerator",
           "TrainingInterrupted"]

BEST_DIR = "best"  # inside resume_dir: the best epoch so far, copied to out_dir at the end
_AUGMENT_STREAM = 1  # epoch_seed key of the SpecAugment generator (independent of batch order and dropout)


class TrainingInterrupted(RuntimeError):
    """Raised by an `on_epoch_end` callback to stop a run after an epoch (tests, time limits)."""


class ObjectiveModule(nn.Module):
    """Runs an objective inside forward(), so DDP sees the whole computation.

    Objectives call model.embed/classify/domain_head directly; outside a
    forward() of the DDP-wrapped module their gradients would not be reduced.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, objective: Callable, *args: Any) -> Any:
        return objective(self.model, *args)


def train_step(accelerator: Any, step: ObjectiveModule, optimizer: torch.optim.Optimizer, objective: Callable,
               batch: Batch, target_batch: Optional[Batch], progress: float,
               grad_clip: Optional[float] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one optimizer step of every model: loss of the objective, backward, clip, step, zero_grad."""
    loss, logs = step(objective, batch, target_batch, progress)
    accelerator.backward(loss)
    if grad_clip:
        accelerator.clip_grad_norm_(step.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, logs


# --------------------------------------------------------------------------- set-up
def make_accelerator(train: TrainParams):
    """Accelerator for params.train: device auto/cpu/cuda; mixed precision auto -> bf16 where supported."""
    from accelerate import Accelerator

    if train.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params.yaml train.device is 'cuda' but no CUDA GPU is visible; "
                           "set train.device to 'auto' or 'cpu'")
    on_cuda = train.device != "cpu" and torch.cuda.is_available()
    precision = train.mixed_precision
    if precision == "auto":
        precision = "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "no"
    # cpu=True also for "auto" without CUDA: under a multi-process launch,
    # accelerate only sets up CPU (gloo) data parallelism when told cpu=True;
    # otherwise every process would train alone and all would write the outputs.
    return Accelerator(cpu=not on_cuda, mixed_precision=precision)


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed
    set_seed(seed)  # python, numpy (the encoders' time masking draws from it), torch CPU and CUDA


def set_determinism(train: TrainParams) -> None:
    if not train.deterministic:
        return
    # cuBLAS needs a fixed workspace for deterministic matmuls on CUDA.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    deterministic_algorithms()


def deterministic_algorithms() -> None:
    """torch.use_deterministic_algorithms(True, warn_only=True) without its import of torch._inductor.

    The public call also sets torch._inductor.config.deterministic, importing the compiler stack
    (torch._dynamo, sympy: 0.9 s in every train stage). Nothing here compiles; the flag the eager
    kernels read is ATen's, set the same way, and inductor's is set too when it is already loaded.
    """
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = True
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: the public call, import and all
        torch.use_deterministic_algorithms(True, warn_only=True)
        return
    setter(True, warn_only=True)


def code_fingerprint() -> str:
    """sha256 of the package source that this trainer runs: the import closure of ser.train.loop
    (ser.codegraph, the same closure dvc.yaml's train@ deps must cover). A run killed under one
    version of the trainer or models never resumes under another; editing a report does not restart it."""
    return codegraph.code_fingerprint(__name__)


def fingerprint(params: Params, name: str, feature_meta: dict[str, Any], runtime: dict[str, Any]) -> str:
    """sha256 of everything that determines the training result (resume only on a match): the model's
    run spec (`Params.run_spec`, what bind@ records), seed, fold, feature meta, the training code and
    the runtime record (threads, device, precision, torch: ser.runtime.runtime_record)."""
    payload: dict[str, Any] = {"spec": params.run_spec(name), "seed": params.seed, "fold": params.fold,
                               "features": feature_meta, "code": code_fingerprint(), "runtime": runtime}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _model_params(params: Params, name: str) -> ModelParams:
    mp = params.model(name)
    if mp.input in ("waves", "embeddings") and mp.encoder is None:
        raise ValueError(f"models.{name}: input {mp.input!r} needs an `encoder` section")
    if mp.input == "mels" and mp.arch == "encoder":
        raise ValueError(f"models.{name}: arch 'encoder' reads waveforms or embeddings; set input: waves")
    return mp


class RunData:
    """The loaders of one run and the objects whose epoch must be set before iterating."""

    def __init__(self, params: Params, mp: ModelParams, store_root: Path) -> None:
        labels = list(params.study(mp.study).labels)
        max_seconds = mp.encoder.max_seconds if mp.encoder and mp.input == "waves" else None
        train_store = FeatureStore(store_root, "train")
        val_store = FeatureStore(store_root, "val")
        self.meta = train_store.meta
        if self.meta.get("kind") != mp.input:
            raise ValueError(f"{store_root}/meta.json: kind {self.meta.get('kind')!r}, model needs {mp.input!r}")
        if "labels" in self.meta and list(self.meta["labels"]) != labels:
            raise ValueError(f"{store_root}/meta.json: labels {self.meta['labels']} differ from study "
                             f"{mp.study!r} labels {labels}; re-run the precompute stages (`dvc repro`)")
        cap = max_samples_for(train_store, max_seconds)
        bucket = params.train.bucket_by_length and mp.input == "waves"
        workers = params.runtime.num_workers
        # Functionals (arch mlp): standardised with the train split's statistics or per speaker.
        self.standardiser = (Standardiser.fit(mp.mlp.standardise, train_store.stack())
                             if mp.mlp is not None and len(train_store) else None)
        std = {"standardiser": self.standardiser}
        # Reading labels here fails fast (naming the file) on an emotion outside the study's label set.
        self.train_set = FeatureDataset(train_store, labels, max_samples=cap, crop="random", seed=params.seed,
                                        **std)
        self.train = make_loader(self.train_set, mp.batch_size, seed=params.seed, shuffle=True, bucket=bucket,
                                 num_workers=workers, balance=mp.balance == "sampler")
        self.val_set = FeatureDataset(val_store, labels, max_samples=cap, crop="center", **std)
        self.val = make_loader(self.val_set, mp.batch_size, num_workers=workers)
        self.target = self.adapt = None
        self.target_set = None
        if mp.objective == "dann":
            adapt_store = FeatureStore(store_root, "adapt")  # unlabeled: its emotions are never read
            self.target_set = FeatureDataset(adapt_store, None, max_samples=cap, crop="random",
                                             seed=params.seed + 1, **std)
            self.target = make_loader(self.target_set, mp.batch_size, seed=params.seed + 1, shuffle=True,
                                      bucket=bucket, num_workers=workers)
            self.adapt = make_loader(FeatureDataset(adapt_store, None, max_samples=cap, crop="center", **std),
                                     mp.batch_size, num_workers=workers)
        log.info("read %s: train %d, val %d%s utterances", store_root, len(self.train_set), len(self.val_set),
                 f", adapt {len(self.target_set)}" if self.target_set is not None else "")
        for split, ds in (("train", self.train_set), ("val", self.val_set)):
            if len(ds) == 0:
                raise ValueError(f"{store_root}/{split}.csv is empty; check the study's split protocol")


def set_epoch(loader: Any, dataset: FeatureDataset, sampler: Any, epoch: int) -> None:
    # The prepared loader calls set_epoch(its own counter) on iteration: align it, then set ours.
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)


def target_batches(loader: Any, dataset: FeatureDataset, sampler: Any, epoch: int) -> Iterator[Batch]:
    """Endless target batches for one epoch: pass p over the target data uses epoch key (epoch, p)."""
    passes = 0
    while True:
        set_epoch(loader, dataset, sampler, epoch * 100_000 + passes)
        yield from loader
        passes += 1


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def _predict(accelerator: Any, model: nn.Module, loader: Any, domain: bool) -> dict[str, torch.Tensor]:
    """Logits (and domain logits) over a whole loader, gathered from every process."""
    out: dict[str, list[torch.Tensor]] = {"logits": [], "y": [], "domain_logits": []}
    with accelerator.autocast():
        for batch in loader:
            feats = embed(model, batch)
            parts = {"logits": model.classify(feats).float(), "y": batch["y"]}
            if domain:
                parts["domain_logits"] = model.domain_head(feats).float()
            for key, value in accelerator.gather_for_metrics(parts).items():
                out[key].append(value.cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def _validate(accelerator: Any, model: nn.Module, data: RunData, labels: list[str], dann: bool) -> dict[str, float]:
    model.eval()
    val = _predict(accelerator, model, data.val, dann)
    metrics = compute_metrics(val["y"].numpy(), val["logits"].argmax(-1).numpy(), labels)
    logs = {"val/loss": float(F.cross_entropy(val["logits"], val["y"])), "val/uar": metrics["uar"],
            "val/accuracy": metrics["accuracy"]}
    if dann:
        # Domain head on source val (domain 0) vs target adapt (1): ~0.5 means domain-invariant features.
        adapt = _predict(accelerator, model, data.adapt, True)
        hits = torch.cat([val["domain_logits"].argmax(-1) == 0, adapt["domain_logits"].argmax(-1) == 1])
        logs["val/domain_accuracy"] = float(hits.float().mean())
    model.train()
    return logs


def _augment(batch: Batch, mp: ModelParams, gen: Optional[torch.Generator]) -> Batch:
    """SpecAugment on a training batch (mels only; masks inside batch["lengths"] when present)."""
    if gen is None or mp.spec_augment is None:
        return batch
    return {**batch, "x": spec_augment(batch["x"], batch.get("lengths"), mp.spec_augment, gen)}


def _stops_early(mp: ModelParams, best_epoch: int, done: int) -> bool:
    """True when val UAR has not improved for `patience` epochs after `done` completed epochs."""
    return mp.patience is not None and 0 < done < mp.epochs and done - best_epoch >= mp.patience


def _write_timing(path: Path, name: str, result: dict[str, Any]) -> None:
    """Wall-clock figures of a run: kept out of the model directory, whose bytes they would change."""
    write_json_atomic(path, {"model": name, "train_seconds": result["train_seconds"],
                             "epochs_run": result["epochs_run"], "resumed_from_epoch": result["resumed_from_epoch"],
                             "seconds_per_epoch": result["train_seconds"] / max(1, result["epochs_run"])})
    log.info("wrote %s", path)


class Trainer:
    """One run's pieces, in the order a run needs them: data, accelerator and runtime record
    (`__init__`), the seeded model, optimizer and scheduler (`build`), then accelerate's wrapping
    and the objective (`prepare`). `step` is `train_step` on them; `epoch` one pass and validation."""

    def __init__(self, params: Params, name: str, features_root: Path, train: Optional[TrainParams] = None) -> None:
        self.params, self.name = params, name
        self.mp = mp = _model_params(params, name)
        self.labels = list(params.study(mp.study).labels)
        self.dann = mp.objective == "dann"
        self.store_root = fold_root(Path(features_root), mp.input, mp.study, params.fold, mp.store_key)
        self.data = RunData(params, mp, self.store_root)
        self.accelerator = make_accelerator(train or params.train)
        self.main = self.accelerator.is_main_process
        set_determinism(params.train)
        self.runtime = runtime_record(self.accelerator.device, self.accelerator.mixed_precision)
        self.fingerprint = fingerprint(params, name, self.data.meta, self.runtime)

    def build(self, cache_dir: Optional[Path]) -> None:
        """The model (seeded: the same initial weights on every run of this seed), optimizer, scheduler."""
        mp, data = self.mp, self.data
        seed_everything(self.params.seed)
        # The mel bands come from the store: the trainer reads no params outside the run spec.
        width = int(data.train_set.store.array.shape[1]) if mp.input in ("mels", *FUNCTIONALS) else None
        dims = {"n_mels": width} if mp.input == "mels" else {"n_features": width} if width else {}
        with self.accelerator.main_process_first():  # the main process writes the random-backbone cache
            self.model = build_model(mp, len(self.labels), with_domain_head=self.dann, cache_dir=cache_dir,
                                     name=self.name, **dims)
        if data.standardiser is not None:  # saved with the weights: evaluation and `ser predict` reuse them
            self.model.set_standardiser(data.standardiser)
        frontend = getattr(self.model, "frontend", None)
        if frontend is not None and int(data.meta.get("sample_rate", 0)) != frontend.sampling_rate:
            raise ValueError(f"{self.store_root}/meta.json: waveforms at {data.meta.get('sample_rate')} Hz, but "
                             f"{mp.encoder.backbone} expects {frontend.sampling_rate} Hz (its preprocessor config); "
                             f"set features.sample_rate: {frontend.sampling_rate}")
        self.parameters = self.model.count_parameters()
        log.info("model %s (%s, %s objective): %d parameters, %d trainable, on %s, mixed precision %s",
                 self.name, mp.arch, mp.objective, *self.parameters, self.accelerator.device,
                 self.accelerator.mixed_precision)
        optim_cls = torch.optim.AdamW if mp.optim.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optim_cls(self.model.param_groups(mp.optim), lr=mp.optim.lr,
                                   weight_decay=mp.optim.weight_decay)
        self.scheduler = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=mp.optim.plateau_factor, patience=mp.optim.plateau_patience)
            if mp.optim.scheduler == "plateau" else None)

    def restore(self, state: dict[str, Any], resume_dir: Path) -> None:
        restore_weights(self.model, resume_dir / state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def prepare(self) -> None:
        """Wrap model, optimizer and loaders with accelerate (DDP, device) and make the objective."""
        data, accelerator = self.data, self.accelerator
        self.train_sampler = data.train.batch_sampler
        self.target_sampler = data.target.batch_sampler if self.dann else None
        loaders = [data.train, data.val] + ([data.target, data.adapt] if self.dann else [])
        self.step_module, self.optimizer, *loaders = accelerator.prepare(ObjectiveModule(self.model),
                                                                          self.optimizer, *loaders)
        self.train_loader, data.val = loaders[0], loaders[1]
        self.target_loader = None
        if self.dann:
            self.target_loader, data.adapt = loaders[2], loaders[3]
        self.net = accelerator.unwrap_model(self.step_module).model
        weight = None
        if self.mp.balance == "loss":
            weight = class_weights(data.train_set.labels, len(self.labels))
            log.info("class weights (balance: loss): %s",
                     ", ".join(f"{k} {w:.3f}" for k, w in zip(self.labels, weight.tolist())))
        self.objective = make_objective(self.params, self.mp, weight)
        self.steps_per_epoch = len(self.train_loader)

    def step(self, batch: Batch, target_batch: Optional[Batch], progress: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return train_step(self.accelerator, self.step_module, self.optimizer, self.objective, batch, target_batch,
                          progress, self.mp.optim.grad_clip)

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data, then validation; returns the epoch's logs."""
        mp, accelerator, process = self.mp, self.accelerator, self.accelerator.process_index
        # Every random stream of this epoch derives from (seed, epoch, process): resume-safe.
        seed_everything(epoch_seed(self.params.seed, epoch, process))
        set_epoch(self.train_loader, self.data.train_set, self.train_sampler, epoch)
        targets = (target_batches(self.target_loader, self.data.target_set, self.target_sampler, epoch)
                   if self.dann else None)
        masks = (torch.Generator().manual_seed(epoch_seed(self.params.seed, epoch, process, _AUGMENT_STREAM))
                 if mp.spec_augment is not None else None)
        total_steps = max(1, mp.epochs * self.steps_per_epoch)
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        # disable=None: a bar on a terminal only; per-epoch log lines elsewhere (CI logs).
        bar = tqdm(self.train_loader, desc=f"{self.name} epoch {epoch + 1}/{mp.epochs}",
                   disable=None if self.main else True, leave=False)
        for i, batch in enumerate(bar):
            progress = min(1.0, (epoch * self.steps_per_epoch + i) / total_steps)
            # DANN's target batches are masked too: masks only on source clips would be a domain cue.
            target_batch = _augment(next(targets), mp, masks) if targets else None
            _, logs = self.step(_augment(batch, mp, masks), target_batch, progress)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float().to(accelerator.device)
            n_steps += 1
            bar.set_postfix(loss=f"{float(logs['loss']):.3f}")
        if not n_steps:
            raise RuntimeError(f"{self.store_root}/train: no training batches")
        means = accelerator.reduce(torch.stack(list(sums.values())) / n_steps, reduction="mean")
        epoch_logs = {f"train/{k}": float(v) for k, v in zip(sums, means)}
        epoch_logs.update(_validate(accelerator, self.net, self.data, self.labels, self.dann))
        for k, group in enumerate(self.optimizer.param_groups):
            epoch_logs[f"lr/{group.get('name', k)}"] = float(group["lr"])
        if self.scheduler is not None:
            self.scheduler.step(epoch_logs["val/uar"])
        return epoch_logs


@dataclass
class _Progress:
    """Where a run stands after its completed epochs (what the resume state carries)."""
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"uar": -1.0, "epoch": -1, "val": {}})
    train_seconds: float = 0.0
    stopped_early: bool = False

    @classmethod
    def of(cls, state: dict[str, Any]) -> "_Progress":
        return cls(state["epoch"], state["history"], state["best"], state["train_seconds"],
                   state.get("stopped_early", False))


def _start(trainer: Trainer, out_dir: Path, resume_dir: Path) -> _Progress:
    """Resume from resume_dir when its fingerprint matches, else start fresh (stale outputs removed)."""
    state = load_resume(resume_dir, trainer.fingerprint, trainer.runtime)
    if state is None and trainer.main:
        for stale in (out_dir, resume_dir):
            if stale.exists():
                log.info("fresh run: removing %s", stale)
                shutil.rmtree(stale)
    trainer.accelerator.wait_for_everyone()
    trainer.build(cache_dir=out_dir / BACKBONE_CACHE)
    if state is None:
        return _Progress()
    trainer.restore(state, resume_dir)
    progress = _Progress.of(state)
    log.info("resuming %s from %s after epoch %d of %d%s", trainer.name, resume_dir, progress.epoch,
             trainer.mp.epochs, " (already stopped early)" if progress.stopped_early else "")
    return progress


def _open_live(live_dir: Path, history: list[dict[str, float]]) -> Any:
    live = open_live(live_dir)  # only the main process logs
    for logs in history:  # a resumed run rewrites the completed epochs: same files as uninterrupted
        for key, value in logs.items():
            live.log_metric(key, value)
        live.next_step()
    return live


def _end_epoch(trainer: Trainer, progress: _Progress, epoch: int, logs: dict[str, float], meta: dict[str, Any],
               resume_dir: Path, live: Any) -> None:
    """Keep the best epoch, record the epoch (DVCLive, history) and save the resume state."""
    mp, name = trainer.mp, trainer.name
    log.info("%s epoch %d/%d: %s", name, epoch + 1, mp.epochs, ", ".join(f"{k} {v:.4f}" for k, v in logs.items()))
    # select val: the best val UAR so far; select last: every epoch replaces the kept one.
    if mp.select == "last" or logs["val/uar"] > progress.best["uar"]:
        val = {k.split("/", 1)[1]: v for k, v in logs.items() if k.startswith("val/")}
        progress.best = {"uar": logs["val/uar"], "epoch": epoch + 1, "val": val}
        if trainer.main:
            # The kept model lives beside the resume state until the run ends: DVC deletes
            # out_dir before re-running a stage, so a resumed run must not depend on it.
            save_checkpoint(trainer.net, resume_dir / BEST_DIR, {**meta, "best_epoch": epoch + 1, "val": val})
            log.info("kept epoch %d (select %s, val UAR %.4f)", epoch + 1, mp.select, logs["val/uar"])
    progress.history.append(logs)
    progress.epoch = epoch + 1
    progress.stopped_early = _stops_early(mp, progress.best["epoch"], epoch + 1)
    if trainer.main:
        for key, value in logs.items():
            live.log_metric(key, value)
        live.next_step()
        # stopped_early is part of the state: a run killed right after its last epoch resumes as finished.
        save_resume(resume_dir, trainer.net, {
            "epoch": epoch + 1, "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "best": progress.best, "history": progress.history, "train_seconds": progress.train_seconds,
            "fingerprint": trainer.fingerprint, "runtime": trainer.runtime, "patience": mp.patience,
            "stopped_early": progress.stopped_early})
        log.info("wrote resume state for epoch %d to %s", epoch + 1, resume_dir)
    trainer.accelerator.wait_for_everyone()
    if progress.stopped_early:
        log.info("%s: early stop after epoch %d: val UAR has not improved for %d epochs (best %.4f at epoch %d)",
                 name, epoch + 1, mp.patience, progress.best["uar"], progress.best["epoch"])


def _finish(trainer: Trainer, progress: _Progress, resumed_from: int, meta: dict[str, Any], out_dir: Path,
            resume_dir: Path, live_dir: Path, live: Any, timing_path: Optional[Path]) -> dict[str, Any]:
    """Copy the best epoch to out_dir (its meta says how the run ended), write timing, drop the resume state."""
    total, trainable = trainer.parameters
    best = progress.best
    result = {"model": trainer.name, "best_epoch": best["epoch"], "val": best["val"], "epochs": trainer.mp.epochs,
              "epochs_run": len(progress.history), "stopped_early": progress.stopped_early,
              "resumed_from_epoch": resumed_from, "train_seconds": progress.train_seconds,
              "parameters": {"total": int(total), "trainable": int(trainable)}, "history": progress.history}
    if trainer.main:
        best_model, _ = load_checkpoint(resume_dir / BEST_DIR, cache_dir=out_dir / BACKBONE_CACHE)
        save_checkpoint(best_model, out_dir, {**meta, "best_epoch": best["epoch"], "val": best["val"],
                                              "epochs_run": len(progress.history),
                                              "stopped_early": progress.stopped_early})
        if timing_path is not None:
            _write_timing(Path(timing_path), trainer.name, result)
        live.end()
        shutil.rmtree(resume_dir, ignore_errors=True)
        log.info("finished %s: best val UAR %.4f at epoch %d of %d run; wrote %s and %s; removed %s", trainer.name,
                 best["uar"], best["epoch"], len(progress.history), out_dir, live_dir, resume_dir)
    trainer.accelerator.wait_for_everyone()
    return result


class TorchLearner(Learner):
    """The torch networks (CRNN, encoders, probes): fitted by this loop, resumable per epoch."""

    fitted = TorchFitted

    def fit(self, params: Params, name: str, features_root: Path, out_dir: Path, resume_dir: Path,
            live_dir: Path, *, on_epoch_end: Optional[EpochCallback] = None,
            timing_path: Optional[Path] = None) -> dict[str, Any]:
        """Train model `name` of params.models; the best epoch (val UAR) is saved to out_dir.

        on_epoch_end(epoch, logs) runs after each epoch's state is saved; raising
        TrainingInterrupted there stops the run resumably. timing_path: a JSON file
        for the run's wall-clock time (see _write_timing), outside out_dir.
        """
        out_dir, resume_dir, live_dir = map(Path, (out_dir, resume_dir, live_dir))
        mp = _model_params(params, name)
        trainer = Trainer(params, name, Path(features_root))
        progress = _start(trainer, out_dir, resume_dir)
        resumed_from = progress.epoch
        trainer.prepare()
        live = _open_live(live_dir, progress.history) if trainer.main else None
        # save_checkpoint adds model_params, build arguments and parameter counts itself. No wall-clock
        # figures here (meta.json must be identical across identical runs); runtime: the threads, device
        # and precision the weights were computed with (runs are bit-for-bit comparable when equal).
        meta = {"model": name, "study": mp.study, "labels": trainer.labels, "input": mp.input,
                "features": trainer.data.meta, "fold": params.fold, "seed": params.seed, "runtime": trainer.runtime}
        if trainer.dann:
            meta.update(lambda_domain=params.lambda_domain, max_alpha=params.max_alpha)
        trainer.step_module.train()
        for epoch in range(progress.epoch, mp.epochs):
            if progress.stopped_early:
                break
            started = time.perf_counter()
            logs = trainer.epoch(epoch)
            progress.train_seconds += time.perf_counter() - started
            _end_epoch(trainer, progress, epoch, logs, meta, resume_dir, live)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, logs)
        return _finish(trainer, progress, resumed_from, meta, out_dir, resume_dir, live_dir, live, timing_path)
