"""Queued DVC experiments: a lambda_domain sweep queued with one command and run by 2 queue workers.

A tiny standalone git + DVC repository in tmp_path (not the whole pipeline):
one stage reads `lambda_domain` from params.yaml and writes
metrics/aggregate.json in the schema of the summarize stage. `make_repo` and
`dvc` are reused by tests/test_report.py.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

LAMBDAS = (0.1, 0.3, 0.5)

STAGE = '''\
"""Writes metrics/aggregate.json like the summarize stage; dann's UAR depends on lambda_domain."""
import json
from pathlib import Path

import yaml

lam = yaml.safe_load(Path("params.yaml").read_text())["lambda_domain"]
results = {("in_domain", "baseline"): 0.62, ("target", "baseline"): 0.41,
           ("in_domain", "dann"): round(0.60 + 0.02 * lam, 4), ("target", "dann"): round(0.40 + 0.1 * lam, 4),
           ("in_domain", "qlora"): 0.55}
models = {}
for (scope, model), uar in results.items():
    models.setdefault(model, {})[scope] = {
        "study": "cross_corpus", "test_set": scope, "corpus": "ravdess" if scope == "target" else None,
        "folds": [1, 2], "seeds": [1], "n_classes": 4, "n_runs": 2,
        "mean_over_runs": {"accuracy": round(uar + 0.02, 4), "uar": round(uar - 0.01, 4), "macro_f1": uar},
        "std_over_runs": {"accuracy": 0.01, "uar": 0.01, "macro_f1": 0.01},
        "pooled": {"accuracy": round(uar + 0.03, 4), "uar": uar, "macro_f1": uar, "cohen_kappa": 0.2,
                   "accuracy_ci95": [round(uar - 0.02, 4), round(uar + 0.08, 4)],
                   "uar_ci95": [round(uar - 0.05, 4), round(uar + 0.05, 4)]},
        "single_class_runs": []}
Path("metrics").mkdir(exist_ok=True)
Path("metrics/aggregate.json").write_text(json.dumps({"models": models}, indent=2) + "\\n")
'''

DVC_YAML = """\
stages:
  summarize:
    cmd: python summarize.py
    deps: [summarize.py]
    params: [lambda_domain, models.dann]
    metrics:
      - metrics/aggregate.json:
          cache: false
"""


def expected_dann_uar(lam: float) -> float:
    return round(0.40 + 0.1 * lam, 4)


def _env() -> dict[str, str]:
    # `python` in the stage command and the queue workers must be this environment's.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def run(repo: Path, *args: str, timeout: float = 60) -> str:
    proc = subprocess.run(list(args), cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(repo: Path, *args: str, timeout: float = 60) -> str:
    return run(repo, sys.executable, "-m", "dvc", *args, timeout=timeout)


def make_repo(path: Path) -> Path:
    """A committed git + DVC repo whose one stage (the summarize stage's aggregate.json) has run."""
    path.mkdir(parents=True, exist_ok=True)
    run(path, "git", "init", "-q")
    run(path, "git", "config", "user.email", "test@localhost")
    run(path, "git", "config", "user.name", "test")
    dvc(path, "init", "-q")
    dvc(path, "config", "core.analytics", "false")
    (path / "params.yaml").write_text("seeds: [1]\nfolds: [1, 2]\nlambda_domain: 0.5\nmodels:\n  dann: {epochs: 2}\n")
    (path / "summarize.py").write_text(STAGE)
    (path / "dvc.yaml").write_text(DVC_YAML)
    dvc(path, "repro", "-q")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "baseline")
    return path


def experiments(repo: Path) -> list[dict]:
    """The experiments of HEAD in `dvc exp show --json` (dvc 3.x shape)."""
    doc = json.loads(dvc(repo, "exp", "show", "--json"))
    (head,) = [entry for entry in doc if entry["rev"] != "workspace"]
    return head.get("experiments") or []


def _state(exp: dict) -> str:
    return (exp.get("executor") or {}).get("state", "success")


def _stop_workers(repo: Path) -> None:
    """`dvc queue stop --kill`, then wait (bounded) for the repo's worker processes to exit."""
    subprocess.run([sys.executable, "-m", "dvc", "queue", "stop", "--kill"], cwd=repo, env=_env(),
                   capture_output=True, timeout=60)
    root = str(repo.resolve())
    deadline = time.monotonic() + 20
    while True:
        mine = []
        for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
            try:
                if (proc.info["cwd"] or "").startswith(root) and "dvc" in " ".join(proc.info["cmdline"] or []):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not mine:
            return
        if time.monotonic() > deadline:
            for proc in mine:  # the workers this test started, by pid
                proc.kill()
            return
        time.sleep(0.5)


def test_sweep_queued_with_one_command_runs_on_two_workers(tmp_path):
    repo = make_repo(tmp_path / "repo")
    out = dvc(repo, "exp", "run", "--queue", "-S", "lambda_domain=" + ",".join(map(str, LAMBDAS)))
    assert out.count("Queued experiment") == 3, out
    assert [_state(e) for e in experiments(repo)] == ["queued"] * 3
    try:
        # Asynchronous: `queue start` returns at once and detached workers run the experiments.
        dvc(repo, "queue", "start", "-j", "2")
        deadline = time.monotonic() + 90
        while True:
            exps = experiments(repo)
            states = [_state(e) for e in exps]
            assert "failed" not in states, dvc(repo, "queue", "status")
            if states.count("success") == 3:
                break
            assert time.monotonic() < deadline, f"queue not done in 90 s: {states}\n{dvc(repo, 'queue', 'status')}"
            time.sleep(2)
        status = dvc(repo, "queue", "status")
        assert status.count("Success") == 3, status
    finally:
        _stop_workers(repo)

    found = {}
    for exp in exps:
        data = exp["revs"][0]["data"]
        lam = data["params"]["params.yaml"]["data"]["lambda_domain"]
        models = data["metrics"]["metrics/aggregate.json"]["data"]["models"]
        found[lam] = models["dann"]["target"]["pooled"]["uar"]
        # The unchanged model gives the baseline's numbers in every experiment.
        assert models["baseline"]["target"]["pooled"]["uar"] == 0.41
    assert found == {lam: expected_dann_uar(lam) for lam in LAMBDAS}

    # The documented command: experiments sorted by cross-corpus UAR, best first.
    table = dvc(repo, "exp", "show", "--sort-by", "metrics/aggregate.json:models.dann.target.pooled.uar",
                "--sort-order", "desc",
                "--csv", "--keep", "lambda_domain", "--drop", "baseline|qlora|in_domain")
    rows = list(csv.reader(table.strip().splitlines()))  # list-valued params (folds) are quoted cells
    col = rows[0].index("lambda_domain")
    exp_rows = [r for r in rows[1:] if r[0]]  # named experiments; baselines have no name
    assert [float(r[col]) for r in exp_rows] == sorted(LAMBDAS, reverse=True), table
    # The queued runs happened in temporary copies: the workspace still holds the committed results.
    workspace = json.loads((repo / "metrics" / "aggregate.json").read_text())["models"]
    assert workspace["dann"]["target"]["pooled"]["uar"] == expected_dann_uar(0.5)
    assert run(repo, "git", "status", "--porcelain").strip() == ""
