"""Benchmark: probe training on cached embeddings vs running the frozen encoder at every step.

    python bench/probe_cache.py [--backbone random:wavlm-base] [--clips 48] [--clip-seconds 2,4] [--epochs 2]
                                [--batch-size 8] [--precompute-minutes 2] [--threads N]
                                [--out bench/results/probe_cache.json]

(1) Probe training time per epoch, side by side on the same data (N synthetic clips, uniform
    2-4 s at 16 kHz by default, fixed seed), the same head (layers weighted, projection 256,
    head_hidden 256), the same batch size and batch order, the same optimizer (AdamW through the
    model's param_groups) and the same random encoder of a real architecture (`random:<preset>`,
    ser.models.encoders.PRESETS), on the CPU:
      cached      ser.models.embeddings.embed_clips computes every clip's layer means once (its time is
                  reported separately as the one-off cost), then ProbeSER trains on them;
      on the fly  EncoderSER (regime frozen) trains on the zero-padded waveform batches, the
                  encoder running in every step, as the s3prl and SpeechBrain probing recipes do.
    Identical-result check: both heads start from the same weights (the on-the-fly model's head
    state dict is copied into the probe) and torch is reseeded identically before each epoch (the
    frozen encoder runs in eval mode and draws no random numbers; the head's dropout draws the
    same ones in both paths). After training, the two heads' parameters and their logits on the
    logits on the data must agree to --atol, their parameters to --param-atol (AdamW normalises
    each gradient: a weight whose gradient is float noise in both paths moves by up to lr per
    step). Two diagnostics say where a difference comes from: the on-the-fly encoder's layer
    means in the evaluation batches vs the cached ones, and the cached layer means vs those of
    each clip encoded alone (no padding), for the first --alone-clips clips. Encoders whose conv
    feature encoder normalises over time (feat_extract_norm "group": the base-size wav2vec2,
    HuBERT and WavLM), that take no attention mask, or that stack positional convolutions
    (data2vec-audio) see zero padding; EncoderSER runs those one clip length at a time, so both
    diagnostics are 0 for every family (`--clip-seconds 3,3`: equal lengths, no padding at all).
(2) The embedding precompute per hour of audio: a waveform store of --precompute-minutes of
    synthetic audio is written with ser.features.stores.write_store and ser.models.embeddings.precompute_embeddings
    runs on it in a fresh subprocess (on CUDA with bf16 autocast when there is one, as the stage
    does): wall time, embedding time, seconds per hour of audio, and the peak memory: the
    process's peak RSS (VmHWM, see peak_rss_mib) minus a baseline taken after the imports; on
    CUDA also torch.cuda.max_memory_allocated.
Prints the tables; writes bench/results/probe_cache.json; exits 1 when the check fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm at import: keeps the tables readable
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ser.config import EncoderParams, ModelParams, OptimParams  # noqa: E402

SAMPLE_RATE = 16000
N_CLASSES = 4


# --------------------------------------------------------------------------- data
def synth_clips(n: int, seed: int, low_s: float = 2.0, high_s: float = 4.0) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray, np.ndarray]:
    """(flat waveform array, offsets, lengths, labels) of n clips of random length in [low_s, high_s]:
    a gliding harmonic tone with syllable envelopes plus noise (speech-like level and spectrum)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(low_s * SAMPLE_RATE), int(high_s * SAMPLE_RATE) + 1, size=n).astype(np.int64)
    waves = []
    for length in lengths:
        t = np.arange(length) / SAMPLE_RATE
        f0 = rng.uniform(100, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * t), 0, None)
        waves.append((0.2 * voice * envelope + 0.01 * rng.standard_normal(length)).astype(np.float32))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    labels = rng.integers(0, N_CLASSES, size=n).astype(np.int64)
    return np.concatenate(waves), offsets, lengths, labels


