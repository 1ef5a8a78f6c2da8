"""Where a cell runs: one small interface, submitit behind it.

A cell is one DVC stage (`train@dann-1-1337`): its command, run in the repository root of a shared
filesystem. `SubmititEngine("slurm", ...)` submits each cell as its own SLURM job (its own GPUs,
partition and time limit); `SubmititEngine("local", ...)` runs the same job objects as processes on
this machine. The driver (ser.fanout.driver) sees only `submit`, `Job.poll` and `Job.cancel`.
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import submitit

__all__ = ["Cell", "Outcome", "Job", "Engine", "CellCommand", "SubmititEngine", "ENGINES"]

ENGINES = ("local", "slurm")


@dataclass(frozen=True)
class Cell:
    """One DVC stage to run: its addressing (`train@dann-1-1337`), command and working directory."""

    stage: str
    cmd: str
    wdir: str


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ok, the command's own wall time, its start and end (time.time() on the node),
    and the tail of its error output."""

    ok: bool
    seconds: float
    message: str = ""
    started: Optional[float] = None
    ended: Optional[float] = None


class CellCommand(submitit.helpers.Checkpointable):
    """The job: the stage's own command in the repository root. On a SLURM time limit or pre-emption
    submitit calls `checkpoint` and requeues it; the train stage resumes from its checkpoints."""

    def __init__(self, cmd: str, wdir: str, env: Optional[dict[str, str]] = None) -> None:
        self.cmd, self.wdir, self.env = cmd, wdir, dict(env or {})

    def __call__(self) -> dict[str, float]:
        started, t0 = time.time(), time.perf_counter()
        code = subprocess.call(["/bin/sh", "-c", self.cmd], cwd=self.wdir, env={**os.environ, **self.env})
        if code != 0:
            raise RuntimeError(f"exit status {code}: {self.cmd}")
        return {"seconds": time.perf_counter() - t0, "started": started, "ended": time.time()}


class Job(Protocol):
    job_id: str

    def poll(self) -> Optional[Outcome]:
        """The outcome once the job has ended (well, failed, or lost), else None."""

    def cancel(self) -> None: ...


class Engine(Protocol):
    name: str

    def can_take(self) -> bool:
        """Whether a job could start now (locally: enough free GPUs)."""

    def submit(self, cell: Cell) -> Job: ...


class _SubmititJob:
    """A submitit job; a SLURM job that left the queue without a result (killed node, scancel) is lost."""

    LOST_AFTER_S = 20.0  # squeue and the result file may lag a job's end by a few seconds
    SQUEUE_EVERY_S = 10.0  # squeue is a client of slurmctld: ask it at most this often per job

    def __init__(self, job: Any, cluster: str, release: Callable[[], None] = lambda: None) -> None:
        self.job, self.cluster, self._release = job, cluster, release
        self.job_id = str(job.job_id)
        self._gone_since: Optional[float] = None
        self._asked = 0.0

    def poll(self) -> Optional[Outcome]:
        outcome = self._poll()
        if outcome is not None:
            self._release()
        return outcome

    def _poll(self) -> Optional[Outcome]:
        if self.job.done():
            try:
                result = self.job.result()
                return Outcome(True, float(result["seconds"]), started=result["started"], ended=result["ended"])
            except Exception as exc:  # the command failed, or submitit could not run it
                first = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
                return Outcome(False, 0.0, f"{first[0][:300]}\n{_tail(self.job.paths.stderr)}\n"
                                           f"(log: {self.job.paths.stderr})")
        now = time.monotonic()
        if self.cluster != "slurm" or now - self._asked < self.SQUEUE_EVERY_S:
            return None
        self._asked = now
        if _in_squeue(self.job_id):
            self._gone_since = None
            return None
        self._gone_since = self._gone_since or now
        if now - self._gone_since > self.LOST_AFTER_S:
            return Outcome(False, 0.0, f"SLURM job {self.job_id} left the queue without a result "
                                       f"(killed, cancelled or its node failed); log: {self.job.paths.stderr}")
        return None

    def cancel(self) -> None:
        try:
            self.job.cancel(check=False)
        except Exception:  # already gone
            pass
        self._release()


def _tail(path: Path, lines: int = 12) -> str:
    """The last lines the stage's command wrote to stderr, without submitit's own traceback."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    text = text.split("submitit ERROR", 1)[0]
    return "\n".join(text.strip().splitlines()[-lines:])


def _in_squeue(job_id: str) -> bool:
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: keep waiting
    if out.returncode != 0:
        return "Invalid job id" not in out.stderr
    return any(state in _QUEUED for state in out.stdout.split())


# squeue states of a job that may still produce a result (a requeued job is pending again)
_QUEUED = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
           "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


class SubmititEngine:
    """Cells as submitit jobs: `local` (processes on this machine) or `slurm` (one sbatch job per cell).

    gpus_per_job, cpus_per_job and time_min map to SLURM's --gpus-per-node, --cpus-per-task and --time;
    partition and slurm_extra (e.g. {"account": "lab", "qos": "high"}) to sbatch options. Locally, each
    job gets gpus_per_job of `gpus` (default: every visible GPU) to itself, through CUDA_VISIBLE_DEVICES."""

    def __init__(self, cluster: str, folder: Path, *, gpus_per_job: int = 0, cpus_per_job: int = 1,
                 time_min: int = 240, partition: Optional[str] = None,
                 slurm_extra: Optional[dict[str, Any]] = None, env: Optional[dict[str, str]] = None,
                 gpus: Optional[Sequence[int]] = None) -> None:
        if cluster not in ENGINES:
            raise ValueError(f"unknown engine {cluster!r}; known: {', '.join(ENGINES)}")
        self.name = cluster
        self.env = dict(env or {})
        self.gpus_per_job = gpus_per_job
        self._free_gpus = list(gpus if gpus is not None else range(_visible_gpu_count()))
        if cluster == "local" and gpus_per_job > len(self._free_gpus):
            raise ValueError(f"{gpus_per_job} GPU(s) per job, but this machine shows {len(self._free_gpus)}")
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: dict[str, Any] = {"timeout_min": time_min, "gpus_per_node": gpus_per_job, "tasks_per_node": 1,
                                  "cpus_per_task": cpus_per_job}
        if cluster == "slurm":
            if partition:
                params["slurm_partition"] = partition
            if slurm_extra:
                params["slurm_additional_parameters"] = dict(slurm_extra)
        self.executor.update_parameters(**params)

    def can_take(self) -> bool:
        """Whether a job could start now (locally: enough free GPUs)."""
        return self.name != "local" or len(self._free_gpus) >= self.gpus_per_job

    def submit(self, cell: Cell) -> Job:
        params: dict[str, Any] = {"name": cell.stage}
        release: Callable[[], None] = lambda: None
        if self.name == "local" and self.gpus_per_job:
            taken = [self._free_gpus.pop(0) for _ in range(self.gpus_per_job)]
            params["local_visible_gpus"] = taken

            def release() -> None:
                self._free_gpus.extend(g for g in taken if g not in self._free_gpus)
        self.executor.update_parameters(**params)
        job = self.executor.submit(CellCommand(cell.cmd, cell.wdir, self.env))
        return _SubmititJob(job, self.name, release)


def _visible_gpu_count() -> int:
    """GPUs this machine shows (nvidia-smi), without importing torch."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0
