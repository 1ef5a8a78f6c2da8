"""Small file-system helpers shared by the stages."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | Path) -> None:
    """Give `root` and everything under it the modes a plain mkdir/open would under the umask.

    tempfile.mkdtemp makes 0700 folders and some writers (safetensors) 0600 files, whatever the
    umask: on a shared server nobody else could read a model. Call it before the rename that
    publishes a folder built in a temporary one."""
    mask = current_umask()
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = True) -> None:
    """Write JSON through a temporary sibling and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=sort_keys)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
