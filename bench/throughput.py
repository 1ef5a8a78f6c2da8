"""Benchmark: training throughput per model vs the data loader's, and padding waste of waveform batches.

    python bench/throughput.py [--params profiles/paper.yaml] [--models baseline,dann,wav2vec_dann,qlora]
                               [--steps 3] [--crnn-steps 10] [--wave-batch 4] [--n 256]
                               [--device auto|cpu|cuda] [--lengths-from data/features/waves/cross_corpus]

A synthetic feature store is written with ser.features.stores.write_store into a temp
dir at realistic sizes (mels 128 x 300; 16 kHz waves of 1-6 s, lognormal
lengths), in the layout the trainer reads (<root>/<mels|waves>/<study>/f<fold>/,
the fold of the params' run).
Each model of the paper profile (profiles/paper.yaml: the reference
hyperparameters) is trained for a few steps after warm-up through the
trainer's own pieces (ser.train.loop: the Trainer's loaders, accelerate-prepared
step module, the model's objective - CrossEntropy or DomainAdversarial - and
param_groups, its optimizer, gradient clipping), with the hub backbones
replaced by random weights of the same architecture (no download):

  wav2vec_dann  wav2vec2-base (random:wav2vec2-base, 95M; regime full, conv encoder frozen; DANN);
  qlora         wav2vec2-large-XLSR-53 (random:wav2vec2-large-xlsr, 315M), regime qlora: 4-bit
                NF4 + LoRA (upper 12 layers, gradient checkpointing, as in the profile).

A qlora model's 4-bit copy (ser.models.quant_cache, <cache-dir>/quantized/) is built first in
an untimed subprocess (its time reported as quantize_seconds), so build_seconds is the load
from the pre-quantized copy, as in every run after the first.

Model throughput counts every clip a step reads (DANN: source + target
batch) over the compute time of the timed steps (batches are fetched first,
so loading is not in it). The loader's throughput is one epoch of the same
loaders (same store, batch size, bucketing and crops) with no model.
Padding waste (ser.features.dataset.padding_waste) of the EpochBatchSampler's batches is
reported with and without length bucketing on lognormal 1-6 s lengths (and on
a real waveform store's lengths with --lengths-from).
Prints tables; writes bench/results/throughput.json (throughput_cuda.json on CUDA).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm at import: keeps the tables readable
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.qlora_memory import fit_lora_layers  # noqa: E402
from ser.config import ModelParams, Params, load_params  # noqa: E402
from ser.features.dataset import EpochBatchSampler, padding_waste  # noqa: E402
from ser.features.stores import FeatureStore, IndexRow, write_store  # noqa: E402
from ser.train.loop import Trainer, set_epoch, target_batches  # noqa: E402

SAMPLE_RATE = 16000
# Backbones swapped in so the numbers are those of the real architectures' sizes.
BACKBONES = {"wav2vec_dann": "random:wav2vec2-base", "qlora": "random:wav2vec2-large-xlsr"}
TINY = "random:wav2vec2-tiny"
LOADER_TARGET = 10.0    # the loader must deliver >= 10x what the fastest model consumes
PADDING_TARGET = 0.10   # padding waste with length bucketing


# --------------------------------------------------------------------------- synthetic data
def lognormal_seconds(n: int, seed: int = 0, median: float = 2.5, sigma: float = 0.45,
                      low: float = 1.0, high: float = 6.0) -> np.ndarray:
    """Clip durations in seconds: lognormal around `median`, clipped to [low, high] (crops / min length)."""
    rng = np.random.default_rng(seed)
    return np.clip(median * np.exp(sigma * rng.standard_normal(n)), low, high)


def write_stores(root: Path, params: Params, n: int, seed: int = 0, n_mels: int = 128,
                 frames: int = 300) -> dict[str, Path]:
    """Synthetic mels and waves stores for every study of `params` (train, val and - for a
    study with a target corpus - adapt), in the trainer's layout <root>/<kind>/<study>/f<fold>/
    (one fold: `params.fold`, the run the trainer reads).

    Returns {f"{kind}/{study}": the fold folder (what FeatureStore opens)}.
    """
    rng = np.random.default_rng(seed)
    sizes = {"train": n, "val": max(4, n // 16), "adapt": n}
    out: dict[str, Path] = {}
    for study_name, study in params.studies.items():
        labels = list(study.labels)
        splits = [s for s in sizes if s != "adapt" or study.target is not None]
        for kind in ("mels", "waves"):
            arrays = {}
            for split in splits:
                count = sizes[split]
                emotions = [labels[i % len(labels)] for i in range(count)]
                domain = 1 if split == "adapt" else 0
                if kind == "mels":
                    array = rng.standard_normal((count, n_mels, frames), dtype=np.float32)
                    valid = rng.integers(frames // 3, frames + 1, count)
                    rows = [IndexRow(f"{split}_{i:05d}", "synthetic", f"spk{i % 8}", emotions[i], domain, i,
                                     int(valid[i])) for i in range(count)]
                else:
                    lengths = (lognormal_seconds(count, seed=seed + len(out) + domain) * SAMPLE_RATE).astype(np.int64)
                    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                    array = 0.1 * rng.standard_normal(int(lengths.sum()), dtype=np.float32)
                    rows = [IndexRow(f"{split}_{i:05d}", "synthetic", f"spk{i % 8}", emotions[i], domain,
                                     int(offsets[i]), int(lengths[i])) for i in range(count)]
                arrays[split] = (array, rows)
            # The synthetic mels are already standard normal: no fold statistics, read as stored.
            out[f"{kind}/{study_name}"] = write_store(
                root / kind / study_name, arrays, {"kind": kind, "sample_rate": SAMPLE_RATE, "labels": labels,
                                                   "target": study.target, "synthetic": True}, fold=params.fold)
    return out


def bench_params(params: Params, backbones: dict[str, str], wave_batch: Optional[int]) -> Params:
    """params with the benchmark's backbones and (optionally) the waveform models' batch size."""
    models = {}
    for name, mp in params.models.items():
        if mp.encoder is not None and mp.input == "waves":
            enc = mp.encoder
            if name in backbones:
                enc = fit_lora_layers(dataclasses.replace(enc, backbone=backbones[name]))
            mp = dataclasses.replace(mp, encoder=enc, batch_size=wave_batch or mp.batch_size)
        models[name] = mp
    return dataclasses.replace(params, models=models)


# --------------------------------------------------------------------------- measurements
def prepare_quantized(mp: ModelParams, cache_dir: Optional[Path]) -> Optional[float]:
    """Build a qlora model's pre-quantized 4-bit copy in a subprocess (fp32 weights read there, not
    in this process); seconds it took, None for other regimes. Reuses an existing copy."""
    if mp.encoder is None or mp.encoder.regime != "qlora":
        return None
    code = ("import sys; from pathlib import Path; from ser.config import EncoderParams, LoraParams; "
            "from ser.models.encoders import load_backbone; "
            "load_backbone(EncoderParams(backbone=sys.argv[1], regime='qlora', lora=LoraParams()), "
            "Path(sys.argv[2]) if sys.argv[2] else None)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, mp.encoder.backbone, str(cache_dir or "")], check=True,
                   cwd=REPO, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                        "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - t0


def padding_report(lengths: Sequence[int] | np.ndarray, batch_sizes: Sequence[int], epochs: int = 5,
                   seed: int = 0) -> dict[int, dict[str, float]]:
    """Padding waste of the EpochBatchSampler's training batches, averaged over `epochs`,
    without and with length bucketing: {batch_size: {"unbucketed": w, "bucketed": w}}."""
    out: dict[int, dict[str, float]] = {}
    for bs in batch_sizes:
        out[bs] = {}
        for key, bucket in (("unbucketed", False), ("bucketed", True)):
            sampler = EpochBatchSampler(lengths, bs, seed=seed, shuffle=True, bucket=bucket)
            wastes = []
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                wastes.append(padding_waste(lengths, sampler.batches()))
            out[bs][key] = float(np.mean(wastes))
    return out


def _items(batch: dict) -> int:
    return int(batch["y"].shape[0])


def loader_throughput(data: Any, epochs: int = 2) -> dict[str, float]:
    """Clips per second that the run's training loader (and target loader, DANN) deliver, no model.

    Best of `epochs` passes over the training split (the first may fault pages in).
    """
    best = 0.0
    for epoch in range(epochs):
        set_epoch(data.train, data.train_set, data.train.batch_sampler, epoch)
        t0 = time.perf_counter()
        n = sum(_items(b) for b in data.train)
        if data.target is not None:  # DANN draws one target batch per source batch
            set_epoch(data.target, data.target_set, data.target.batch_sampler, epoch)
            n += sum(_items(b) for b in data.target)
        best = max(best, n / (time.perf_counter() - t0))
    return {"samples_per_s": best}


def model_throughput(params: Params, name: str, features_root: Path, *, steps: int, warmup: int,
                     device: str = "auto", cache_dir: Optional[Path] = None) -> dict[str, Any]:
    """Train `name` for warmup + steps steps through the trainer itself (ser.train.loop.Trainer and its
    `step`, the one optimizer step of every run); time the last `steps`."""
    mp = params.models[name]
    train = dataclasses.replace(params.train, device=device) if device != "auto" else params.train
    trainer = Trainer(params, name, features_root, train=train)
    loader = loader_throughput(trainer.data)
    t0 = time.perf_counter()
    trainer.build(cache_dir)
    build_seconds = time.perf_counter() - t0
    total, trainable = trainer.parameters
    trainer.prepare()
    accelerator, data = trainer.accelerator, trainer.data

    # Fetch the batches first: the timed loop measures what the model consumes, not loading.
    set_epoch(trainer.train_loader, data.train_set, trainer.train_sampler, 0)
    needed = warmup + steps
    batches = []
    while len(batches) < needed:  # small stores: wrap around into the next epoch
        for batch in trainer.train_loader:
            batches.append(batch)
            if len(batches) == needed:
                break
        set_epoch(trainer.train_loader, data.train_set, trainer.train_sampler, len(batches))
    targets = None
    if trainer.dann:
        stream = target_batches(trainer.target_loader, data.target_set, trainer.target_sampler, 0)
        targets = [next(stream) for _ in range(needed)]
    trainer.step_module.train()
    cuda = accelerator.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, clips, audio_s = 0.0, 0, 0.0
    for i in range(needed):
        target = targets[i] if targets else None
        sync()
        t0 = time.perf_counter()
        trainer.step(batches[i], target, i / needed)
        sync()
        if i >= warmup:
            seconds += time.perf_counter() - t0
            for b in (batches[i], target):
                if b is not None:
                    clips += _items(b)
                    if "lengths" in b:
                        audio_s += float(b["lengths"].sum()) / SAMPLE_RATE
    enc = mp.encoder
    result = {
        "model": name, "arch": mp.arch, "objective": mp.objective, "input": mp.input,
        "backbone": enc.backbone if enc else None, "regime": enc.regime if enc else None,
        "freeze_feature_encoder": enc.freeze_feature_encoder if enc else None,
        "gradient_checkpointing": enc.gradient_checkpointing if enc else None, "batch_size": mp.batch_size,
        "device": str(accelerator.device), "mixed_precision": accelerator.mixed_precision,
        "parameters": total, "trainable": trainable, "build_seconds": build_seconds,
        "steps": steps, "warmup": warmup, "seconds_per_step": seconds / steps,
        "samples_per_s": clips / seconds, "audio_seconds_per_s": audio_s / seconds if audio_s else None,
        "loader_samples_per_s": loader["samples_per_s"],
        "padding_waste": (padding_waste(data.train_set.lengths, [b["index"].tolist() for b in batches])
                          if mp.input == "waves" else None),
        "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
    }
    result["loader_over_model"] = result["loader_samples_per_s"] / result["samples_per_s"]
    del trainer, batches, targets
    gc.collect()
    return result


def fold_dir(store_dir: Path) -> Path:
    """A store's fold folder: `store_dir` itself, or the first fold of a study store (<kind>/<study>)."""
    meta = store_dir / "meta.json"
    if meta.is_file() and not (store_dir / "train.csv").is_file():
        folds = json.loads(meta.read_text()).get("folds") or [1]
        return store_dir / f"f{folds[0]}"
    return store_dir


