"""Stage scripts around their one call: expected errors without tracebacks, outputs checked first, threads."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ser.config import TrainParams
from ser.errors import SerError
from ser.runtime import set_torch_threads, torch_threads
from ser.stageutil import OutputNotWritable, ensure_writable, run_stage

ROOT = Path(__file__).resolve().parents[1]


def _stage(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, f"stages/{script}", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_bad_params_file_is_one_message_and_exit_one(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text() + "\nlambda_domian: 0.3\n")
    proc = _stage("summarize.py", "--params", str(bad), "--out", str(tmp_path / "summary.md"))
    assert proc.returncode == 1
    assert "summarize failed:" in proc.stderr and "unknown key lambda_domian" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_checks_its_output_folders_before_training(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = _stage("train.py", "--model", "baseline", "--fold", "1", "--seed", "1337",
                  "--bind", str(tmp_path / "no_bind" / "baseline.json"), "--features", str(tmp_path / "no_features"),
                  "--out-dir", str(tmp_path / "models" / "baseline" / "f1-s1337"),
                  "--resume-dir", str(tmp_path / "ckpt" / "baseline" / "f1-s1337"),
                  "--live-dir", str(tmp_path / "a_file" / "live"))
    # The unwritable live dir is reported, not the missing bind file and features that the run would meet first.
    assert proc.returncode == 1 and "cannot write to" in proc.stderr and "a_file/live" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["--model", "nosuch", "--fold", "1", "--seed", "1", "--bind", "b.json"],
     "train failed: unknown model 'nosuch'; params.yaml `models` defines: ['baseline'"),
    ("evaluate.py", ["--model", "nosuch"], "evaluate failed: unknown model 'nosuch'"),
    ("evaluate.py", ["--model", "baseline"], "meta.json is missing: not a model directory"),
])
def test_a_stage_run_by_hand_with_a_bad_argument_is_one_message(tmp_path, script, args, message):
    """An unknown model or a model folder that does not exist: one line naming it, status 1, no traceback."""
    dirs = (["--out-dir", str(tmp_path / "m"), "--resume-dir", str(tmp_path / "c"), "--live-dir", str(tmp_path / "l")]
            if script == "train.py" else
            ["--model-dir", str(tmp_path / "missing"), "--metrics-dir", str(tmp_path / "m"),
             "--plots-dir", str(tmp_path / "p")])
    proc = _stage(script, *args, *dirs)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_run_stage_exits_with_the_message_and_keeps_tracebacks_for_bugs():
    def expected():
        raise OutputNotWritable("nowhere/: no")

    with pytest.raises(SystemExit) as exit_:
        run_stage(expected, "demo-stage")
    assert exit_.value.code == "demo-stage failed: nowhere/: no"  # printed to stderr, status 1
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: None)
    assert exit_.value.code == 0
    with pytest.raises(ZeroDivisionError):  # a bug: not swallowed
        run_stage(lambda: 1 / 0)


def test_ensure_writable_creates_folders_and_names_the_one_that_fails(tmp_path):
    ensure_writable(tmp_path / "a" / "b", files=[tmp_path / "c" / "out.json"])
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "c").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe is gone
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputNotWritable, match=r"cannot write to .*f/x/") as err:
        ensure_writable(tmp_path / "ok", tmp_path / "f" / "x")
    assert isinstance(err.value, SerError) and isinstance(err.value, OSError)
    with pytest.raises(OutputNotWritable, match="is a folder"):
        ensure_writable(files=[tmp_path / "a"])


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_set_torch_threads(monkeypatch, restore_threads):
    import ser.runtime as su

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(su, "available_cores", lambda: 4)
    assert set_torch_threads(TrainParams(threads=3).threads) == 3 == torch.get_num_threads()  # params win
    assert set_torch_threads(None) == 4 == torch.get_num_threads()  # the cores this process may use
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 processes of `accelerate launch` share them
    assert set_torch_threads(None) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit choice in the environment
    assert set_torch_threads(None) == 1 == torch.get_num_threads()
    torch.set_num_threads(1)
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        TrainParams(threads=0)


def test_available_cores_is_at_least_one_and_at_most_the_affinity():
    from ser.runtime import available_cores

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


def test_staged_outputs_replace_the_old_ones_only_on_success(tmp_path):
    """A failed stage leaves the previous run's uncached outputs as they were; a successful one replaces
    them whole (no stale file of the old folder survives), and an output it did not write is removed."""
    from ser.stageutil import staged

    live, timing, gone = tmp_path / "live", tmp_path / "timing.json", tmp_path / "gone.json"
    (live / "plots").mkdir(parents=True)
    (live / "metrics.json").write_text("old")
    (live / "plots" / "old.tsv").write_text("old")
    timing.write_text("old")
    gone.write_text("old")
    with pytest.raises(RuntimeError):
        with staged(live, timing) as (new_live, new_timing):
            new_live.mkdir()
            (new_live / "metrics.json").write_text("half")
            raise RuntimeError("training failed")
    assert (live / "metrics.json").read_text() == "old" and timing.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone.json", "live", "timing.json"]  # no staging left
    with staged(live, timing, gone) as (new_live, new_timing, _):
        (new_live / "plots").mkdir(parents=True)
        (new_live / "metrics.json").write_text("new")
        new_timing.write_text("new")
    assert (live / "metrics.json").read_text() == "new" and timing.read_text() == "new"
    assert not (live / "plots" / "old.tsv").exists() and not gone.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "timing.json"]
