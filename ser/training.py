"""The one training loop. Models differ in what they are, their objective and
their optimizer parameter groups; nothing else.

    for batch in loader:
        loss, logs = objective(model, batch, target_batch, progress)
        accelerator.backward(loss); clip; optimizer.step(); optimizer.zero_grad()

Objectives: CrossEntropy (baseline, fine-tune, QLoRA) and DomainAdversarial
(DANN: CE on labeled source + lambda * domain CE on source and unlabeled target
features through gradient reversal).

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
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ser import codegraph
from ser.augment import spec_augment
from ser.config import ModelParams, Params, TrainParams
from ser.stores import fold_root
from ser.data import FeatureDataset, epoch_seed, make_loader, max_samples_for
from ser.fsutil import write_json_atomic
from ser.runtime import runtime_record
from ser.stats import compute_metrics
from ser.stores import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["train_model", "CrossEntropy", "DomainAdversarial", "make_objective", "fingerprint",
           "code_fingerprint", "class_weights", "make_accelerator", "TrainingInterrupted"]

STATE_FILE = "state.pt"
BEST_DIR = "best"  # inside resume_dir: the best epoch so far, copied to out_dir at the end
_AUGMENT_STREAM = 1  # epoch_seed key of the SpecAugment generator (independent of batch order and dropout)
Batch = dict[str, torch.Tensor]
EpochCallback = Callable[[int, dict[str, float]], None]


class TrainingInterrupted(RuntimeError):
    """Raised by an `on_epoch_end` callback to stop a run after an epoch (tests, time limits)."""


# --------------------------------------------------------------------------- objectives
def _embed(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model.embed(batch["x"], batch.get("lengths"))


def _ce(logits: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, weight=None if weight is None else weight.to(logits.device))


class CrossEntropy:
    """Cross-entropy on the labeled batch; `weight` [n_classes] weights the classes (balance: loss)."""

    def __init__(self, weight: Optional[torch.Tensor] = None) -> None:
        self.weight = weight

    def __call__(self, model: nn.Module, batch: Batch, target_batch: Optional[Batch],
                 progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model.classify(_embed(model, batch))
        loss = _ce(logits, batch["y"], self.weight)
        return loss, {"loss": loss.detach(), "ce": loss.detach()}


class DomainAdversarial:
    """DANN (Ganin & Lempitsky 2015): CE + lambda * domain CE through gradient reversal.

    The reversal coefficient follows dann_alpha(progress, max_alpha); the
    target batch's emotion labels are never read. `weight` weights the emotion
    classes of the CE term only (the domain term is balanced by construction).
    """

    def __init__(self, lambda_domain: float, max_alpha: float, weight: Optional[torch.Tensor] = None) -> None:
        self.lambda_domain = lambda_domain
        self.max_alpha = max_alpha
        self.weight = weight

    def __call__(self, model: nn.Module, batch: Batch, target_batch: Optional[Batch],
                 progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from ser.models.grl import dann_alpha, grad_reverse

        if target_batch is None:
            raise ValueError("DomainAdversarial needs a target batch every step")
        source = _embed(model, batch)
        target = _embed(model, target_batch)
        ce = _ce(model.classify(source), batch["y"], self.weight)
        alpha = dann_alpha(progress, self.max_alpha)
        feats = torch.cat([source, target])
        domains = torch.cat([torch.zeros(len(source), dtype=torch.long, device=feats.device),
                             torch.ones(len(target), dtype=torch.long, device=feats.device)])
        domain_logits = model.domain_head(grad_reverse(feats, alpha)).float()
        domain_loss = F.cross_entropy(domain_logits, domains)
        loss = ce + self.lambda_domain * domain_loss
        domain_acc = (domain_logits.argmax(-1) == domains).float().mean()
        return loss, {"loss": loss.detach(), "ce": ce.detach(), "domain_loss": domain_loss.detach(),
                      "domain_acc": domain_acc.detach(), "alpha": torch.tensor(float(alpha))}


def make_objective(params: Params, mp: ModelParams,
                   weight: Optional[torch.Tensor] = None) -> CrossEntropy | DomainAdversarial:
    if mp.objective == "dann":
        return DomainAdversarial(params.lambda_domain, params.max_alpha, weight)
    return CrossEntropy(weight)


def class_weights(labels: Any, n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights of the train labels, mean 1 over the classes present.

    A class absent from train gets weight 0 (nothing to learn it from) and a warning.
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=n_classes).double()
    present = counts > 0
    if not bool(present.all()):
        log.warning("classes %s have no training examples: class weight 0",
                    torch.nonzero(~present).flatten().tolist())
    weight = torch.zeros(n_classes, dtype=torch.float64)
    weight[present] = 1.0 / counts[present]
    weight[present] /= weight[present].mean()
    return weight.float()


class _Step(nn.Module):
    """Runs an objective inside forward(), so DDP sees the whole computation.

    Objectives call model.embed/classify/domain_head directly; outside a
    forward() of the DDP-wrapped module their gradients would not be reduced.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, objective: Callable, *args: Any) -> Any:
        return objective(self.model, *args)


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


