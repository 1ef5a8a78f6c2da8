"""What every stage script and the `ser` command do around their one call into `ser`.

- `run_stage(main)`: an expected error (`ser.errors.SerError`: bad params,
  split, manifest, corpus, store or checkpoint problems, an unwritable output)
  is printed as one line naming the stage, and the process exits with status 1;
  any other exception is a bug and keeps its traceback.
- `ensure_writable(...)`: create the output folders and prove a file can be
  written in each *before* the long work starts, so a typo in a path fails in
  a second instead of after the last training epoch.
- `staged(...)`: write outputs DVC does not cache (metrics, plots, timing)
  beside them and publish them only when the stage succeeds, so a failed run
  leaves the previous run's files in place (dvc.yaml marks them `persist`).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, NoReturn, Optional

from ser.errors import SerError

__all__ = ["OutputNotWritable", "run_stage", "ensure_writable", "staged"]

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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def staged(*outputs: str | Path) -> Iterator[list[Path]]:
    """Yield a staging path per output (its sibling `.<name>.staging`) for the stage to write instead.

    DVC deletes a stage's outputs before running it, unless they are `persist: true`; an output it
    does not cache (DVCLive metrics and plots, timing, evaluation metrics) could then never be
    restored after a failed run. dvc.yaml marks those `persist`, and the stage writes them here:
    when the block succeeds, each staged folder or file replaces its output whole (an output the
    run did not write is removed, as DVC would have); when it fails, the staged copies are
    removed and the previous run's files stay as they were.
    """
    outputs = [Path(p) for p in outputs]
    staging = [p.with_name(f".{p.name}.staging") for p in outputs]
    for path in staging:  # left by a killed run
        _remove(path)
    try:
        yield staging
    except BaseException:
        for path in staging:
            _remove(path)
        raise
    for out, new in zip(outputs, staging):
        old = out.with_name(f".{out.name}.previous")
        _remove(old)
        if out.exists() or out.is_symlink():
            os.replace(out, old)
        if new.exists():
            os.replace(new, out)
        _remove(old)
