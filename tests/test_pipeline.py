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
MODELS = ("baseline", "dann", "matrix_logreg", "egemaps_svm", "egemaps_logreg", "ge2e_logreg", "egemaps_mlp",
          "egemaps_dann", "wavlm_probe", "wav2vec_dann", "qlora", "finetune")
CROSS = ("baseline", "dann", "egemaps_svm", "egemaps_logreg", "ge2e_logreg", "egemaps_mlp", "egemaps_dann",
         "wavlm_probe", "wav2vec_dann")
# Folds 1 and 3: every study runs both except corpus_matrix (2 folds, one per corpus), whose fold-3
# cells are not run; one seed, then a second one is added.
FOLDS, SEED = (1, 3), 1337


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
    params["folds"], params["seeds"] = list(FOLDS), [SEED]
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _changed_stages(status: str) -> set[str]:
    """Stage names of `dvc status` output (each a line `name:` at the left margin)."""
    return {line.rstrip(":").strip() for line in status.splitlines() if line and not line[0].isspace()
            and line.rstrip().endswith(":")}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the whole DAG, twice over in parts: ~9 min on a quiet 2-core machine
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
    cells = [f"{m}-{f}-{SEED}" for m in MODELS for f in FOLDS]
    stages = ["check-params", "download-verify", "build-metadata", "precompute-mels", "precompute-waves",
              "precompute-functionals@egemaps", "precompute-functionals@ge2e", "bind",
              *(f"train@{c}" for c in cells), *(f"evaluate@{c}" for c in cells), "summarize"]
    for stage in stages:
        assert f"Running stage '{stage}'" in out, stage

    # the multi-corpus study is scored pooled and on each corpus alone
    scopes = {m: ("in_domain", "target") if m in CROSS else ("iemocap", "ravdess") if m == "matrix_logreg"
              else ("in_domain", "crema_d", "ravdess", "tess") for m in MODELS}
    for model in MODELS:
        for fold in FOLDS:
            run = f"f{fold}-s{SEED}"
            if model == "matrix_logreg" and fold == 3:  # beyond the study's 2 folds: recorded, not run
                assert "corpus_matrix has 2 fold(s)" in json.loads(
                    (repo / "metrics" / "models" / model / run / "not_run.json").read_text())["not_run"]
                assert (repo / "models" / model / run / "not_run.json").is_file()
                continue
            for scope in scopes[model]:
                metrics = json.loads((repo / "metrics" / "models" / model / run / f"{scope}.json").read_text())
                for key in ("accuracy", "uar", "macro_f1"):
                    assert _is_number(metrics[key]) and 0 <= metrics[key] <= 1, (scope, model, key)
                assert len(metrics["uar_ci95"]) == 2 and metrics["fold"] == fold and metrics["seed"] == SEED
                assert (repo / "plots" / model / run / f"{scope}.png").stat().st_size > 1000
                assert (repo / "plots" / model / run / f"{scope}.csv").read_text().startswith(
                    "utt_id,speaker,actual,predicted")
            assert not (repo / "models" / model / run / "timing.json").exists()
            assert _is_number(json.loads((repo / "dvclive" / model / run / "timing.json").read_text())["train_seconds"])
    # the folds of one study test different IEMOCAP sessions, and the same RAVDESS target
    tested = [{line.split(",")[0] for line in (repo / "plots" / "baseline" / f"f{f}-s{SEED}" / "in_domain.csv")
               .read_text().splitlines()[1:]} for f in FOLDS]
    assert tested[0] and not tested[0] & tested[1]
    aggregate = json.loads((repo / "metrics" / "aggregate.json").read_text())["models"]
    for model in MODELS:
        # a matrix study is aggregated per training corpus: fold 1 trained on iemocap (fold 3 was not run)
        keys = ("iemocap_to_iemocap", "iemocap_to_ravdess") if model == "matrix_logreg" else scopes[model]
        assert sorted(aggregate[model]) == sorted(keys), model
        for key in keys:
            agg = aggregate[model][key]
            expected = 1 if model == "matrix_logreg" else 2
            assert agg["n_runs"] == expected and _is_number(agg["mean_over_runs"]["uar"]), (model, key)
            assert _is_number(agg["pooled"]["uar"]) and len(agg["pooled"]["uar_ci95"]) == 2
    # The probe trained on cached embeddings (precompute-embeddings: every clip once, [clips, states, hidden])
    # and reported its learned layer weights per run and over runs.
    (store,) = (repo / "data" / "features" / "embeddings" / "cross_corpus").iterdir()
    meta = json.loads((store / "meta.json").read_text())
    assert meta["kind"] == "embeddings" and meta["encoder"]["family"] == "wavlm" and meta["shape"][1:] == [3, 32]
    layer_weights = json.loads((repo / "metrics" / "aggregate.json").read_text())["layer_weights"]
    assert list(layer_weights) == ["wavlm_probe"] and layer_weights["wavlm_probe"]["runs"] == 2
    assert abs(sum(layer_weights["wavlm_probe"]["mean"]) - 1) < 1e-4
    assert (repo / "metrics" / "figures" / "wavlm_probe_layer_weights.png").stat().st_size > 1000
    assert aggregate["baseline"]["in_domain"]["test_sets"] == "disjoint"
    assert aggregate["baseline"]["target"]["test_sets"] == "repeated"
    summary = (repo / "metrics" / "summary.md").read_text()
    assert all(model in summary for model in MODELS) and "## Paired comparisons" in summary
    assert "## Corpus matrix: corpus_matrix" in summary
    assert (repo / "metrics" / "figures" / "corpus_matrix_matrix.png").stat().st_size > 1000
    matrix = json.loads((repo / "metrics" / "corpus_matrix.json").read_text())["studies"]["corpus_matrix"]
    assert {r["model"] for r in matrix["cross_corpus_rows"]} >= {"baseline", "dann"}
    assert json.loads((repo / "metrics" / "comparisons.json").read_text())["comparisons"]

    # A no-op repro re-runs nothing, and the workspace is clean for DVC.
    out = _run(["dvc", "repro"], repo)
    assert "Running stage" not in out, out
    assert "up to date" in _run(["dvc", "status"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "results"], repo)

    # `.venv/bin/dvc` from a shell whose PATH has only `python3` (Debian/Ubuntu without python-is-python3):
    # the stage command finds python3, and the stage re-runs itself with the project's interpreter.
    if (Path(sys.prefix) / "bin" / "dvc").is_file() and sys.prefix != sys.base_prefix:
        only = tmp_path / "only-python3"
        only.mkdir()
        (only / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
        (repo / ".venv").symlink_to(sys.prefix)
        proc = subprocess.run([str(Path(sys.prefix) / "bin" / "dvc"), "repro", "-f", "-s", "check-params"], cwd=repo,
                              env={"PATH": str(only), "HOME": os.environ.get("HOME", str(tmp_path))},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "not found" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        (repo / ".venv").unlink()
        assert "up to date" in _run(["dvc", "status"], repo)

    # Code and bytecode: importing the package with bytecode writing on changes nothing; editing a module a
    # train stage imports makes every train@ stage changed (evaluate@ does not import it); editing
    # report or predict code changes no stage at all.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    modules = "ser.models.crnn, ser.train.loop, ser.data.corpora, ser.infer.predict, ser.infer.cli"
    subprocess.run([sys.executable, "-c", f"import {modules}"], cwd=repo, env={**env, "PYTHONPATH": str(repo)},
                   check=True)
    assert list((repo / "ser" / "models").glob("__pycache__/*.pyc")), "bytecode was not written"
    assert "up to date" in _run(["dvc", "status"], repo)
    augment = repo / "ser" / "train" / "augment.py"
    source = augment.read_text()
    augment.write_text(source + "# edited\n")
    changed = _changed_stages(_run(["dvc", "status"], repo))
    train_cells = {f"train@{m}-{f}-{SEED}" for m in MODELS for f in FOLDS}
    assert changed == train_cells, sorted(changed ^ train_cells)
    augment.write_text(source)
    for rel in ("ser/eval/report.py", "ser/infer/predict.py", "ser/infer/cli.py"):
        with open(repo / rel, "a") as f:
            f.write("# edited\n")
    assert "up to date" in _run(["dvc", "status"], repo)
    _run(["git", "checkout", "--", "ser"], repo)

    # Adding a seed adds cells: only they (and the summary) are out of date, every existing run is cached.
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["seeds"] = [SEED, 5]
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _changed_stages(_run(["dvc", "status"], repo))
    new_cells = {f"{kind}@{m}-{f}-5" for kind in ("train", "evaluate") for m in MODELS for f in FOLDS}
    assert changed - {"check-params"} == new_cells | {"summarize"}, sorted(changed)
    params_path.write_text(original)
    assert "up to date" in _run(["dvc", "status"], repo)

    # A failed single-stage run keeps what DVC cannot restore (issue: DVC deletes a stage's outputs before
    # its command runs). With a value the bind file does not hold, `dvc repro -s` of a train and an evaluate
    # cell fails (forced: a run depends on its bind file, not on params.yaml); the cell's DVCLive metrics,
    # plots and timing and its evaluation are the previous run's, byte for byte, and the model, which DVC
    # caches, comes back with `dvc checkout`.
    run = f"f1-s{SEED}"
    uncached = [repo / "dvclive" / "egemaps_svm" / run, repo / "metrics" / "models" / "egemaps_svm" / run,
                repo / "plots" / "egemaps_svm" / run]
    kept = {p: p.read_bytes() for d in uncached for p in d.rglob("*") if p.is_file()}
    assert any(p.name == "timing.json" for p in kept) and any(p.suffix == ".png" for p in kept)
    params["seeds"] = [SEED]
    params["models"]["egemaps_svm"]["epochs"] = 2
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in (f"train@egemaps_svm-1-{SEED}", f"evaluate@egemaps_svm-1-{SEED}"):
        proc = subprocess.run(["dvc", "repro", "-f", "-s", stage], cwd=repo, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
        assert proc.returncode != 0 and "params.yaml changed since" in proc.stdout + proc.stderr, proc.stdout[-3000:]
        _run(["dvc", "checkout"], repo)  # the model DVC deleted before the failed train command
    assert {p: p.read_bytes() for d in uncached for p in d.rglob("*") if p.is_file()} == kept
    params_path.write_text(original)
    _run(["dvc", "checkout"], repo)
    assert "up to date" in _run(["dvc", "status"], repo)

    # Changing lambda_domain reaches the DANN models alone: their bind files change (the run spec holds
    # lambda_domain for objective dann only), so only their train@ and evaluate@ cells start.
    out = _run(["dvc", "exp", "run", "-S", "lambda_domain=0.3"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    dann_cells = {f"{kind}@{m}-{f}-{SEED}" for kind in ("train", "evaluate")
                  for m in ("dann", "egemaps_dann", "wav2vec_dann") for f in FOLDS}
    assert {r for r in ran if r.startswith(("train@", "evaluate@"))} == dann_cells, sorted(ran)
    assert not ran & {"download-verify", "build-metadata", "precompute-mels", "precompute-waves"}, ran

    assert "lambda_domain" in _run(["dvc", "params", "diff"], repo)
    _run(["dvc", "metrics", "diff"], repo)

    # A misspelled key fails the run at once, naming the key, although no stage reads it.
    params_path.write_text(params_path.read_text() + "lamda_domain: 0.3\n")
    proc = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode != 0 and "lamda_domain" in proc.stdout + proc.stderr
