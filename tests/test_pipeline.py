"""End-to-end smoke run of the whole DAG on a tiny demo profile, through DVC itself.

Copies the project into a temporary git repository, shrinks the demo corpora
and the epochs, and runs `dvc repro`, a no-op `dvc repro`, `dvc status` and
`dvc exp run -S lambda_domain=0.3` exactly as a user would.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("baseline", "dann", "egemaps_svm", "egemaps_logreg", "wav2vec_dann", "qlora", "finetune")
CROSS = ("baseline", "dann", "egemaps_svm", "egemaps_logreg", "wav2vec_dann")


def _run(args: list[str], cwd: Path, timeout: int = 900) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def _copy_project(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        # Results of a previous run in the source tree must not leak into this one.
        if not src.is_file() or rel == "dvc.lock" or rel.split("/")[0] in ("metrics", "plots", "dvclive"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def _tiny_params(path: Path) -> None:
    params = yaml.safe_load(path.read_text())
    params["demo"]["clips_per_speaker"] = {"iemocap": 10, "ravdess": 4, "crema_d": 1, "tess": 70}
    for model in params["models"].values():
        model["epochs"] = 1
    params["evaluation"]["bootstrap"] = 50
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
def test_demo_dag_end_to_end(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_project(repo)
    _tiny_params(repo / "params.yaml")
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "smoke@localhost"], repo)
    _run(["git", "config", "user.name", "smoke"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "smoke"], repo)

    out = _run(["dvc", "repro"], repo)
    stages = ["check-params", "download-verify", "build-metadata", "precompute-mels", "precompute-waves",
              "precompute-opensmile@egemaps",
              *(f"train@{m}" for m in MODELS), *(f"evaluate@{m}" for m in MODELS), "summarize"]
    for stage in stages:
        assert f"Running stage '{stage}'" in out, stage

    for model in MODELS:
        for scope in ("in_domain", "target") if model in CROSS else ("in_domain",):
            metrics = json.loads((repo / "metrics" / "models" / model / f"{scope}.json").read_text())
            for key in ("accuracy", "uar", "macro_f1"):
                assert _is_number(metrics[key]) and 0 <= metrics[key] <= 1, (scope, model, key)
            assert len(metrics["uar_ci95"]) == 2
            assert (repo / "plots" / model / f"{scope}.png").stat().st_size > 1000
            assert (repo / "plots" / model / f"{scope}.csv").read_text().startswith("utt_id,speaker,actual,predicted")
        assert not (repo / "models" / model / "timing.json").exists()
        assert _is_number(json.loads((repo / "dvclive" / model / "timing.json").read_text())["train_seconds"])
    summary = (repo / "metrics" / "summary.md").read_text()
    assert all(model in summary for model in MODELS) and "## Paired comparisons" in summary
    assert json.loads((repo / "metrics" / "comparisons.json").read_text())["comparisons"]
    assert (repo / "dvclive" / "dann" / "metrics.json").is_file()

    # A no-op repro re-runs nothing, and the workspace is clean for DVC.
    out = _run(["dvc", "repro"], repo)
    assert "Running stage" not in out, out
    assert "up to date" in _run(["dvc", "status"], repo)

    # Changing lambda_domain re-trains the DANN models; a cross-entropy model's stage re-runs too (every
    # train@ stage depends on the top-level DANN knobs) but writes byte-identical weights and meta, so its
    # evaluation is not re-run.
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "results"], repo)
    out = _run(["dvc", "exp", "run", "-S", "lambda_domain=0.3"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert {"train@dann", "train@wav2vec_dann", "evaluate@dann", "evaluate@wav2vec_dann"} <= ran
    assert not ran & {"download-verify", "build-metadata", "precompute-mels", "precompute-waves",
                      "evaluate@baseline", "evaluate@qlora", "evaluate@finetune"}, ran

    assert "lambda_domain" in _run(["dvc", "params", "diff"], repo)
    _run(["dvc", "metrics", "diff"], repo)

    # A misspelled key fails the run at once, naming the key, although no stage reads it.
    params_path = repo / "params.yaml"
    params_path.write_text(params_path.read_text() + "lamda_domain: 0.3\n")
    proc = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0 and "lamda_domain" in proc.stdout + proc.stderr
