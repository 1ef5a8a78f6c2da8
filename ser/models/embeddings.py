"""Embeddings computed once: per clip, the mean over time of every hidden state of a frozen encoder.

A frozen-encoder probe (weighted layer sum -> linear projection -> mean over time -> classifier)
is linear up to the classifier, so it is the same function on these per-clip means as on the
frame-level states (tests/test_encoders.py proves it); probe training then never runs the encoder.

Layout, beside the other stores (ser.features.stores), one sub-store per encoder (EncoderParams.store_key)::

    embeddings/<study>/<key>/meta.json     kind "embeddings", the encoder (spec, family, revision,
                                           preprocessor config, hidden states x hidden size), the
                                           waveform store it was computed from (content sha256)
    embeddings/<study>/<key>/clips.npy     float32 [N, hidden states, hidden size], memory-mapped
    embeddings/<study>/<key>/clips.csv     the waveform store's index, offset = row
    embeddings/<study>/<key>/f<k>/         the waveform store's fold indexes, offsets re-pointed

The encoder runs once per clip on the whole clip (no training crop), in batches of clips of
similar length (sorted by length, at most `batch_seconds` of padded audio per batch), on the GPU
when there is one, under bf16 autocast where the GPU supports it (an encoder that sees zero
padding, see EncoderSER.padding_invariant, runs each length on its own inside a batch, so a clip's
embedding never depends on its batch mates). Clips longer than
`chunk_seconds` (Whisper: at most its 30 s window) are encoded in chunks whose frames are pooled
together. A sub-store whose stamp matches is kept as is: the encoder, the waveform store's content,
the code that computes the embeddings (the import closure of this module, ser.codegraph) and the torch/transformers versions, so a
store computed by other code is never reused. Its meta.json holds no wall-clock time (that is in
the stage's report): a probe trained twice on the same store gets byte-identical model folders.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ser.codegraph import code_fingerprint
from ser.config import EncoderParams
from ser.features.stores import CLIPS, IndexRow, StoreError, read_index, store_fingerprint, write_index, write_meta
from ser.runtime import resolve_device

log = logging.getLogger(__name__)

__all__ = ["precompute_embeddings", "embed_clips", "frozen_encoder"]


def frozen_encoder(ep: EncoderParams, cache_dir: Optional[Path] = None) -> Any:
    """The encoder of `ep` in the frozen regime (no adapters, no quantization), for embedding."""
    import dataclasses

    from ser.models.encoders import EncoderSER
    ep = dataclasses.replace(ep, regime="frozen", lora=None, gradient_checkpointing=False)
    return EncoderSER(ep, n_classes=2, cache_dir=cache_dir).eval()


def _batches(lengths: np.ndarray, max_samples: int, max_items: int) -> list[np.ndarray]:
    """Clip indices in batches of similar length (sorted), each at most max_samples of padded audio."""
    order = np.argsort(lengths, kind="stable")
    batches, current = [], []
    for i in order:
        width = max([int(lengths[j]) for j in current] + [int(lengths[i])])
        if current and (width * (len(current) + 1) > max_samples or len(current) >= max_items):
            batches.append(np.array(current))
            current = []
        current.append(int(i))
    if current:
        batches.append(np.array(current))
    return batches


def embed_clips(model: Any, waves: Sequence[np.ndarray] | Any, offsets: np.ndarray, lengths: np.ndarray,
                out: np.ndarray, *, batch_seconds: float = 60.0, max_items: int = 64,
                device: torch.device = torch.device("cpu"), progress_every: float = 30.0) -> dict[str, float]:
    """Fill out[i] ([S, D]) with the layer means of clip i = waves[offsets[i]: offsets[i] + lengths[i]]
    (`waves`: a flat array, e.g. a memory-mapped waveform store). Returns timing figures."""
    model.to(device).eval()
    rate = model.frontend.sampling_rate
    # Long clips are chunked inside the model: cap the padded width the batcher sees at one chunk.
    budget = max(int(batch_seconds * rate), model.chunk_samples)
    batches = _batches(np.minimum(lengths, model.chunk_samples) * np.ceil(lengths / model.chunk_samples),
                       budget, max_items)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    start = last = time.perf_counter()
    done = 0
    for b, idx in enumerate(batches):
        width = int(lengths[idx].max())
        x = np.zeros((len(idx), width), dtype=np.float32)
        for row, i in enumerate(idx):
            x[row, :lengths[i]] = waves[offsets[i]: offsets[i] + lengths[i]]
        with torch.inference_mode(), autocast:
            means = model.layer_means(torch.from_numpy(x).to(device), torch.from_numpy(lengths[idx]).to(device))
        out[idx] = means.float().cpu().numpy()
        done += len(idx)
        now = time.perf_counter()
        if now - last >= progress_every or b == len(batches) - 1:
            log.info("embedded %d/%d clips (%.0f s)", done, len(lengths), now - start)
            last = now
    seconds = time.perf_counter() - start
    audio_h = float(lengths.sum()) / rate / 3600
    return {"seconds": round(seconds, 3), "audio_hours": round(audio_h, 5), "batches": len(batches),
            "bf16": bf16, "seconds_per_audio_hour": round(seconds / audio_h, 2) if audio_h else None}


def _stamp(ep: EncoderParams, model_desc: dict[str, Any], waves_meta: dict[str, Any]) -> dict[str, Any]:
    import transformers

    return {"key": ep.store_key, "backbone": ep.backbone, "chunk_seconds": ep.chunk_seconds,
            "revision": model_desc.get("revision"), "preprocessor": model_desc.get("preprocessor"),
            "waves_sha256": waves_meta.get("content_sha256"),
            "code": code_fingerprint(__name__),  # this module's import closure (ser.codegraph)
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def precompute_embeddings(waves_root: str | Path, out_root: str | Path, encoders: Sequence[EncoderParams], *,
                          device: str = "auto", batch_seconds: float = 60.0,
                          cache_dir: Optional[Path] = None) -> dict[str, Any]:
    """Build embeddings/<study>/<key> for every encoder of `encoders` from the study's waveform store
    (`waves_root` = waves/<study>); sub-stores of other encoders are removed. Returns a report."""
    waves_root, out_root = Path(waves_root), Path(out_root)
    meta_path = waves_root / "meta.json"
    if not meta_path.is_file():
        raise StoreError(f"{meta_path}: missing; the embeddings are computed from the waveform store "
                         "(run the precompute-waves stage first)")
    waves_meta = json.loads(meta_path.read_text())
    index = read_index(waves_root / f"{CLIPS}.csv")
    flat = np.load(waves_root / f"{CLIPS}.npy", mmap_mode="r")
    offsets = np.array([r.offset for r in index], dtype=np.int64)
    lengths = np.array([r.length for r in index], dtype=np.int64)
    target = resolve_device(device)
    keys = {ep.store_key: ep for ep in encoders}
    out_root.mkdir(parents=True, exist_ok=True)
    for stale in sorted(p for p in out_root.iterdir() if p.name not in keys):
        log.info("removing %s (no model reads it)", stale)
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    report: dict[str, Any] = {}
    for key, ep in keys.items():
        dest = out_root / key
        model = frozen_encoder(ep, cache_dir)
        desc = model.describe_backbone()
        if int(waves_meta.get("sample_rate", 0)) != model.frontend.sampling_rate:
            raise StoreError(f"{meta_path}: waveforms at {waves_meta.get('sample_rate')} Hz, but {ep.backbone} "
                             f"expects {model.frontend.sampling_rate} Hz (its preprocessor config); set "
                             f"features.sample_rate: {model.frontend.sampling_rate}")
        stamp = _stamp(ep, desc, waves_meta)
        old = dest / "meta.json"
        if old.is_file() and json.loads(old.read_text()).get("stamp") == stamp:
            log.info("%s: up to date (%s on %s)", dest, ep.backbone, waves_root)
            report[key] = {"backbone": ep.backbone, "reused": True}
            continue
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        shape = (len(index), model.n_states, model.hidden_size)
        log.info("embedding %d clips of %s with %s (%s, %d hidden states x %d) on %s", len(index), waves_root,
                 ep.backbone, desc["family"], shape[1], shape[2], target)
        partial = dest / f"{CLIPS}.npy.partial"
        with partial.open("wb+") as fh:  # np.save's header + a memory map of the body: never the whole array
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
            header = fh.tell()
        array = np.memmap(partial, dtype=np.float32, mode="r+", offset=header, shape=shape)
        peak_before = torch.cuda.max_memory_allocated() if target.type == "cuda" else None
        timing = embed_clips(model, flat, offsets, lengths, array, batch_seconds=batch_seconds, device=target)
        array.flush()
        del array
        partial.replace(dest / f"{CLIPS}.npy")
        rows = {int(r.offset): i for i, r in enumerate(index)}
        write_index(dest, CLIPS, [_moved(r, i) for i, r in enumerate(index)])
        for fold_dir in sorted(p for p in waves_root.glob("f*") if p.is_dir()):
            for split_csv in sorted(fold_dir.glob("*.csv")):
                write_index(dest / fold_dir.name, split_csv.stem,
                            [_moved(r, rows[r.offset]) for r in read_index(split_csv)])
            shutil.copyfile(fold_dir / "meta.json", dest / fold_dir.name / "meta.json")
        meta = {"kind": "embeddings", "labels": waves_meta.get("labels"), "target": waves_meta.get("target"),
                "folds": waves_meta.get("folds", [1]), "sample_rate": waves_meta.get("sample_rate"),
                "features": waves_meta.get("features"), "clips": len(index), "shape": list(shape),
                "encoder": {k: desc[k] for k in ("spec", "family", "revision", "hidden_size", "hidden_states",
                                                 "preprocessor")},
                "chunk_seconds": ep.chunk_seconds, "stamp": stamp}
        meta["content_sha256"] = store_fingerprint(dest)
        write_meta(dest, meta)
        if target.type == "cuda":
            timing["cuda_peak_mib"] = round((torch.cuda.max_memory_allocated() - (peak_before or 0)) / 2**20, 1)
        report[key] = {"backbone": ep.backbone, "reused": False, "shape": list(shape), **timing}
        del model
    return report


def _moved(row: IndexRow, position: int) -> IndexRow:
    return IndexRow(row.utt_id, row.corpus, row.speaker, row.emotion, row.domain, position, row.length)
