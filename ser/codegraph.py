"""The code a result depends on, read from the imports: one answer for DVC, resume and stores.

`closure(entry, ...)` follows every `import ser...` / `from ser... import ...` of
the entry modules or scripts, transitively, wherever it stands in a file (a
function-level import runs when its function does), and adds the packages'
`__init__.py` files that importing a submodule executes. It is the one source of
truth for "the code that determines a result":

- `dvc.yaml`: every stage lists deps that cover its script's closure;
  tests/test_codegraph.py computes the closures and fails on a missing one;
- the trainer's resume fingerprint hashes the closure of `ser.train.loop`;
- an embedding store's stamp hashes the closure of `ser.models.embeddings`.

Only source files count: `__pycache__` and other generated files are never
part of a closure (and `.dvcignore` keeps them out of DVC's folder hashes).
Standard library only, so any stage can import it before torch.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["PACKAGE", "PACKAGE_ROOT", "module_file", "imports_of", "closure", "code_fingerprint"]

PACKAGE = "ser"
PACKAGE_ROOT = Path(__file__).resolve().parent  # .../ser


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Optional[Path]:
    """The source file of module `name` (ser.a.b -> ser/a/b.py or ser/a/b/__init__.py); None if absent."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> Optional[str]:
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:  # a script outside the package (stages/*.py)
        return None
    parts = [PACKAGE, *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _imports_cached(path: Path, root: Path) -> frozenset[str]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    own = _module_name(path, root)
    package = (own if path.name == "__init__.py" else own.rpartition(".")[0]) if own else None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this file's package
                if package is None:
                    continue
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                continue
            found.add(module)
            # `from ser.models import crnn` imports a submodule, not only a name
            found.update(f"{module}.{a.name}" for a in node.names if module_file(f"{module}.{a.name}", root))
    return frozenset(found)


def imports_of(path: str | Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Names of the package's modules that the file at `path` imports anywhere in it."""
    return set(_imports_cached(Path(path).resolve(), root))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(*entries: str | Path, root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every package source file the entries run when imported, sorted.

    entries: module names (`ser.train.loop`) or paths of scripts or modules
    (`stages/train.py`). A script itself is not part of its closure; a module is.
    """
    files: set[Path] = set()
    todo: list[Path] = []
    for entry in entries:
        if isinstance(entry, str) and not entry.endswith(".py"):
            names = [entry]
        else:
            path = Path(entry).resolve()
            name = _module_name(path, root)
            if name is None:
                todo.append(path)  # a script: followed, not counted
                names = []
            else:
                names = [name]
        for name in names:
            for part in _with_parents(name):
                found = module_file(part, root)
                if found is None:
                    raise ModuleNotFoundError(f"{part}: no such module under {root}")
                if found not in files:
                    files.add(found)
                    todo.append(found)
    seen_scripts: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen_scripts:
            continue
        seen_scripts.add(path)
        for name in imports_of(path, root):
            for part in _with_parents(name):
                found = module_file(part, root)
                if found is not None and found not in files:
                    files.add(found)
                    todo.append(found)
    return sorted(files)


def code_fingerprint(*entries: str | Path, root: Path = PACKAGE_ROOT, extra: Iterable[Path] = ()) -> str:
    """sha256 over the closure's files (and `extra` files), each keyed by its path inside the package's parent.

    Any edit of a file the entries import changes it; a file they do not import never does.
    """
    digest = hashlib.sha256()
    base = root.parent
    for path in sorted({*closure(*entries, root=root), *map(Path, extra)}):
        rel = path.resolve().relative_to(base).as_posix() if path.resolve().is_relative_to(base) else path.name
        digest.update(f"{rel}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
