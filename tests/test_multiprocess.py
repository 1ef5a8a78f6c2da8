"""Multi-process training through accelerate: 2 CPU processes (DDP over gloo) on stages/train.py.

The same stage script `dvc.yaml` runs (train@<model>-<fold>-<seed>), launched with
`accelerate launch --multi_gpu --num_processes 2`, on a tiny learnable one-fold mel
store in tmp_path.
Checks: both ranks trained (each logs every epoch, with identical reduced and
gathered numbers), only the main process wrote the outputs (one set of
DVCLive files, one checkpoint), and the result is far above chance.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from ser.eval.evaluate import evaluate_model
from ser.features.stores import IndexRow, write_store
from ser.models.checkpoint import load_checkpoint
from ser.config import load_params
from ser.runs import write_bind

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["angry", "happy", "neutral", "sad"]
# (split, corpus, utterances): enough rows that each of the 2 ranks gets several batches.
SPLITS = {"train": ("iemocap", 64), "val": ("iemocap", 16), "adapt": ("ravdess", 24), "test": ("iemocap", 16)}
EPOCHS = 5


def _write_store(root: Path) -> Path:
    """Mels [16 bins x 20 frames] (one fold): each class lights up its own band of 4 bins."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, (corpus, n) in SPLITS.items():
        domain = int(corpus == "ravdess")
        arrays, rows = [], []
        for i in range(n):
            k = i % len(LABELS)
            x = rng.normal(size=(16, 20)).astype(np.float32) + 0.5 * domain
            x[4 * k:4 * k + 4] += 3.0
            arrays.append(x)
            rows.append(IndexRow(f"{split}{i}", corpus, f"spk{i % 3}", LABELS[k], domain, i, 20))
        splits[split] = (np.stack(arrays), rows)
    return write_store(root, splits, {"kind": "mels", "sample_rate": 16000, "labels": LABELS, "target": "ravdess",
                                      "features": {"n_mels": 16, "frames": 20}})


def _tiny_params(path: Path) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"] = {"device": "cpu", "mixed_precision": "no", "bucket_by_length": True,
                       "deterministic": True}
    params["models"] = {"tiny_dann": {
        "study": "cross_corpus", "arch": "crnn", "objective": "dann", "input": "mels", "epochs": EPOCHS,
        "batch_size": 8, "optim": {"optimizer": "adam", "lr": 1.0e-2},
        "crnn": {"channels": [4, 8, 8], "lstm_hidden": 8, "fc_hidden": 8, "dropout": 0.2, "domain_hidden": 8}}}
    params["fusions"] = {}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _free_port() -> int:
    # Other test runs on the machine may use accelerate's default port 29500.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_training_through_accelerate_launch(tmp_path):
    study = tmp_path / "features" / "mels" / "cross_corpus"
    assert _write_store(study) == study / "f1"
    _tiny_params(tmp_path / "params.yaml")
    bind = tmp_path / "bind" / "tiny_dann.json"
    spec = load_params(tmp_path / "params.yaml").run_spec("tiny_dann")
    write_bind("tiny_dann", "mels", "cross_corpus", study, bind, spec=spec)  # what bind@tiny_dann writes
    run = "f1-s5"  # fold 1, seed 5: the layout of train@tiny_dann-1-5
    out, resume = tmp_path / "models" / "tiny_dann" / run, tmp_path / "ckpt" / "tiny_dann" / run
    live = tmp_path / "live" / "tiny_dann" / run
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(ROOT / "stages" / "train.py"), "--params", str(tmp_path / "params.yaml"), "--model", "tiny_dann",
           "--fold", "1", "--seed", "5", "--bind", str(bind),
           "--features", str(tmp_path / "features"), "--out-dir", str(out), "--resume-dir", str(resume),
           "--live-dir", str(live)]
    # No GPU may be used even where one exists: this is the CPU (gloo) path.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]

    # Both ranks ran every epoch, and agree on the reduced train loss and gathered val metrics.
    epochs = re.findall(r"ser\.train\.loop: tiny_dann epoch (\d)/%d: (.*)" % EPOCHS, log)
    assert sorted(e for e, _ in epochs) == sorted([str(e) for e in range(1, EPOCHS + 1)] * 2), log[-3000:]
    for epoch in range(1, EPOCHS + 1):
        lines = {values for e, values in epochs if e == str(epoch)}
        assert len(lines) == 1, f"ranks disagree at epoch {epoch}: {lines}"
    assert len(re.findall(r"model tiny_dann \(crnn, dann objective\)", log)) == 2

    # Only the main process wrote: the metrics-file layout of a single-process run.
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == EPOCHS - 1
    assert {"loss", "ce", "domain_loss"} <= set(metrics["train"]) and "domain_accuracy" in metrics["val"]
    uar_tsv = (live / "plots" / "metrics" / "val" / "uar.tsv").read_text().splitlines()
    assert uar_tsv[0] == "step\tuar" and len(uar_tsv) == EPOCHS + 1, "one row per epoch: a single writer"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]
    assert not resume.exists(), "resume state is removed after a successful run"

    model, meta = load_checkpoint(out)
    assert meta["model"] == "tiny_dann" and meta["labels"] == LABELS and model.domain_head is not None
    assert (meta["fold"], meta["seed"]) == (1, 5), "the run's fold and seed come from --fold/--seed"
    # The validation set of 16 utterances is split across the ranks and gathered back whole:
    # a UAR computed on all 16 takes values in multiples of 1/16 per class averaged over 4 classes.
    assert meta["val"]["uar"] > 0.6, meta["val"]
    result, _, _ = evaluate_model(out, tmp_path / "features", "test", device="cpu")
    assert result["n"] == SPLITS["test"][1] and result["uar"] > 0.6, result