# --------------------------------------------------------------------------- report
def format_models(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':13s} {'backbone':24s} {'batch':>5s} {'params M':>8s} {'train M':>8s} {'s/step':>7s} "
             f"{'samples/s':>9s} {'audio s/s':>9s} {'loader/s':>9s} {'loader/model':>12s}"]
    for r in rows:
        backbone = (r["backbone"] or r["arch"]).removeprefix("random:") + (
            " nf4" if r["regime"] == "qlora" else "")
        audio = f"{r['audio_seconds_per_s']:9.2f}" if r["audio_seconds_per_s"] else f"{'-':>9s}"
        lines.append(f"{r['model']:13s} {backbone:24s} {r['batch_size']:5d} {r['parameters'] / 1e6:8.2f} "
                     f"{r['trainable'] / 1e6:8.2f} {r['seconds_per_step']:7.2f} {r['samples_per_s']:9.2f} "
                     f"{audio} {r['loader_samples_per_s']:9.0f} {r['loader_over_model']:11.0f}x")
    return "\n".join(lines)


def format_padding(reports: dict[str, dict[int, dict[str, float]]]) -> str:
    width = max([len("lengths")] + [len(source) for source in reports])
    lines = [f"{'lengths':{width}s} {'batch':>5s} {'no bucketing':>13s} {'bucketing':>10s}"]
    for source, rep in reports.items():
        for bs, w in rep.items():
            lines.append(f"{source:{width}s} {bs:5d} {w['unbucketed']:12.1%} {w['bucketed']:10.1%}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "profiles" / "paper.yaml",
                    help="params file whose `models` are benchmarked (the demo profile: params.yaml)")
    ap.add_argument("--models", default="baseline,dann,wav2vec_dann,qlora")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per waveform model")
    ap.add_argument("--crnn-steps", type=int, default=10, help="timed steps per CRNN model")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--wave-batch", type=int, default=4,
                    help="batch size of the waveform models (the paper's wav2vec2-base DANN batch); 0: params.yaml's")
    ap.add_argument("--n", type=int, default=256, help="training clips per synthetic split")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "bench" / ".cache",
                    help="where the random backbones are saved once and reused")
    ap.add_argument("--lengths-from", type=Path, action="append", default=[],
                    help="a waveform store (data/features/waves/<study>: its first fold, or a fold folder "
                         "<study>/f<k>): also report padding waste on its train split's lengths")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, one per core); 1 avoids oversubscription "
                         "when other jobs share the cores")
    ap.add_argument("--tiny", action="store_true", help="tiny backbones (smoke run, seconds)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    params = load_params(args.params)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in params.models]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; {args.params} defines {sorted(params.models)}")
    backbones = {k: TINY for k in BACKBONES} if args.tiny else BACKBONES
    # The run measured: the first fold and seed of the params' folds x seeds.
    params = bench_params(params, backbones, args.wave_batch or None).for_run(params.folds[0], params.seeds[0])
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ser-throughput-") as tmp:
        t0 = time.perf_counter()
        write_stores(Path(tmp), params, args.n)
        print(f"synthetic stores ({args.n} training clips per split) written in {time.perf_counter() - t0:.1f} s",
              flush=True)
        for name in names:
            mp = params.models[name]
            steps = args.crnn_steps if mp.input == "mels" else args.steps
            quantize_seconds = prepare_quantized(mp, args.cache_dir)
            r = model_throughput(params, name, Path(tmp), steps=steps, warmup=args.warmup, device=args.device,
                                 cache_dir=args.cache_dir)
            r["quantize_seconds"] = quantize_seconds
            print(f"  {name}: {r['samples_per_s']:.1f} samples/s ({r['seconds_per_step']:.2f} s/step)", flush=True)
            rows.append(r)

    wave_batches = sorted({params.models[n].batch_size for n in names if params.models[n].input == "waves"} | {8})
    lognormal = (lognormal_seconds(4000, seed=1) * SAMPLE_RATE).astype(np.int64)
    reports = {"lognormal 1-6 s (median 2.5 s), 4000 clips": padding_report(lognormal, wave_batches)}
    for store_dir in args.lengths_from:
        store = FeatureStore(fold_dir(store_dir), "train")
        cap = int(6.0 * SAMPLE_RATE)  # the encoder models' max_seconds default crop
        shown = store_dir.resolve().relative_to(REPO) if store_dir.resolve().is_relative_to(REPO) else store_dir
        reports[f"{shown} train ({len(store)} clips)"] = padding_report(np.minimum(store.lengths, cap), wave_batches)

    device = rows[0]["device"].split(":")[0] if rows else "cpu"
    print(f"\n{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s), device {device} "
          f"(1-min load average before: {load_before:.2f}); "
          f"{args.warmup} warm-up step(s), then {args.crnn_steps} (CRNN) / {args.steps} (encoder) timed steps; "
          "samples/s counts every clip a step reads (DANN: source + target)")
    print(format_models(rows))
    checks: dict[str, Any] = {}
    if rows:
        fastest = max(rows, key=lambda r: r["samples_per_s"])
        loader_min = min(r["loader_samples_per_s"] for r in rows if r["input"] == fastest["input"])
        ratio = loader_min / fastest["samples_per_s"]
        checks["loader_over_fastest_model"] = {"model": fastest["model"], "ratio": ratio,
                                               "ok": ratio >= LOADER_TARGET}
        print(f"loader vs the fastest model ({fastest['model']}, {fastest['samples_per_s']:.0f} samples/s): "
              f"{ratio:.0f}x (target >= {LOADER_TARGET:.0f}x) {'met' if ratio >= LOADER_TARGET else 'MISSED'}")
    print("\npadding waste of waveform batches (EpochBatchSampler, mean of 5 epochs)")
    print(format_padding(reports))
    worst = max(w["bucketed"] for rep in reports.values() for w in rep.values())
    checks["padding_bucketed_max"] = {"waste": worst, "ok": worst < PADDING_TARGET}
    print(f"bucketed padding waste <= {worst:.1%} (target < {PADDING_TARGET:.0%}) "
          f"{'met' if worst < PADDING_TARGET else 'MISSED'}")

    name = "throughput.json" if device == "cpu" else f"throughput_{device}.json"
    out = args.out or REPO / "bench" / "results" / name
    payload = {"device": device, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(),
               "load_average_before": round(load_before, 2), "n": args.n, "tiny": args.tiny,
               "params": str(args.params), "models": rows,
               "padding_waste": {k: {str(bs): v for bs, v in rep.items()} for k, rep in reports.items()},
               "checks": checks}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
