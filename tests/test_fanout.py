"""`ser fanout`: the pending stages of a DVC pipeline as jobs (submitit: local processes, and a real
one-node SLURM on 127.0.0.1), recorded in dvc.lock as `dvc repro` records them (issue 20)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ser.fanout import localslurm
from ser.fanout.driver import CellLock, FanoutError, plan, run_pending
from ser.fanout.engines import SubmititEngine

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
PY = sys.executable

# A stage's work: append start/end to trace/<stage>.log (not an output), then write its outputs.
WORK = r"""
import os, sys, time, pathlib
name, src, out, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
trace = pathlib.Path("trace"); trace.mkdir(exist_ok=True)
log = trace / f"{name}.log"
with open(log, "a") as fh: fh.write(f"start {time.time()} {os.getpid()}\n")
pathlib.Path("pids").mkdir(exist_ok=True); pathlib.Path("pids", name).write_text(str(os.getpid()))
fail = pathlib.Path("fail", name)
if fail.exists():
    left = int(fail.read_text() or "1")
    if left > 0:
        fail.write_text(str(left - 1)); sys.exit(f"{name}: failing on purpose")
time.sleep(seconds)
text = "".join(pathlib.Path(s).read_text() for s in src.split(",") if s) + name + "\n"
pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
pathlib.Path(out).write_text(text)
with open(log, "a") as fh: fh.write(f"end {time.time()} {os.getpid()}\n")
"""


def _project(root: Path, seconds: float = 0.5) -> Path:
    """prep -> work@a, work@b, work@c -> total: a diamond DVC pipeline with no git."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "work.py").write_text(WORK)
    (root / "params.yaml").write_text("n: 1\n")
    (root / ".dvcignore").write_text("trace/\npids/\nfail/\n")
    cmd = f"{PY} work.py"
    stages = {
        "prep": {"cmd": f"{cmd} prep '' data/prep.txt 0", "deps": ["work.py"], "params": ["n"],
                 "outs": ["data/prep.txt"]},
        "work": {"foreach": ["a", "b", "c"],
                 "do": {"cmd": f"{cmd} work@${{item}} data/prep.txt out/${{item}}.txt {seconds}",
                        "deps": ["work.py", "data/prep.txt"], "outs": ["out/${item}.txt"]}},
        "total": {"cmd": f"{cmd} total out/a.txt,out/b.txt,out/c.txt total.txt 0",
                  "deps": ["out/a.txt", "out/b.txt", "out/c.txt"], "outs": ["total.txt"]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def _status(root: Path) -> dict:
    out = subprocess.run([DVC, "status", "--json"], cwd=root, capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "{}")


def _lock_outs(root: Path) -> dict[str, list[str]]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: sorted(o["md5"] for o in st.get("outs", [])) for name, st in lock.items()}


def _spans(root: Path, stage: str) -> list[tuple[float, float]]:
    lines = (root / "trace" / f"{stage}.log").read_text().split("\n")
    starts = [float(l.split()[1]) for l in lines if l.startswith("start")]
    ends = [float(l.split()[1]) for l in lines if l.startswith("end")]
    return list(zip(starts[-len(ends):] if ends else [], ends))


def _engine(tmp_path: Path, cluster: str = "local") -> SubmititEngine:
    return SubmititEngine(cluster, tmp_path / f"jobs-{cluster}", time_min=10)


def test_plan_orders_stages_by_their_dependencies(tmp_path):
    root = _project(tmp_path / "p")
    p = plan(root)
    assert p.changed == {"prep", "work@a", "work@b", "work@c", "total"}
    assert p.upstream["total"] == {"prep", "work@a", "work@b", "work@c"}
    assert p.ready(busy=()) == ["prep"]
    assert plan(root, ["work@b"]).changed == {"prep", "work@b"}
    with pytest.raises(FanoutError, match="no stage matches train@nosuch"):
        plan(root, ["train@nosuch"])


@pytest.mark.slow
def test_local_fanout_matches_a_sequential_dvc_repro(tmp_path):
    seq = _project(tmp_path / "seq")
    subprocess.run([DVC, "repro", "-q"], cwd=seq, check=True)
    fan = _project(tmp_path / "fan")
    records = run_pending(fan, _engine(tmp_path), max_jobs=2, poll_s=0.2, report=tmp_path / "report.json")
    assert {r.status for r in records.values()} == {"done"} and len(records) == 5
    assert _status(fan) == {}  # recorded: a following `dvc repro` is a no-op
    assert _lock_outs(fan) == _lock_outs(seq)
    assert (fan / "total.txt").read_text() == (seq / "total.txt").read_text()
    # dependency order, and two cells at once
    prep_end = _spans(fan, "prep")[0][1]
    works = [_spans(fan, f"work@{x}")[0] for x in "abc"]
    assert all(start >= prep_end for start, _ in works)
    assert _spans(fan, "total")[0][0] >= max(end for _, end in works)
    assert sum(1 for s, e in works for s2, e2 in works if (s, e) != (s2, e2) and s < e2 and s2 < e) >= 2
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mean_overhead_s"] is not None and len(report["cells"]) == 5
    out = subprocess.run([DVC, "repro"], cwd=fan, capture_output=True, text=True, check=True)
    assert "didn't change, skipping" in out.stdout or "is cached" not in out.stdout
    assert _lock_outs(fan) == _lock_outs(seq)


@pytest.mark.slow
def test_a_failed_cell_is_retried_and_a_failing_one_is_never_recorded(tmp_path):
    root = _project(tmp_path / "p", seconds=0.1)
    (root / "fail").mkdir()
    (root / "fail" / "work@a").write_text("1")  # fails once, then succeeds
    (root / "fail" / "work@c").write_text("99")  # always fails
    with pytest.raises(FanoutError, match=r"failed after retries, not recorded: work@c"):
        run_pending(root, _engine(tmp_path), max_jobs=2, retries=1, poll_s=0.2)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    assert {"prep", "work@a", "work@b"} <= set(lock) and "work@c" not in lock and "total" not in lock
    assert not (root / "total.txt").exists()
    assert set(_status(root)) == {"work@c", "total"}  # `dvc status` still shows what is left to do
    assert len(_spans(root, "work@a")) == 1 and (root / "trace" / "work@a.log").read_text().count("start") == 2
    assert not list((root / ".dvc/tmp/fanout/locks").glob("*.lock"))  # every lock released


@pytest.mark.slow
def test_two_launches_never_run_one_cell_twice(tmp_path):
    root = _project(tmp_path / "p", seconds=1.5)
    cmd = [str(BIN / "ser"), "fanout", "--engine", "local", "--jobs", "3", "--log-dir"]
    a = subprocess.Popen([*cmd, str(tmp_path / "ja")], cwd=root, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    b = subprocess.Popen([*cmd, str(tmp_path / "jb")], cwd=root, stderr=subprocess.PIPE, text=True)
    err_a, err_b = a.communicate(timeout=300)[1], b.communicate(timeout=300)[1]
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    for stage in ("prep", "work@a", "work@b", "work@c", "total"):
        assert (root / "trace" / f"{stage}.log").read_text().count("start") == 1, stage
    assert _status(root) == {}


def test_a_lock_left_by_a_dead_launch_is_taken_over_and_a_live_one_is_not(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = CellLock(tmp_path, "train@x-1-1", "old")
    lock.path.parent.mkdir(parents=True)
    lock.path.write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "launch": "old"}))
    assert CellLock(tmp_path, "train@x-1-1", "new").acquire()
    assert not CellLock(tmp_path, "train@x-1-1", "third").acquire()  # held by this live process
    CellLock(tmp_path, "train@x-1-1", "third").release()  # not ours: kept
    assert lock.path.exists()
    CellLock(tmp_path, "train@x-1-1", "new").release()
    assert not lock.path.exists()


