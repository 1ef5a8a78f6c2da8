"""bench/probe_cache.py in a tiny mode (tiny random WavLM, 8 clips, seconds): it runs, the cached probe
and the frozen-encoder-every-step path train to the same head, and the JSON has its figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_probe_cache_bench_tiny(tmp_path):
    out = tmp_path / "probe_cache.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SER_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "probe_cache.py"), "--backbone", "random:wavlm-tiny", "--clips", "8",
         "--epochs", "1", "--precompute-minutes", "0.1", "--alone-clips", "2", "--threads", "1",
         "--cache-dir", str(tmp_path / "backbones"), "--out", str(out)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS" in proc.stdout

    result = json.loads(out.read_text())
    assert {"settings", "machine", "training", "precompute"} <= set(result)
    settings = result["settings"]
    assert settings["backbone"] == "random:wavlm-tiny" and settings["clips"] == 8 and settings["epochs"] == 1
    assert settings["layers"] == "weighted" and settings["projection"] == settings["head_hidden"] == 256
    assert settings["optimizer"] == "adamw"

    train = result["training"]
    check = train["check"]
    assert check["passed"] is True
    assert check["max_abs_diff_head_params"] <= check["atol"] and check["max_abs_diff_logits"] <= check["atol"]
    assert check["max_abs_diff_layer_means_batch_vs_cache"] <= check["atol"]  # padding-invariant encoder
    assert len(train["cached_epoch_seconds"]) == len(train["on_the_fly_epoch_seconds"]) == 1
    assert train["embed_once"]["seconds"] > 0 and train["ratio_per_epoch"] > 0
    assert train["model"]["trainable"] < train["model"]["parameters"]  # only the head trains

    pre = result["precompute"]
    assert pre["clips"] >= 1 and pre["audio_seconds"] > 0
    assert pre["embed_seconds"] > 0 and pre["embed_seconds_per_audio_hour"] > 0
    assert pre["wall_seconds"] >= pre["embed_seconds"] and pre["wall_seconds_per_audio_hour"] > 0
    assert pre["peak_rss_mib"] >= 0 and pre["device"] in ("cpu", "cuda")
    assert ("cuda_peak_mib" in pre) == (pre["device"] == "cuda")
