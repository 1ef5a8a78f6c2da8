"""What every stage script and the `ser` command do around their one call into `ser`.

- `run_stage(main)`: an expected error (`ser.errors.SerError`: bad params,
  split, manifest, corpus, store or checkpoint problems, an unwritable output)
  is printed as one line naming the stage, and the process exits with status 1;
  any other exception is a bug and keeps its traceback.
- `ensure_writable(...)`: create the output folders and prove a file can be
  written in each *before* the long work starts, so a typo in a path fails in
  a second instead of after the last training epoch.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, NoReturn, Optional

from ser.errors import SerError

__all__ = ["OutputNotWritable", "run_stage", "ensure_writable"]

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
