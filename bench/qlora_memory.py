"""Benchmark: one training step of wav2vec2-large-XLSR-53 - full fine-tune vs LoRA vs QLoRA.

    python bench/qlora_memory.py [--device auto|cpu|cuda] [--batch 2] [--seconds 3] [--steps 2]
                                 [--configs full,lora,qlora] [--checkpointing off,on] [--threads N]
                                 [--cache-dir bench/.cache] [--preset wav2vec2-large-xlsr]

The backbone is the real wav2vec2-large-XLSR-53 architecture (315M parameters)
with random weights (`random:wav2vec2-large-xlsr`, built once from its config and
saved with save_pretrained into --cache-dir, ~1.3 GB, so that it re-loads through
from_pretrained like a hub checkpoint - which 4-bit loading needs). The three
configurations are the paper profile's (profiles/paper.yaml):

  full   models.finetune (encoder.regime full): every weight trained in fp32 with AdamW
         (conv feature encoder frozen);
  lora   models.qlora with regime lora: frozen fp32 backbone, LoRA adapters + head;
  qlora  models.qlora (regime qlora): backbone Linear layers in 4-bit NF4 with double
         quantization, LoRA + head, loaded from the pre-quantized 4-bit copy
         (ser.models.quant_cache, <cache-dir>/quantized/);

each with gradient checkpointing off and on (layerdrop off, so every run uses
all 24 layers). A training step is what the trainer does (ser.train.loop:
CrossEntropy objective inside the accelerate-prepared step module,
model.param_groups, AdamW, gradient clipping) on a batch of --batch clips of
--seconds s of 16 kHz audio; the first step also allocates the optimizer state.

Every (configuration, checkpointing) pair runs in its own fresh subprocess, so
one's memory cannot pollute another's. With qlora, an untimed subprocess first
measures the first-time load (a fresh quantized cache: quantizing from the fp32
weights, saving the 4-bit copy, loading it back), reported separately, and
leaves the copy in <cache-dir>/quantized/ for the qlora runs, which then load
as every later run does: from the 4-bit copy, never reading the fp32 weights. On the CPU, memory is the process's
peak resident set size (getrusage ru_maxrss) minus a baseline taken after the
imports; the high-water mark is reset (/proc/self/clear_refs) after loading, so
the loading peak and the training-step peak are measured separately (the
process peak is the larger of the two). A sampling thread splits each peak
into anonymous memory and file-backed pages (the memory-mapped checkpoint).
On CUDA it is torch.cuda.max_memory_allocated (reset between load and step),
with bf16 autocast as the trainer uses there and bf16 compute for the 4-bit
matmuls. Prints a table and the ratios qlora/full and lora/full; writes
bench/results/qlora_memory.json (qlora_memory_cuda.json on CUDA).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = ("full", "lora", "qlora")
PRESET = "wav2vec2-large-xlsr"
MiB = 2 ** 20
RESULT_PREFIX = "RESULT "
# Targets: QLoRA's training peak (issue 4) and its whole-process peak, loading included
# (issue 11), at most this fraction of the full fine-tune's; fewer than TRAINABLE_TARGET of
# the parameters trainable.
PEAK_TARGET = 0.35
TRAINABLE_TARGET = 0.02


# --------------------------------------------------------------------------- measurement helpers
def peak_rss_bytes() -> int:
    """High-water mark of this process's resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_split() -> dict[str, int]:
    """Resident bytes now: anonymous (heap, tensors) and file-backed (mapped files, e.g. a checkpoint)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line[3:7].lower()] = int(line.split()[1]) * 1024
    return out


class RssSampler:
    """Samples rss_split() every `interval` s in a thread: the peak of each part while the block runs.

    ru_maxrss gives the exact peak of the sum; this shows what it consisted of.
    """

    def __init__(self, interval: float = 0.01) -> None:
        import threading
        self.interval = interval
        self.peak = {"anon": 0, "file": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in rss_split().items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand glibc's freed heap pages back to the OS.

    Without it, buffers freed after loading (e.g. fp32 weights that were
    quantized) may stay resident and be counted in the step's peak.
    """
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def tensor_bytes(tensors) -> int:
    """Bytes held by distinct tensors (each counted once), a 4-bit weight's quantization state included."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        for part in [t, *quant_state_tensors(getattr(t, "quant_state", None))]:
            if part is None or id(part) in seen:
                continue
            seen.add(id(part))
            total += part.numel() * part.element_size()
    return total


def quant_state_tensors(qs: Any) -> list:
    """absmax, code and offset of a bitsandbytes QuantState and of its nested state (double quantization)."""
    out = []
    while qs is not None:
        out += [t for t in (getattr(qs, name, None) for name in ("absmax", "code", "offset"))
                if hasattr(t, "element_size")]
        qs = getattr(qs, "state2", None)
    return out


def weight_bytes(model) -> int:
    """Bytes of every parameter and buffer of `model` (packed bytes for 4-bit weights)."""
    return tensor_bytes(list(model.parameters()) + list(model.buffers()))


def optimizer_state_bytes(optimizer) -> int:
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values()
                        if hasattr(v, "element_size"))


def preset_name(preset: str) -> str:
    """`random:<family>-<size>` or `<family>-<size>` -> `<family>-<size>`."""
    return preset.split(":", 1)[1] if preset.startswith("random:") else preset


def model_params_for(config: str, checkpointing: bool, profile: Path, preset: str = PRESET):
    """The paper profile's ModelParams for `config`, on a random backbone of `preset`."""
    import dataclasses

    from ser.config import load_params

    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; known: {list(CONFIGS)}")
    models = load_params(profile).models
    mp = models["finetune" if config == "full" else "qlora"]
    if mp.encoder is None:
        raise ValueError(f"{profile}: models.{'finetune' if config == 'full' else 'qlora'} has no encoder section")
    if config != "full" and mp.encoder.lora is None:
        raise ValueError(f"{profile}: models.qlora.encoder has no lora section")
    enc = dataclasses.replace(mp.encoder, backbone=f"random:{preset_name(preset)}", regime=config,
                              gradient_checkpointing=checkpointing)
    return dataclasses.replace(mp, encoder=fit_lora_layers(enc))


