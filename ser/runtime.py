"""Where and how a process computes: torch threads and the device, and the record of both.

A run's weights depend on more than its params: the number of torch threads
(intra-op reductions split differently), the device and the precision change
the floating-point sums. `set_torch_threads` is the one place that decides the
thread count, `resolve_device` the device, and `runtime_record` what a run
writes into its model's meta.json and resume fingerprint, so two runs are
comparable bit for bit exactly when their records are equal.
torch is imported inside the functions: importing this module stays cheap.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:
    import torch

__all__ = ["available_cores", "set_torch_threads", "torch_threads", "resolve_device", "runtime_record",
           "describe_runtimes"]

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, lowered by a cgroup v2 CPU quota.

    torch counts the machine's cores, so in a container limited to 2 CPUs of a
    64-core host it would start 64 threads on 2 CPUs.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def set_torch_threads(threads: Optional[int] = None) -> int:
    """Set torch's intra-op threads and return the number.

    threads: `train.threads` from params.yaml; None means OMP_NUM_THREADS when
    it is set (an explicit choice, e.g. `OMP_NUM_THREADS=4 dvc queue start -j 2`),
    else every core this process may use (`available_cores`): DVC runs one
    stage at a time, so a stage has the machine to itself. When several jobs
    share the cores (a queue with -j N, another training), give each its share:
    PyTorch's spinning threads slow down many-fold when oversubscribed.
    """
    import torch  # here, so that importing this module stays cheap

    source = "train.threads"
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            threads, source = int(env), "OMP_NUM_THREADS"
        else:
            # `accelerate launch` on a CPU: the processes of one machine share its cores.
            procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            threads, source = max(1, available_cores() // max(1, procs)), "available cores"
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    log.info("torch uses %d thread(s) (%s)", threads, source)
    return threads


@contextmanager
def torch_threads(threads: Optional[int] = None) -> Iterator[int]:
    """`set_torch_threads` for a block; the previous setting is restored after it (the CLI in-process)."""
    import torch

    previous = torch.get_num_threads()
    try:
        yield set_torch_threads(threads)
    finally:
        torch.set_num_threads(previous)


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU; otherwise a torch device name (cpu, cuda, cuda:1).

    Chosen directly rather than through an Accelerator, whose process-wide
    state would pin the training settings of a later run in the same process.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is visible; use cpu (or auto)")
    return device


def runtime_record(device: Any, mixed_precision: str = "no") -> dict[str, Any]:
    """What a run's numbers depend on besides params, data and code: torch threads, device, precision, torch.

    Written into a model's meta.json and its resume fingerprint (a run never resumes
    under another record) and shown by `ser report`.
    """
    import torch

    device = torch.device(device)
    record: dict[str, Any] = {"threads": torch.get_num_threads(), "device": device.type,
                              "mixed_precision": str(mixed_precision), "torch": str(torch.__version__)}
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    return record


def describe_runtimes(records: list[Optional[dict[str, Any]]]) -> str:
    """One label for the runtime records of a model's runs: "2 threads, cpu, torch 2.13.0";
    "mixed: ..." when the runs differ (their weights are then not comparable bit for bit);
    "—" for runs that record none (classical models: their fits do not depend on torch threads)."""
    labels = []
    for r in records:
        if not r:
            label = "—"
        else:
            threads = r.get("threads")
            label = f"{threads} thread{'s' if threads != 1 else ''}, {r.get('device_name') or r.get('device')}"
            if r.get("mixed_precision") not in (None, "no"):
                label += f", {r['mixed_precision']}"
            label += f", torch {r.get('torch')}"
        if label not in labels:
            labels.append(label)
    if not labels:
        return "—"
    return labels[0] if len(labels) == 1 else "mixed: " + "; ".join(labels)
