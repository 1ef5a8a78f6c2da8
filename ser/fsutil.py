"""Small file-system helpers shared by the stages."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional


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


def source_fingerprint(root: str | Path, files: Optional[Iterable[str]] = None,
                       exclude: Iterable[str] = ()) -> str:
    """sha256 over source files of a package, each keyed by its path inside `root`.

    files: paths relative to root (a missing one counts as empty); None: every .py
    file under root except those in `exclude`. Any edit of a covered file changes it.
    """
    root = Path(root)
    skip = set(exclude)
    rels = sorted(files) if files is not None else sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    digest = hashlib.sha256()
    for rel in rels:
        if rel in skip:
            continue
        path = root / rel
        digest.update(f"{rel}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes() if path.is_file() else b"").digest())
    return digest.hexdigest()