def n_layers_of(backbone: str) -> int:
    """Transformer layers of a backbone spec (random presets: from the preset's config, no weights)."""
    from ser.models.encoders import encoder_config

    config = encoder_config(backbone)
    return int(getattr(config, "encoder_layers", None) or config.num_hidden_layers)


def fit_lora_layers(enc, reference: str = PRESET):
    """EncoderParams whose lora.layers fit its random preset: a smaller preset (smoke runs) gets
    the same share of upper layers as the profile's layers of the `reference` preset."""
    import dataclasses

    if not enc.backbone.startswith("random:") or enc.lora is None or not enc.lora.layers:
        return enc
    n_layers = n_layers_of(enc.backbone)
    if max(enc.lora.layers) < n_layers:
        return enc
    share = len(enc.lora.layers) / n_layers_of(f"random:{preset_name(reference)}")
    upper = tuple(range(n_layers - max(1, round(share * n_layers)), n_layers))
    return dataclasses.replace(enc, lora=dataclasses.replace(enc.lora, layers=upper))


class LogRecorder(logging.Handler):
    """Collects the messages of a logger (here: what the quantized-model cache did)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "LogRecorder":
        self.logger.addHandler(self)
        self.level_before = self.logger.level
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


def quantized_copy_use(messages: list[str]) -> Optional[str]:
    """'loaded' (the 4-bit copy was read), 'built' (quantized from fp32, then saved) or None (no 4-bit model)."""
    if any("quantizing to 4-bit" in m or "quantizing on load" in m for m in messages):
        return "built"
    return "loaded" if any("pre-quantized 4-bit copy" in m for m in messages) else None


def speech_batch(batch: int, seconds: float, n_classes: int, seed: int = 0, sample_rate: int = 16000) -> dict:
    """A deterministic batch of `batch` clips (harmonic tone + noise), all `seconds` long."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    n = int(round(seconds * sample_rate))
    t = torch.arange(n) / sample_rate
    f0 = 100 + 150 * torch.rand(batch, 1, generator=gen)
    x = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 6)) * 0.2
    x = x + 0.01 * torch.randn(batch, n, generator=gen)
    return {"x": x.float(), "lengths": torch.full((batch,), n, dtype=torch.long),
            "y": torch.arange(batch) % n_classes}