def clips_for_minutes(minutes: float, low_s: float, high_s: float) -> int:
    """How many clips of low_s-high_s seconds make about `minutes` of audio (at least 1)."""
    return max(1, int(round(minutes * 60 / ((low_s + high_s) / 2))))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The shuffled batches of one epoch (the same in both paths)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def wave_batch(flat: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
               idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded waveforms [B, T] and lengths [B] of clips idx (the collate of a waveform loader)."""
    x = np.zeros((len(idx), int(lengths[idx].max())), dtype=np.float32)
    for row, i in enumerate(idx):
        x[row, :lengths[i]] = flat[offsets[i]: offsets[i] + lengths[i]]
    return torch.from_numpy(x), torch.from_numpy(lengths[idx].copy())


# --------------------------------------------------------------------------- models
def model_params(backbone: str, input_: str, batch_size: int, epochs: int, lr: float,
                 weight_decay: float) -> ModelParams:
    ep = EncoderParams(backbone=backbone, regime="frozen", layers="weighted", projection=256, head_hidden=256)
    return ModelParams(study="bench", arch="encoder", objective="ce", input=input_, epochs=epochs,
                       batch_size=batch_size, optim=OptimParams(optimizer="adamw", lr=lr, weight_decay=weight_decay),
                       encoder=ep, balance="none")


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def train_epochs(model: Any, optimizer: torch.optim.Optimizer, batch_of, labels: np.ndarray, n: int,
                 batch_size: int, epochs: int, seed: int) -> list[float]:
    """Train `epochs` epochs; returns the wall seconds of each. batch_of(idx) -> (x, lengths or None)."""
    y_all = torch.from_numpy(labels)
    seconds = []
    for epoch in range(epochs):
        torch.manual_seed(seed * 1000 + epoch)  # the same dropout draws in both paths
        model.train()
        start = time.perf_counter()
        for idx in epoch_batches(n, batch_size, seed, epoch):
            x, lengths = batch_of(idx)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x, lengths), y_all[idx])
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


# --------------------------------------------------------------------------- (1) training
def run_training(args: argparse.Namespace) -> dict[str, Any]:
    from ser.models.embeddings import embed_clips
    from ser.models import build_model

    flat, offsets, lengths, labels = synth_clips(args.clips, args.seed, *args.clip_seconds)
    n = len(lengths)
    cpu = torch.device("cpu")
    mp_waves = model_params(args.backbone, "waves", args.batch_size, args.epochs, args.lr, args.weight_decay)
    mp_probe = dataclasses.replace(mp_waves, input="embeddings")

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)  # the initial head weights
    online = build_model(mp_waves, N_CLASSES, cache_dir=args.cache_dir)
    build_s = time.perf_counter() - t0
    probe = build_model(mp_probe, N_CLASSES, cache_dir=args.cache_dir)
    probe.load_state_dict(head_state(online), strict=True)  # the same initial head in both paths
    total_params = sum(p.numel() for p in online.parameters())
    trainable = sum(p.numel() for p in online.parameters() if p.requires_grad)

    # cached path: the one-off embedding, then the probe on the cache
    cache = np.zeros((n, online.n_states, online.hidden_size), dtype=np.float32)
    online.eval()
    timing = embed_clips(online, flat, offsets, lengths, cache, device=cpu, progress_every=1e9)
    cache_t = torch.from_numpy(cache)
    opt_probe = torch.optim.AdamW(probe.param_groups(mp_probe.optim))
    cached_s = train_epochs(probe, opt_probe, lambda idx: (cache_t[idx], None), labels, n,
                            args.batch_size, args.epochs, args.seed)
    # on-the-fly path: the frozen encoder in every step
    opt_online = torch.optim.AdamW(online.param_groups(mp_waves.optim))
    online_s = train_epochs(online, opt_online, lambda idx: wave_batch(flat, offsets, lengths, idx), labels, n,
                            args.batch_size, args.epochs, args.seed)

    # identical-result check: head parameters, logits on the data
    a, b = head_state(online), probe.state_dict()
    if list(a) != list(b):
        raise RuntimeError(f"head state dicts differ in keys: {sorted(set(a) ^ set(b))}")
    param_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    online.eval()
    probe.eval()
    project = lambda s: online.projection(online.layer_pool(s))  # noqa: E731  (EncoderSER.embed's per-frame map)
    logit_diff = emb_diff = logit_scale = 0.0
    with torch.no_grad():
        for start in range(0, n, args.batch_size):
            idx = np.arange(start, min(n, start + args.batch_size))
            x, lens = wave_batch(flat, offsets, lengths, idx)
            # one encoder pass for both: the pooled projection (what EncoderSER.embed pools) and the
            # layer means (what EncoderSER.layer_means pools), side by side
            width = online.feature_dim
            pooled = online.pooled(x, lens, lambda s: torch.cat(
                [project(s), s.permute(1, 2, 0, 3).flatten(2).float()], -1))
            on_logits = online.classify(pooled[:, :width])
            means = pooled[:, width:].reshape(len(idx), online.n_states, online.hidden_size)
            pr_logits = probe(cache_t[idx])
            logit_diff = max(logit_diff, float((on_logits - pr_logits).abs().max()))
            logit_scale = max(logit_scale, float(pr_logits.abs().max()))
            emb_diff = max(emb_diff, float((means - cache_t[idx]).abs().max()))
        alone_diff = 0.0
        for i in range(min(args.alone_clips, n)):
            x, lens = wave_batch(flat, offsets, lengths, np.array([i]))
            alone_diff = max(alone_diff, float((online.layer_means(x, lens)[0] - cache_t[i]).abs().max()))
    passed = param_diff <= args.param_atol and logit_diff <= args.atol

    mean_cached, mean_online = float(np.mean(cached_s)), float(np.mean(online_s))
    return {
        "clips": n, "audio_seconds": round(float(lengths.sum()) / SAMPLE_RATE, 2),
        "model": {"backbone": args.backbone, "family": online.family, "hidden_states": online.n_states,
                  "hidden_size": online.hidden_size, "parameters": total_params, "trainable": trainable,
                  "preprocessor": {k: online.preprocessor.get(k) for k in ("do_normalize", "return_attention_mask")},
                  "feat_extract_norm": getattr(online.base_model.config, "feat_extract_norm", None)},
        "build_seconds": round(build_s, 3),
        "embed_once": timing,
        "cached_epoch_seconds": [round(s, 5) for s in cached_s],
        "on_the_fly_epoch_seconds": [round(s, 3) for s in online_s],
        "ratio_per_epoch": round(mean_online / mean_cached, 1),
        "ratio_incl_embedding_over_epochs": round(sum(online_s) / (timing["seconds"] + sum(cached_s)), 2),
        "check": {"passed": passed, "atol": args.atol, "param_atol": args.param_atol, "max_abs_diff_head_params": param_diff,
                  "max_abs_diff_logits": logit_diff, "max_abs_logit": logit_scale,
                  "max_abs_diff_layer_means_batch_vs_cache": emb_diff,
                  "max_abs_diff_layer_means_alone_vs_cache": alone_diff, "alone_clips": min(args.alone_clips, n),
                  "max_abs_layer_mean": float(np.abs(cache).max())},
    }


# --------------------------------------------------------------------------- (2) precompute
def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM, the high-water mark of its own address space.

    Not ru_maxrss alone: Linux carries the parent's high-water mark into a child through fork + exec
    (exec_mmap folds the old address space's peak into the process's maxrss), so a child of a
    2 GB parent reports >= 2 GB from its first line. ru_maxrss is the fallback off Linux.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def precompute_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: precompute_embeddings on the store; wall time and peak memory."""
    import transformers

    from ser.models.embeddings import precompute_embeddings
    from ser.runtime import resolve_device
    from ser.models.encoders import _classes, encoder_config

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = resolve_device(spec["device"])
    cache_dir = Path(spec["cache_dir"]) if spec["cache_dir"] else None
    # The baseline includes the code that runs: transformers imports a family's modules lazily.
    _classes(encoder_config(spec["backbone"], cache_dir).model_type)
    transformers.AutoFeatureExtractor, transformers.WhisperFeatureExtractor  # noqa: B018
    baseline = peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    ep = EncoderParams(backbone=spec["backbone"], regime="frozen", layers="weighted")
    start = time.perf_counter()
    report = precompute_embeddings(spec["waves"], spec["out"], [ep], device=spec["device"], cache_dir=cache_dir)
    wall = time.perf_counter() - start
    out = {"device": str(device), "wall_seconds": round(wall, 3), "baseline_rss_mib": round(baseline, 1),
           "peak_rss_mib": round(peak_rss_mib() - baseline, 1),
           "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "report": report[ep.store_key],
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        out["cuda_device"] = torch.cuda.get_device_name()
    return out


def run_precompute(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from ser.features.stores import IndexRow, write_store

    n = clips_for_minutes(args.precompute_minutes, *args.clip_seconds)
    flat, offsets, lengths, labels = synth_clips(n, args.seed + 1, *args.clip_seconds)
    rows = [IndexRow(f"bench/{i:05d}", "bench", f"s{i % 4}", ["a", "b", "c", "d"][labels[i]], 0, int(o), int(m))
            for i, (o, m) in enumerate(zip(offsets, lengths))]
    waves = tmp / "waves" / "bench"
    write_store(waves, {"train": (flat, rows)},
                {"kind": "waves", "labels": ["a", "b", "c", "d"], "sample_rate": SAMPLE_RATE,
                 "content_sha256": f"synthetic-{args.seed + 1}-{n}"})
    spec = {"backbone": args.backbone, "waves": str(waves), "out": str(tmp / "embeddings" / "bench"),
            "device": args.precompute_device, "cache_dir": str(args.cache_dir) if args.cache_dir else "",
            "threads": args.threads}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-precompute", json.dumps(spec)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"precompute subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    audio_h = float(lengths.sum()) / SAMPLE_RATE / 3600
    rep = child["report"]
    return {"clips": n, "audio_seconds": round(audio_h * 3600, 2), **{k: v for k, v in child.items() if k != "report"},
            "embed_seconds": rep["seconds"], "bf16": rep["bf16"], "batches": rep["batches"],
            "embed_seconds_per_audio_hour": round(rep["seconds"] / audio_h, 1),
            "wall_seconds_per_audio_hour": round(child["wall_seconds"] / audio_h, 1)}


def precompute_only(args: argparse.Namespace, load_before: float, t_all: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pre = run_precompute(args, Path(tmp))
    pre["load_average_before"] = round(load_before, 2)
    hours = pre["audio_seconds"] / 3600
    print(f"embedding precompute ({args.backbone}, {pre['device']}{', bf16' if pre['bf16'] else ''}): "
          f"{pre['clips']} clips, {pre['audio_seconds'] / 60:.1f} min of audio; embed {pre['embed_seconds']:.2f} s "
          f"({hours * 3600 / max(pre['embed_seconds'], 1e-9):.0f} s of audio per second), wall {pre['wall_seconds']:.2f} s"
          + (f", CUDA peak {pre['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in pre else ""))
    result = {"settings": {"backbone": args.backbone, "precompute_minutes": args.precompute_minutes,
                           "precompute_device": args.precompute_device, "clip_seconds": list(args.clip_seconds),
                           "synthetic": True},
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__},
              "precompute": pre, "total_seconds": round(time.perf_counter() - t_all, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


# --------------------------------------------------------------------------- main
def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    low_s, high_s = float(low), float(high or low)
    if not 0 < low_s <= high_s:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 0 < LOW <= HIGH, got {text!r}")
    return low_s, high_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="random:wavlm-base",
                    help="random:<preset> (e.g. random:hubert-base, random:wav2vec2-base, random:whisper-base), "
                         "a hub id or a local directory")
    ap.add_argument("--clips", type=int, default=48, help="synthetic training clips")
    ap.add_argument("--clip-seconds", type=_seconds_range, default=(2.0, 4.0), metavar="LOW,HIGH",
                    help="clip lengths, uniform in [LOW, HIGH] s (LOW = HIGH: equal lengths, no padding)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs of each path")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--atol", type=float, default=1e-4, help="tolerance of the identical-result check (logits)")
    ap.add_argument("--param-atol", type=float, default=1e-3,
                    help="tolerance on the trained head parameters: AdamW normalises each gradient, so a weight "
                         "whose gradient is float noise in both paths can move by up to lr (1e-3) per step")
    ap.add_argument("--alone-clips", type=int, default=4,
                    help="clips encoded alone (no padding) for the padding diagnostic")
    ap.add_argument("--precompute-minutes", type=float, default=2.0, help="audio of the precompute measurement")
    ap.add_argument("--precompute-device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "bench" / ".cache",
                    help="where random:<preset> backbones are built (once)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "probe_cache.json")
    ap.add_argument("--precompute-only", action="store_true",
                    help="only (2), the embedding precompute (bench/gpu_check.sh: on CUDA)")
    ap.add_argument("--child-precompute", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    if args.child_precompute:
        print(json.dumps(precompute_child(json.loads(args.child_precompute))))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # the cores may be shared: say how busy they were
    t_all = time.perf_counter()
    if args.precompute_only:
        precompute_only(args, load_before, t_all)
        return
    train = run_training(args)
    load_precompute = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        pre = run_precompute(args, Path(tmp))
    pre["load_average_before"] = round(load_precompute, 2)
    pre["weights_mib"] = round(train["model"]["parameters"] * 4 / 2 ** 20, 1)  # fp32 encoder + head

    c = train["check"]
    print(f"\n{args.backbone} ({train['model']['family']}, {train['model']['parameters'] / 1e6:.1f}M parameters, "
          f"{train['model']['hidden_states']} hidden states x {train['model']['hidden_size']}); "
          f"{train['clips']} clips, {train['audio_seconds']:.0f} s of audio, batch {args.batch_size}, "
          f"{args.epochs} epochs, AdamW; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads "
          f"(1-min load average before: {load_before:.2f})")
    print(f"{'path':44s} {'one-off s':>10s} " + " ".join(f"{f'epoch {e + 1} s':>10s}" for e in range(args.epochs))
          + f" {'mean s':>9s}")
    rows = [("cached: embed_clips once + ProbeSER", train["embed_once"]["seconds"], train["cached_epoch_seconds"]),
            ("on the fly: EncoderSER (frozen) every step", None, train["on_the_fly_epoch_seconds"])]
    for label, once, epochs in rows:
        print(f"{label:44s} {once if once is not None else '-':>10} "
              + " ".join(f"{s:10.4f}" for s in epochs) + f" {np.mean(epochs):9.4f}")
    print(f"per-epoch speed-up of the cached probe: {train['ratio_per_epoch']:.0f}x; over {args.epochs} epochs "
          f"including the one-off embedding: {train['ratio_incl_embedding_over_epochs']:.2f}x")
    print(f"identical-result check (logits atol {args.atol:g}, parameters {args.param_atol:g}): max |diff| head parameters {c['max_abs_diff_head_params']:.3g}, "
          f"logits {c['max_abs_diff_logits']:.3g} (max |logit| {c['max_abs_logit']:.3g}): "
          f"{'PASS' if c['passed'] else 'FAIL'}")
    print(f"  layer means, on-the-fly batches vs cache: max |diff| {c['max_abs_diff_layer_means_batch_vs_cache']:.3g}; "
          f"cache vs each clip alone ({c['alone_clips']} clips): {c['max_abs_diff_layer_means_alone_vs_cache']:.3g} "
          f"(max |layer mean| {c['max_abs_layer_mean']:.3g})")
    if not c["passed"] and c["max_abs_diff_layer_means_batch_vs_cache"] > args.atol:
        print("  the encoder's layer means of a clip depend on the zero padding of its batch (feat_extract_norm "
              f"{train['model']['feat_extract_norm']!r}, attention mask "
              f"{train['model']['preprocessor']['return_attention_mask']}): the two paths see different inputs")
    print(f"\nembedding precompute (precompute_embeddings, fresh process, {pre['device']}"
          f"{', bf16' if pre['bf16'] else ''}): {pre['clips']} clips, {pre['audio_seconds'] / 60:.1f} min of audio")
    print(f"{'embed s':>8s} {'wall s':>7s} {'embed s/audio h':>16s} {'wall s/audio h':>15s} {'peak RSS MiB':>13s}"
          f" {'fp32 weights MiB':>17s}"
          + (f" {'CUDA peak MiB':>14s}" if "cuda_peak_mib" in pre else ""))
    print(f"{pre['embed_seconds']:8.2f} {pre['wall_seconds']:7.2f} {pre['embed_seconds_per_audio_hour']:16.0f} "
          f"{pre['wall_seconds_per_audio_hour']:15.0f} {pre['peak_rss_mib']:13.0f} {pre['weights_mib']:17.0f}"
          + (f" {pre['cuda_peak_mib']:14.0f}" if "cuda_peak_mib" in pre else ""))

    result = {
        "settings": {"backbone": args.backbone, "clips": args.clips, "clip_seconds": list(args.clip_seconds),
                     "sample_rate": SAMPLE_RATE, "epochs": args.epochs, "batch_size": args.batch_size,
                     "optimizer": "adamw", "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
                     "layers": "weighted", "projection": 256, "head_hidden": 256, "n_classes": N_CLASSES,
                     "atol": args.atol, "alone_clips": args.alone_clips,
                     "precompute_minutes": args.precompute_minutes, "precompute_device": args.precompute_device,
                     "training_device": "cpu", "synthetic": True},
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average_before": round(load_before, 2)},
        "training": train,
        "precompute": pre,
        "total_seconds": round(time.perf_counter() - t_all, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not c["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