# --------------------------------------------------------------------------- a real SLURM
@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = localslurm.available()
    if why:
        if os.environ.get("SER_REQUIRE_SLURM"):
            pytest.fail(f"SER_REQUIRE_SLURM is set, but a local SLURM cannot start: {why}")
        pytest.skip(f"no local SLURM: {why}")
    cluster = localslurm.LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2, ctld_port=16817, d_port=16818)
    cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.mark.slow
def test_slurm_fanout_with_a_worker_killed_mid_job(tmp_path, slurm):
    """Two SLURM workers; the job of work@b is killed with SIGKILL while it runs: it is retried, and
    the recorded results equal a sequential `dvc repro`."""
    seq = _project(tmp_path / "seq", seconds=3)
    subprocess.run([DVC, "repro", "-q"], cwd=seq, check=True)
    root = _project(tmp_path / "p", seconds=3)
    killed = []

    def kill_when_running() -> None:
        pid_file = root / "pids" / "work@b"
        for _ in range(600):
            if pid_file.exists() and (root / "trace" / "work@b.log").exists():
                pid = int(pid_file.read_text())
                time.sleep(0.5)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    records = run_pending(root, _engine(tmp_path, "slurm"), max_jobs=2, retries=2, poll_s=0.5)
    killer.join()
    assert killed, "the job of work@b was never seen running"
    assert records["work@b"].attempts == 2 and records["work@b"].status == "done"
    assert len(set(records["work@b"].job_ids)) == 2  # a second SLURM job
    assert _status(root) == {}
    assert _lock_outs(root) == _lock_outs(seq)


@pytest.mark.slow
def test_slurm_job_that_leaves_the_queue_without_a_result_is_retried(tmp_path, slurm):
    """scancel (a pre-empted or lost job, as the scheduler sees it) is noticed through squeue and retried."""
    root = _project(tmp_path / "p", seconds=4)
    cancelled = []

    def cancel_when_running() -> None:
        for _ in range(600):
            if (root / "trace" / "work@a.log").exists():
                jobs = subprocess.run(["squeue", "-h", "-n", "work@a", "-o", "%i"], capture_output=True,
                                      text=True).stdout.split()
                if jobs:
                    subprocess.run(["scancel", "--signal=KILL", "--full", jobs[0]], check=True)
                    cancelled.append(jobs[0])
                    return
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    records = run_pending(root, _engine(tmp_path, "slurm"), targets=["work@a"], max_jobs=2, retries=1, poll_s=0.5)
    canceller.join()
    assert cancelled and records["work@a"].attempts == 2 and records["work@a"].status == "done"
    assert set(_status(root)) == {"work@b", "work@c", "total"}  # only the target and what it needs ran


def test_cli_usage_errors_are_one_line(tmp_path):
    root = _project(tmp_path / "p")
    ser = str(BIN / "ser")
    bad_target = subprocess.run([ser, "fanout", "train@nosuch"], cwd=root, capture_output=True, text=True)
    assert bad_target.returncode == 2 and "no stage matches train@nosuch" in bad_target.stderr
    assert "Traceback" not in bad_target.stderr
    bad_opt = subprocess.run([ser, "fanout", "--engine", "slurm", "--slurm-opt", "account"], cwd=root,
                             capture_output=True, text=True)
    assert bad_opt.returncode == 2 and "--slurm-opt takes KEY=VALUE" in bad_opt.stderr
    assert not (root / "dvc.lock").exists()  # nothing ran