# --------------------------------------------------------------------------- one configuration (child)
def run_child(config: str, checkpointing: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Load one configuration and run --steps training steps (0: load only); returns the measurements."""
    import torch

    from ser.config import TrainParams, load_params
    from ser.models import build_model
    from ser.train.loop import ObjectiveModule, make_accelerator, train_step
    from ser.train.objectives import CrossEntropy
    import bitsandbytes  # noqa: F401  (imported before the baseline: it is part of every configuration's imports)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    accelerator = make_accelerator(TrainParams(device="cuda" if cuda else "cpu", mixed_precision="auto"))
    device = accelerator.device
    release_free_memory()
    resettable = reset_peak_rss()
    baseline = peak_rss_bytes()  # after the reset: the resident memory after the imports
    split0 = rss_split()

    profile = Path(args.profile)
    mp = model_params_for(config, checkpointing, profile, args.preset)
    n_classes = len(load_params(profile).study(mp.study).labels)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with RssSampler() as sampler, LogRecorder("ser.models.quant_cache") as cache_log:
        model = build_model(mp, n_classes, cache_dir=Path(args.cache_dir), name=config)
    # layerdrop (0.1 in XLSR's config) skips random layers in training: off, so every
    # configuration runs the same 24 layers and the numbers do not depend on the draw.
    model.base_model.config.layerdrop = 0.0
    load_seconds = time.perf_counter() - t0
    load_peak = peak_rss_bytes() - baseline
    total, trainable = model.count_parameters()
    result: dict[str, Any] = {
        "config": config, "gradient_checkpointing": checkpointing, "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "mixed_precision": accelerator.mixed_precision, "compute_dtype": model.compute_dtype,
        "parameters": total, "trainable": trainable, "trainable_fraction": trainable / total,
        "load_seconds": load_seconds, "quantized_copy": quantized_copy_use(cache_log.messages),
        "baseline_rss_bytes": baseline, "rss_peak_reset": resettable,
        "load_peak_rss_bytes": load_peak,
        # sampled: what the loading peak consisted of (file = the memory-mapped checkpoint)
        "load_peak_anon_bytes": sampler.peak["anon"] - split0["anon"],
        "load_peak_file_bytes": sampler.peak["file"] - split0["file"],
    }

    optimizer = torch.optim.AdamW(model.param_groups(mp.optim), lr=mp.optim.lr, weight_decay=mp.optim.weight_decay)
    step = ObjectiveModule(model)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step, optimizer = accelerator.prepare(step, optimizer)
    net = accelerator.unwrap_model(step).model
    result["weight_bytes"] = weight_bytes(net)
    if cuda:
        torch.cuda.synchronize()
        result["cuda_load_peak_bytes"] = torch.cuda.max_memory_allocated()
        result["cuda_weight_bytes"] = torch.cuda.memory_allocated()
    release_free_memory()
    result["resident_after_load_bytes"] = current_rss_bytes() - baseline
    if args.steps == 0:
        return result
    if resettable:
        reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    batch = {k: v.to(device) for k, v in speech_batch(args.batch, args.seconds, n_classes).items()}
    objective = CrossEntropy()
    step.train()
    times, losses = [], []
    with RssSampler() as sampler:  # sampled during the steps: what the step peak consisted of
        for _ in range(args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss, _ = train_step(accelerator, step, optimizer, objective, batch, None, 0.0, mp.optim.grad_clip)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    result.update(
        step_peak_anon_bytes=sampler.peak["anon"] - split0["anon"],
        step_peak_file_bytes=sampler.peak["file"] - split0["file"],
        step_peak_rss_bytes=peak_rss_bytes() - baseline,
        optimizer_state_bytes=optimizer_state_bytes(optimizer),
        step_seconds=times, losses=losses)
    if cuda:
        result["cuda_step_peak_bytes"] = torch.cuda.max_memory_allocated()
    return result


def first_load(args: argparse.Namespace) -> dict[str, Any]:
    """Measure qlora's first-time load in a subprocess (an empty quantized cache: quantize from the
    fp32 weights, save the 4-bit copy, load it back), then move the copy into <cache-dir>/quantized/,
    where the qlora runs load it as every later run does.

    The subprocess gets a fresh cache folder holding a link to the random backbone: the same
    source (the key fingerprints the resolved directory), so the same copy."""
    cache = Path(args.cache_dir).resolve()
    preset = preset_name(args.preset)
    with tempfile.TemporaryDirectory(prefix=".first-load-", dir=cache) as tmp:
        (Path(tmp) / preset).symlink_to(cache / preset, target_is_directory=True)
        result = spawn(args, "--child", "qlora:off", "--steps", "0", "--cache-dir", tmp)
        built = Path(tmp) / "quantized"
        (cache / "quantized").mkdir(exist_ok=True)
        for entry in built.iterdir() if built.is_dir() else []:
            target = cache / "quantized" / entry.name
            if target.exists():
                shutil.rmtree(target)  # the same key: replace with the copy just built
            entry.rename(target)
    if result.get("quantized_copy") != "built":
        raise RuntimeError(f"the first-time load did not quantize (quantized_copy: {result.get('quantized_copy')})")
    return result


# --------------------------------------------------------------------------- parent
def headline(r: dict[str, Any], cuda: bool) -> dict[str, Optional[float]]:
    """The memory figures compared across configurations (bytes)."""
    if cuda:
        step, load = r["cuda_step_peak_bytes"], r["cuda_load_peak_bytes"]
    else:
        step, load = r["step_peak_rss_bytes"], r["load_peak_rss_bytes"]
    return {"step_peak": step, "load_peak": load, "process_peak": max(step, load), "weights": r["weight_bytes"]}


def load_peak(r: dict[str, Any], cuda: bool) -> int:
    return r["cuda_load_peak_bytes"] if cuda else r["load_peak_rss_bytes"]


def ratios(results: list[dict[str, Any]], cuda: bool) -> dict[str, dict[str, float]]:
    """qlora/full and lora/full per checkpointing setting, for each headline figure and trainable params."""
    by_key = {(r["config"], r["gradient_checkpointing"]): r for r in results}
    out: dict[str, dict[str, float]] = {}
    for (config, ckpt), r in by_key.items():
        full = by_key.get(("full", ckpt))
        if config == "full" or full is None:
            continue
        mine, ref = headline(r, cuda), headline(full, cuda)
        out[f"{config}/full, checkpointing {'on' if ckpt else 'off'}"] = {
            **{k: mine[k] / ref[k] for k in mine}, "trainable": r["trainable"] / full["trainable"],
            "step_seconds": steady(r) / steady(full)}
    return out


def steady(r: dict[str, Any]) -> float:
    """Seconds per step after the first (which also allocates the optimizer state)."""
    times = r["step_seconds"]
    return sum(times[1:]) / len(times[1:]) if len(times) > 1 else times[0]


def file_part(r: dict[str, Any], phase: str, cuda: bool) -> str:
    """The file-backed part of a host-RSS peak, in MiB (not shown for CUDA memory)."""
    return f"{'-':>7s}" if cuda else f"{r[f'{phase}_peak_file_bytes'] / MiB:7.0f}"


def format_table(results: list[dict[str, Any]], cuda: bool) -> str:
    mem = "CUDA max_memory_allocated" if cuda else "peak RSS above the post-import baseline"
    head = (f"{'config':7s} {'ckpt':4s} {'params M':>8s} {'trainable':>11s} {'weights':>8s} {'load pk':>8s} "
            f"{'(file)':>7s} {'step pk':>8s} {'(file)':>7s} {'opt st':>7s} {'1st s':>6s} {'step s':>6s}")
    lines = [f"memory in MiB: {mem}; (file): sampled file-backed part of the peak above "
             "(the memory-mapped checkpoint)", head]
    for r in results:
        h = headline(r, cuda)
        lines.append(
            f"{r['config']:7s} {'on' if r['gradient_checkpointing'] else 'off':4s} {r['parameters'] / 1e6:8.1f} "
            f"{r['trainable'] / 1e6:6.2f}M{100 * r['trainable_fraction']:4.1f}% {h['weights'] / MiB:8.0f} "
            f"{h['load_peak'] / MiB:8.0f} {file_part(r, 'load', cuda)} {h['step_peak'] / MiB:8.0f} "
            f"{file_part(r, 'step', cuda)} {r['optimizer_state_bytes'] / MiB:7.0f} "
            f"{r['step_seconds'][0]:6.2f} {steady(r):6.2f}")
    return "\n".join(lines)


def spawn(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run this script in a fresh interpreter and parse its RESULT line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--batch", str(args.batch),
           "--seconds", str(args.seconds), "--steps", str(args.steps), "--cache-dir", str(args.cache_dir),
           "--profile", str(args.profile), "--preset", args.preset, "--threads", str(args.threads), *extra]
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(extra)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=2, help="training steps per configuration (peak over all)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--checkpointing", default="off,on", help="gradient checkpointing settings to run")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "bench" / ".cache",
                    help="where the random backbone is saved once (~1.3 GB) and reused")
    ap.add_argument("--profile", type=Path, default=REPO / "profiles" / "paper.yaml",
                    help="params file whose models.finetune / models.qlora define the configurations")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, one per core); 1 avoids oversubscription "
                         "when other jobs share the cores")
    ap.add_argument("--preset", default=PRESET,
                    help="random wav2vec2 preset, [random:]<family>-<size> (wav2vec2-tiny: a smoke run in seconds)")
    ap.add_argument("--out", type=Path,
                    help="default: bench/results/qlora_memory.json (qlora_memory_cuda.json on CUDA)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.preset = preset_name(args.preset)

    if args.prepare:  # child: materialise the random backbone once
        from ser.models.encoders import random_backbone_dir
        path = random_backbone_dir(args.preset, args.cache_dir)
        print(RESULT_PREFIX + json.dumps({"path": str(path)}))
        return
    if args.child:
        config, ckpt = args.child.split(":")
        print(RESULT_PREFIX + json.dumps(run_child(config, ckpt == "on", args)))
        return

    configs = [c for c in args.configs.split(",") if c]
    settings = [s for s in args.checkpointing.split(",") if s]
    bad = [c for c in configs if c not in CONFIGS] + [s for s in settings if s not in ("off", "on")]
    if bad:
        ap.error(f"unknown configuration / checkpointing value(s) {bad}; configs: {list(CONFIGS)}, "
                 "checkpointing: off,on")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    backbone = spawn(args, "--prepare")["path"]
    print(f"random {args.preset} backbone: {backbone} ({time.perf_counter() - t0:.0f} s)", flush=True)
    first = None
    if "qlora" in configs:  # untimed for the qlora runs: builds the 4-bit copy they load
        first = first_load(args)
        print(f"  qlora first-time load (quantize from fp32, save the 4-bit copy, reload): peak "
              f"{load_peak(first, first['device'].startswith('cuda')) / MiB:7.0f} MiB, "
              f"{first['load_seconds']:.1f} s", flush=True)
    results = []
    for ckpt in settings:
        for config in configs:
            r = spawn(args, "--child", f"{config}:{ckpt}")
            if config == "qlora" and r["quantized_copy"] != "loaded":
                raise RuntimeError(f"qlora {ckpt}: the pre-quantized copy was not used ({r['quantized_copy']})")
            print(f"  {config:6s} checkpointing {ckpt:3s}: step peak "
                  f"{headline(r, r['device'].startswith('cuda'))['step_peak'] / MiB:7.0f} MiB, "
                  f"{steady(r):.2f} s/step", flush=True)
            results.append(r)
    cuda = results[0]["device"].startswith("cuda")
    device = "cuda" if cuda else "cpu"
    arch = "wav2vec2-large-XLSR-53 architecture" if args.preset == PRESET else f"random:{args.preset}"
    print(f"\n{arch}, random weights; one training step = batch of "
          f"{args.batch} x {args.seconds:g} s at 16 kHz; {args.steps} steps per configuration, each in its own "
          f"process; {os.cpu_count()} CPU cores, {results[0]['torch_threads']} torch thread(s) "
          f"(1-min load average before: {load_before:.2f})")
    print(format_table(results, cuda))
    rat = ratios(results, cuda)
    print("\nratios (same checkpointing setting)      step peak  load peak  process peak  weights  trainable  "
          "step time")
    for name, r in rat.items():
        print(f"{name:40s} {r['step_peak']:9.3f} {r['load_peak']:10.3f} {r['process_peak']:13.3f} "
              f"{r['weights']:8.3f} {r['trainable']:10.4f} {r['step_seconds']:10.2f}")
    if first is not None:
        first["process_peak_over_full"] = {}
        for r in results:
            if r["config"] == "full":
                key = f"checkpointing {'on' if r['gradient_checkpointing'] else 'off'}"
                first["process_peak_over_full"][key] = load_peak(first, cuda) / headline(r, cuda)["process_peak"]
        print(f"qlora first-time load (quantizing from the fp32 weights, once per backbone and setting): "
              f"peak {load_peak(first, cuda) / MiB:.0f} MiB"
              + ("" if cuda else f" ({first['load_peak_file_bytes'] / MiB:.0f} file-backed)")
              + f", {first['load_seconds']:.1f} s; later loads: the 4-bit copy, "
              + ", ".join(f"{load_peak(r, cuda) / MiB:.0f} MiB in {r['load_seconds']:.1f} s"
                          for r in results if r["config"] == "qlora")
              + "".join(f"; first-time load / full process peak ({k}): {v:.3f}"
                        for k, v in first["process_peak_over_full"].items()))
    checks = {}
    for r in results:
        if r["config"] == "qlora":
            key = f"checkpointing {'on' if r['gradient_checkpointing'] else 'off'}"
            peak = rat.get(f"qlora/full, {key}", {}).get("step_peak")
            process = rat.get(f"qlora/full, {key}", {}).get("process_peak")
            checks[key] = {"peak_ratio": peak, "peak_ok": peak is not None and peak <= PEAK_TARGET,
                           "process_peak_ratio": process,
                           "process_peak_ok": process is not None and process <= PEAK_TARGET,
                           "trainable_fraction": r["trainable_fraction"],
                           "trainable_ok": r["trainable_fraction"] < TRAINABLE_TARGET}
            print(f"target QLoRA step peak <= {PEAK_TARGET:.0%} of full ({key}): "
                  + (f"{peak:.1%} {'met' if checks[key]['peak_ok'] else 'MISSED'}" if peak is not None else "n/a")
                  + f"; process peak, loading included, <= {PEAK_TARGET:.0%}: "
                  + (f"{process:.1%} {'met' if checks[key]['process_peak_ok'] else 'MISSED'}"
                     if process is not None else "n/a")
                  + f"; trainable < {TRAINABLE_TARGET:.0%}: {r['trainable_fraction']:.2%} "
                  + ("met" if checks[key]["trainable_ok"] else "MISSED"))

    name = "qlora_memory.json" if device == "cpu" else f"qlora_memory_{device}.json"
    out = args.out or REPO / "bench" / "results" / name
    payload = {"device": device, "batch": args.batch, "seconds": args.seconds, "steps": args.steps,
               "preset": args.preset, "profile": str(Path(args.profile).resolve().relative_to(REPO))
               if Path(args.profile).resolve().is_relative_to(REPO) else str(args.profile),
               "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "load_average_before": round(load_before, 2),
               "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
               "memory_method": ("torch.cuda.max_memory_allocated" if cuda else
                                 "ru_maxrss minus the post-import baseline; high-water mark reset after loading"),
               "qlora_load": "the pre-quantized 4-bit copy (ser.models.quant_cache), built by first_load",
               "first_load": first, "results": results, "ratios": rat, "targets": checks}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
