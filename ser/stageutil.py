"""What every stage script and the `ser` command do around their one call into `ser`.

- `run_stage(main)`: an expected error (`ser.errors.SerError`: bad params,
  split, manifest, corpus, store or checkpoint problems, an unwritable output)
  is printed as one line naming the stage, and the process exits with status 1;
  any other exception is a bug and keeps its traceback.
- `ensure_writable(...)`: create the output folders and prove a file can be
  written in each *before* the long work starts, so a typo in a path fails in
  a second instead of after the last training epoch.
- `set_torch_threads(n)`: one place that decides how many threads torch uses.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn, Optional

from ser.errors import SerError

__all__ = ["OutputNotWritable", "run_stage", "ensure_writable", "available_cores", "set_torch_threads",
           "torch_threads"]

log = logging.getLogger(__name__)


class OutputNotWritable(PermissionError, SerError):
    """An output folder cannot be created or written; the message names it."""


def run_stage(main: Callable[[], object], name: Optional[str] = None) -> NoReturn:
    """Run a stage's `main()` and exit: 0 on success, 1 with a one-line message on a SerError.

    `name` defaults to the script's name (`stages/train.py` -> `train`).
    """
    name = name or Path(sys.argv[0]).stem.replace("_", "-")
    try:
        result = main()
    except SerError as exc:
        # The message says what to fix; a traceback would only bury it.
        raise SystemExit(f"{name} failed: {exc}") from None
    raise SystemExit(result if isinstance(result, int) else 0)


def _probe(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def ensure_writable(*folders: str | Path, files: Iterable[str | Path] = ()) -> None:
    """Create each folder (with parents) and write and delete a probe file in it.

    `files`: output files; their parent folders are checked, and a file that
    exists must be a writable regular file. Raises OutputNotWritable naming
    the first path that fails.
    """
    for f in map(Path, files):
        if f.is_dir():
            raise OutputNotWritable(f"{f}: is a folder; give a file name to write to")
        if f.exists() and not os.access(f, os.W_OK):
            raise OutputNotWritable(f"{f}: exists and is not writable")
    for folder in [*map(Path, folders), *(Path(f).parent for f in files)]:
        try:
            _probe(folder)
        except OSError as exc:
            raise OutputNotWritable(f"cannot write to {folder}/ ({exc.strerror or exc}); fix the path "
                                    "or its permissions and run again") from None


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