def _seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed
    set_seed(seed)  # python, numpy (the encoders' time masking draws from it), torch CPU and CUDA


def _set_determinism(train: TrainParams) -> None:
    if not train.deterministic:
        return
    # cuBLAS needs a fixed workspace for deterministic matmuls on CUDA.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def code_fingerprint() -> str:
    """sha256 of the package source that this trainer runs: the import closure of ser.training
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
    if name not in params.models:
        raise KeyError(f"unknown model {name!r}; params.yaml `models` defines: {sorted(params.models)}")
    mp = params.models[name]
    if mp.input in ("waves", "embeddings") and mp.encoder is None:
        raise ValueError(f"models.{name}: input {mp.input!r} needs an `encoder` section")
    if mp.input == "mels" and mp.arch == "encoder":
        raise ValueError(f"models.{name}: arch 'encoder' reads waveforms or embeddings; set input: waves")
    return mp


class _Data:
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
        workers = params.train.num_workers
        # Reading labels here fails fast (naming the file) on an emotion outside the study's label set.
        self.train_set = FeatureDataset(train_store, labels, max_samples=cap, crop="random", seed=params.seed)
        self.train = make_loader(self.train_set, mp.batch_size, seed=params.seed, shuffle=True, bucket=bucket,
                                 num_workers=workers, balance=mp.balance == "sampler")
        self.val_set = FeatureDataset(val_store, labels, max_samples=cap, crop="center")
        self.val = make_loader(self.val_set, mp.batch_size, num_workers=workers)
        self.target = self.adapt = None
        self.target_set = None
        if mp.objective == "dann":
            adapt_store = FeatureStore(store_root, "adapt")  # unlabeled: its emotions are never read
            self.target_set = FeatureDataset(adapt_store, None, max_samples=cap, crop="random",
                                             seed=params.seed + 1)
            self.target = make_loader(self.target_set, mp.batch_size, seed=params.seed + 1, shuffle=True,
                                      bucket=bucket, num_workers=workers)
            self.adapt = make_loader(FeatureDataset(adapt_store, None, max_samples=cap, crop="center"),
                                     mp.batch_size, num_workers=workers)
        log.info("read %s: train %d, val %d%s utterances", store_root, len(self.train_set), len(self.val_set),
                 f", adapt {len(self.target_set)}" if self.target_set is not None else "")
        for split, ds in (("train", self.train_set), ("val", self.val_set)):
            if len(ds) == 0:
                raise ValueError(f"{store_root}/{split}.csv is empty; check the study's split protocol")


def _set_epoch(loader: Any, dataset: FeatureDataset, sampler: Any, epoch: int) -> None:
    # The prepared loader calls set_epoch(its own counter) on iteration: align it, then set ours.
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)


def _target_batches(loader: Any, dataset: FeatureDataset, sampler: Any, epoch: int) -> Iterator[Batch]:
    """Endless target batches for one epoch: pass p over the target data uses epoch key (epoch, p)."""
    passes = 0
    while True:
        _set_epoch(loader, dataset, sampler, epoch * 100_000 + passes)
        yield from loader
        passes += 1


# --------------------------------------------------------------------------- resume state
def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers: all that training changes (frozen weights are rebuilt)."""
    state = {k: p for k, p in model.named_parameters() if p.requires_grad}
    state.update(dict(model.named_buffers()))
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _save_resume(resume_dir: Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Weights as safetensors, the rest via torch.save; state.pt is replaced last and names the weights."""
    from safetensors.torch import save_file

    resume_dir.mkdir(parents=True, exist_ok=True)
    weights = f"model-epoch{state['epoch']}.safetensors"
    save_file(_trainable_state(model), str(resume_dir / weights))
    state = {**state, "weights": weights}
    tmp = resume_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(resume_dir / STATE_FILE)
    for old in resume_dir.glob("model-epoch*.safetensors"):
        if old.name != weights:
            old.unlink()
    (resume_dir / "fingerprint.txt").write_text(state["fingerprint"] + "\n")


def _load_resume(resume_dir: Path, expected: str, runtime: dict[str, Any]) -> Optional[dict[str, Any]]:
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


def _restore_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path))
    current = dict(model.named_parameters())
    current.update(dict(model.named_buffers()))
    expected = set(_trainable_state(model))
    if set(saved) != expected:
        raise RuntimeError(f"{path}: tensors do not match the model (missing {sorted(expected - set(saved))[:3]}, "
                           f"unexpected {sorted(set(saved) - expected)[:3]}); delete {path.parent} and retrain")
    with torch.no_grad():
        for key, value in saved.items():
            current[key].copy_(value)


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def _predict(accelerator: Any, model: nn.Module, loader: Any, domain: bool) -> dict[str, torch.Tensor]:
    """Logits (and domain logits) over a whole loader, gathered from every process."""
    out: dict[str, list[torch.Tensor]] = {"logits": [], "y": [], "domain_logits": []}
    with accelerator.autocast():
        for batch in loader:
            feats = _embed(model, batch)
            parts = {"logits": model.classify(feats).float(), "y": batch["y"]}
            if domain:
                parts["domain_logits"] = model.domain_head(feats).float()
            for key, value in accelerator.gather_for_metrics(parts).items():
                out[key].append(value.cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def _validate(accelerator: Any, model: nn.Module, data: _Data, labels: list[str], dann: bool) -> dict[str, float]:
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


# --------------------------------------------------------------------------- the loop
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


def train_model(params: Params, name: str, features_root: Path, out_dir: Path, resume_dir: Path,
                live_dir: Path, *, on_epoch_end: Optional[EpochCallback] = None,
                timing_path: Optional[Path] = None) -> dict[str, Any]:
    """Train model `name` of params.models; the best epoch (val UAR) is saved to out_dir.

    on_epoch_end(epoch, logs) runs after each epoch's state is saved; raising
    TrainingInterrupted there stops the run resumably. timing_path: a JSON file
    for the run's wall-clock time (see _write_timing), outside out_dir.
    """
    from dvclive import Live

    from ser.checkpoint import BACKBONE_CACHE, load_checkpoint, save_checkpoint
    from ser.models import build_model

    features_root, out_dir, resume_dir, live_dir = map(Path, (features_root, out_dir, resume_dir, live_dir))
    mp = _model_params(params, name)
    if mp.arch == "linear":  # the classical baseline is fitted by sklearn, not by this loop
        from ser.classical import train_classical
        return train_classical(params, name, features_root, out_dir, live_dir, timing_path=timing_path)
    labels = list(params.study(mp.study).labels)
    dann = mp.objective == "dann"
    store_root = fold_root(features_root, mp.input, mp.study, params.fold, mp.store_key)
    data = _Data(params, mp, store_root)

    accelerator = make_accelerator(params.train)
    main = accelerator.is_main_process
    _set_determinism(params.train)
    runtime = runtime_record(accelerator.device, accelerator.mixed_precision)
    fp = fingerprint(params, name, data.meta, runtime)
    state = _load_resume(resume_dir, fp, runtime)
    if state is None and main:
        for stale in (out_dir, resume_dir):
            if stale.exists():
                log.info("fresh run: removing %s", stale)
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()

    _seed_everything(params.seed)
    # The mel bands come from the store: the trainer reads no params outside the run spec.
    mels = {"n_mels": int(data.train_set.store.array.shape[1])} if mp.input == "mels" else {}
    with accelerator.main_process_first():  # the main process writes the random-backbone cache
        model = build_model(mp, len(labels), with_domain_head=dann, cache_dir=out_dir / BACKBONE_CACHE, name=name,
                            **mels)
    frontend = getattr(model, "frontend", None)
    if frontend is not None and int(data.meta.get("sample_rate", 0)) != frontend.sampling_rate:
        raise ValueError(f"{store_root}/meta.json: waveforms at {data.meta.get('sample_rate')} Hz, but "
                         f"{mp.encoder.backbone} expects {frontend.sampling_rate} Hz (its preprocessor config); "
                         f"set features.sample_rate: {frontend.sampling_rate}")
    total, trainable = model.count_parameters()
    log.info("model %s (%s, %s objective): %d parameters, %d trainable, on %s, mixed precision %s",
             name, mp.arch, mp.objective, total, trainable, accelerator.device, accelerator.mixed_precision)
    optim_cls = torch.optim.AdamW if mp.optim.optimizer == "adamw" else torch.optim.Adam
    optimizer = optim_cls(model.param_groups(mp.optim), lr=mp.optim.lr, weight_decay=mp.optim.weight_decay)
    scheduler = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=mp.optim.plateau_factor,
                                                            patience=mp.optim.plateau_patience)
                 if mp.optim.scheduler == "plateau" else None)

    start_epoch, history, best, train_seconds = 0, [], {"uar": -1.0, "epoch": -1, "val": {}}, 0.0
    stopped_early = False
    if state is not None:
        _restore_weights(model, resume_dir / state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        train_seconds, stopped_early = state["train_seconds"], state.get("stopped_early", False)
        log.info("resuming %s from %s after epoch %d of %d%s", name, resume_dir, start_epoch, mp.epochs,
                 " (already stopped early)" if stopped_early else "")

    train_sampler, target_sampler = data.train.batch_sampler, data.target.batch_sampler if dann else None
    step = _Step(model)
    loaders = [data.train, data.val] + ([data.target, data.adapt] if dann else [])
    step, optimizer, *loaders = accelerator.prepare(step, optimizer, *loaders)
    train_loader, data.val = loaders[0], loaders[1]
    target_loader = None
    if dann:
        target_loader, data.adapt = loaders[2], loaders[3]
    net = accelerator.unwrap_model(step).model
    weight = None
    if mp.balance == "loss":
        weight = class_weights(data.train_set.labels, len(labels))
        log.info("class weights (balance: loss): %s",
                 ", ".join(f"{k} {w:.3f}" for k, w in zip(labels, weight.tolist())))
    objective = make_objective(params, mp, weight)

    live = None
    if main:
        # dvcyaml=False: dvc.yaml declares <live_dir>/metrics.json and <live_dir>/plots itself.
        live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)
        for logs in history:  # a resumed run rewrites the completed epochs: same files as uninterrupted
            for key, value in logs.items():
                live.log_metric(key, value)
            live.next_step()

    steps_per_epoch = len(train_loader)
    total_steps = max(1, mp.epochs * steps_per_epoch)
    # save_checkpoint adds model_params, build arguments and parameter counts itself.
    # No wall-clock figures here: meta.json must be identical across identical runs.
    # runtime: the threads, device and precision the weights were computed with (bit-for-bit
    # comparable runs have equal records; `ser report` shows it).
    meta = {"model": name, "study": mp.study, "labels": labels, "input": mp.input, "features": data.meta,
            "fold": params.fold, "seed": params.seed, "runtime": runtime}
    if dann:
        meta.update(lambda_domain=params.lambda_domain, max_alpha=params.max_alpha)
    step.train()
    for epoch in range(start_epoch, mp.epochs):
        if stopped_early:
            break
        started = time.perf_counter()
        # Every random stream of this epoch derives from (seed, epoch, process): resume-safe.
        _seed_everything(epoch_seed(params.seed, epoch, accelerator.process_index))
        _set_epoch(train_loader, data.train_set, train_sampler, epoch)
        targets = (_target_batches(target_loader, data.target_set, target_sampler, epoch) if dann else None)
        masks = (torch.Generator().manual_seed(epoch_seed(params.seed, epoch, accelerator.process_index,
                                                          _AUGMENT_STREAM))
                 if mp.spec_augment is not None else None)
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        # disable=None: a bar on a terminal only; per-epoch log lines elsewhere (CI logs).
        bar = tqdm(train_loader, desc=f"{name} epoch {epoch + 1}/{mp.epochs}", disable=None if main else True,
                   leave=False)
        for i, batch in enumerate(bar):
            progress = min(1.0, (epoch * steps_per_epoch + i) / total_steps)
            # DANN's target batches are masked too: masks only on source clips would be a domain cue.
            target_batch = _augment(next(targets), mp, masks) if targets else None
            loss, logs = step(objective, _augment(batch, mp, masks), target_batch, progress)
            accelerator.backward(loss)
            if mp.optim.grad_clip:
                accelerator.clip_grad_norm_(step.parameters(), mp.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float().to(accelerator.device)
            n_steps += 1
            bar.set_postfix(loss=f"{float(logs['loss']):.3f}")
        if not n_steps:
            raise RuntimeError(f"{store_root}/train: no training batches")
        means = accelerator.reduce(torch.stack(list(sums.values())) / n_steps, reduction="mean")
        epoch_logs = {f"train/{k}": float(v) for k, v in zip(sums, means)}
        epoch_logs.update(_validate(accelerator, net, data, labels, dann))
        for k, group in enumerate(optimizer.param_groups):
            epoch_logs[f"lr/{group.get('name', k)}"] = float(group["lr"])
        if scheduler is not None:
            scheduler.step(epoch_logs["val/uar"])
        train_seconds += time.perf_counter() - started
        log.info("%s epoch %d/%d: %s", name, epoch + 1, mp.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in epoch_logs.items()))

        if epoch_logs["val/uar"] > best["uar"]:
            val = {k.split("/", 1)[1]: v for k, v in epoch_logs.items() if k.startswith("val/")}
            best = {"uar": epoch_logs["val/uar"], "epoch": epoch + 1, "val": val}
            if main:
                # The best model lives beside the resume state until the run ends: DVC deletes
                # out_dir before re-running a stage, so a resumed run must not depend on it.
                save_checkpoint(net, resume_dir / BEST_DIR, {**meta, "best_epoch": epoch + 1, "val": val})
                log.info("new best val UAR %.4f at epoch %d", best["uar"], epoch + 1)
        history.append(epoch_logs)
        stopped_early = _stops_early(mp, best["epoch"], epoch + 1)
        if main:
            for key, value in epoch_logs.items():
                live.log_metric(key, value)
            live.next_step()
            # stopped_early is part of the state: a run killed right after its last epoch resumes as finished.
            _save_resume(resume_dir, net, {
                "epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "best": best, "history": history, "train_seconds": train_seconds, "fingerprint": fp, "runtime": runtime,
                "patience": mp.patience, "stopped_early": stopped_early})
            log.info("wrote resume state for epoch %d to %s", epoch + 1, resume_dir)
        accelerator.wait_for_everyone()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, epoch_logs)
        if stopped_early:
            log.info("%s: early stop after epoch %d: val UAR has not improved for %d epochs (best %.4f at epoch %d)",
                     name, epoch + 1, mp.patience, best["uar"], best["epoch"])

    epochs_run = len(history)
    result = {"model": name, "best_epoch": best["epoch"], "val": best["val"], "epochs": mp.epochs,
              "epochs_run": epochs_run, "stopped_early": stopped_early, "resumed_from_epoch": start_epoch,
              "train_seconds": train_seconds, "parameters": {"total": int(total), "trainable": int(trainable)},
              "history": history}
    if main:
        # The best checkpoint was written mid-run; its meta gets how the run ended.
        best_model, _ = load_checkpoint(resume_dir / BEST_DIR, cache_dir=out_dir / BACKBONE_CACHE)
        save_checkpoint(best_model, out_dir, {**meta, "best_epoch": best["epoch"], "val": best["val"],
                                              "epochs_run": epochs_run, "stopped_early": stopped_early})
        if timing_path is not None:
            _write_timing(Path(timing_path), name, result)
        live.end()
        shutil.rmtree(resume_dir, ignore_errors=True)
        log.info("finished %s: best val UAR %.4f at epoch %d of %d run; wrote %s and %s; removed %s", name,
                 best["uar"], best["epoch"], epochs_run, out_dir, live_dir, resume_dir)
    accelerator.wait_for_everyone()
    return result
