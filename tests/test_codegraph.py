"""The code a result depends on (ser.codegraph) and dvc.yaml's deps, checked against each other."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from ser import codegraph
from ser.codegraph import closure, code_fingerprint, imports_of

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ser"


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _body(stage: dict) -> dict:
    return stage.get("do", stage)


def _script(cmd: str) -> Path:
    found = re.search(r"\bstages/\w+\.py\b", " ".join(cmd.split()))
    assert found, cmd
    return ROOT / found.group(0)


def _dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in _body(stage).get("deps", [])]


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_every_stage_depends_on_all_the_code_it_imports(name):
    stage = _stages()[name]
    script = _script(_body(stage)["cmd"])
    deps = _dep_paths(stage)
    assert script.relative_to(ROOT).as_posix() in deps, f"{name}: its own script is not a dep"
    missing = [p.relative_to(ROOT).as_posix() for p in closure(script) if not _covered(p, deps)]
    assert not missing, f"dvc.yaml stage {name!r} imports {missing} but does not list them under deps"


@pytest.mark.parametrize("name", ["train", "evaluate", "precompute-mels", "precompute-embeddings", "bind"])
def test_report_and_predict_code_is_no_dependency_of_a_result_stage(name):
    deps = _dep_paths(_stages()[name])
    for rel in ("ser/eval/report.py", "ser/infer/predict.py", "ser/infer/cli.py", "ser/eval/summary.py"):
        assert not _covered(PKG.parent / rel, deps), f"{name} depends on {rel}"


def test_dvcignore_keeps_generated_files_out_of_folder_hashes():
    patterns = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in patterns and "*.py[cod]" in patterns


def test_imports_anywhere_in_a_file_count(tmp_path):
    pkg = tmp_path / "ser"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom ser import b\n\ndef f():\n    from ser.sub import c\n    import ser.d\n")
    (pkg / "b.py").write_text("from . import e\n")
    (pkg / "sub" / "c.py").write_text("from ..b import thing\n")
    (pkg / "d.py").write_text("")
    (pkg / "e.py").write_text("")
    (pkg / "unused.py").write_text("")
    assert imports_of(pkg / "a.py", pkg) == {"ser", "ser.b", "ser.sub", "ser.sub.c", "ser.d"}
    assert imports_of(pkg / "sub" / "c.py", pkg) == {"ser.b"}
    names = {p.relative_to(pkg).as_posix() for p in closure("ser.a", root=pkg)}
    assert names == {"__init__.py", "a.py", "b.py", "e.py", "d.py", "sub/__init__.py", "sub/c.py"}
    script = tmp_path / "script.py"
    script.write_text("from ser.sub.c import x\n")
    assert {p.relative_to(pkg).as_posix() for p in closure(script, root=pkg)} == {
        "__init__.py", "sub/__init__.py", "sub/c.py", "b.py", "e.py"}
    with pytest.raises(ModuleNotFoundError, match="ser.nosuch"):
        closure("ser.nosuch", root=pkg)


def test_trainer_fingerprint_follows_its_imports_and_nothing_else(tmp_path):
    """Editing any module the trainer imports changes its fingerprint; reports, predict and CLI do not."""
    pkg = tmp_path / "ser"
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_fingerprint("ser.train.loop", root=pkg)
    assert before == code_fingerprint("ser.train.loop", root=pkg)
    assert before == code_fingerprint("ser.train.loop")  # the installed package is this checkout
    for rel in ("eval/report.py", "infer/predict.py", "infer/cli.py", "eval/summary.py", "data/download.py",
                "data/demo.py", "models/embeddings.py", "features/precompute.py"):
        with open(pkg / rel, "a") as f:
            f.write("# edited\n")
    (pkg / "train" / "__pycache__").mkdir(exist_ok=True)
    (pkg / "train" / "__pycache__" / "loop.cpython-311.pyc").write_bytes(b"bytecode")
    assert code_fingerprint("ser.train.loop", root=pkg) == before, "code the trainer never runs changed it"
    files = closure("ser.train.loop", root=pkg)
    for rel in ("train/augment.py", "features/stores.py", "config.py", "stats.py", "models/crnn.py",
                "features/dataset.py", "models/linear.py"):
        assert pkg / rel in files, rel
    for path in files:
        with open(path, "a") as f:
            f.write("# edited\n")
        after = code_fingerprint("ser.train.loop", root=pkg)
        assert after != before, path
        before = after


def test_the_embedding_store_stamp_and_trainer_share_the_graph():
    assert codegraph.PACKAGE_ROOT == PKG
    emb = {p.relative_to(PKG).as_posix() for p in closure("ser.models.embeddings")}
    assert {"models/embeddings.py", "models/encoders.py", "features/stores.py", "runtime.py"} <= emb
    assert not emb & {"train/loop.py", "eval/evaluate.py", "models/linear.py", "eval/report.py", "infer/predict.py"}
    train = {p.relative_to(PKG).as_posix() for p in closure("ser.train.loop")}
    assert not train & {"eval/evaluate.py", "eval/report.py", "infer/predict.py", "infer/cli.py", "eval/summary.py",
                        "models/embeddings.py", "features/precompute.py"}


def test_no_import_circle_between_modules():
    """Imports point one way: no module reaches (directly or through others) back to itself."""
    graph = {}
    for path in PKG.rglob("*.py"):
        name = codegraph._module_name(path, PKG)
        graph[name] = {m for m in imports_of(path) if codegraph.module_file(m) and m != name}
    packages = {n for n in graph if (PKG.joinpath(*n.split(".")[1:]) / "__init__.py").is_file()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                # a package's __init__ importing its own submodules (a registry) is not a circle
                if nxt not in seen and nxt not in packages:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(n for n in graph if n not in packages and n in reach(n))
    assert not circles, f"modules in an import circle: {circles}"


def _expanded_stage_names() -> set[str]:
    """The stage names dvc.yaml generates from params.yaml (foreach over a list or dict, matrix over lists)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def resolve(ref):
        value = params
        for part in ref.strip("${} ").split("."):
            value = value[part]
        return value

    names = set()
    for name, stage in _stages().items():
        if "foreach" in stage:
            items = resolve(stage["foreach"])
            names |= {f"{name}@{key}" for key in (items if isinstance(items, (list, dict)) else [])}
        elif "matrix" in stage:
            axes = [[str(v) for v in resolve(ref)] for ref in stage["matrix"].values()]
            cells = [[]]
            for axis in axes:
                cells = [c + [v] for c in cells for v in axis]
            names |= {f"{name}@{'-'.join(c)}" for c in cells}
        else:
            names.add(name)
    return names


def test_dvc_lock_and_model_folders_hold_no_leftovers():
    """dvc.lock records only the stages dvc.yaml generates now; models/ has a folder per model of params.yaml."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stale = sorted(set(lock) - _expanded_stage_names())
    assert not stale, f"dvc.lock holds stages that dvc.yaml no longer has: {stale}"
    models = set(yaml.safe_load((ROOT / "params.yaml").read_text())["models"])
    leftovers = sorted(p.parent.name for p in (ROOT / "models").glob("*/.gitignore") if p.parent.name not in models)
    assert not leftovers, f"models/ holds folders of models params.yaml no longer has: {leftovers}"


# The layers of ser/__init__.py's docstring, bottom up: a module imports only from its own layer or below.
LAYERS = [("floor", ("config", "errors", "fsutil", "logutil", "codegraph", "runtime", "stageutil", "stats", "runs")),
          ("data", ("data",)), ("features", ("features",)), ("models", ("models",)), ("train", ("train",)),
          ("eval", ("eval",)), ("fanout", ("fanout",)), ("infer", ("infer",))]
# Function-level imports of ser modules are allowed only to keep a heavy optional dependency lazy.
LAZY_OK = {"ser.models.encoders": "transformers, peft, bitsandbytes", "ser.data.demo": "scipy synthesis",
           "ser.infer.predict": "torch and the models, for `ser report`", "ser.eval.report": "matplotlib"}


def _layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for rank, (_, names) in enumerate(LAYERS):
        if first in names:
            return rank
    return 0  # ser/__init__.py


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(PKG.rglob("*.py")):
        name = codegraph._module_name(path, PKG)
        for target in imports_of(path):
            if codegraph.module_file(target) and _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, f"imports that point up the layers: {upward}"


def test_function_level_imports_only_keep_heavy_dependencies_lazy():
    import ast

    found = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("ser"):
                    if inner.module not in LAZY_OK:
                        found.append(f"{path.relative_to(PKG)}:{inner.lineno} from {inner.module}")
                elif isinstance(inner, ast.Import):
                    found += [f"{path.relative_to(PKG)}:{inner.lineno} import {a.name}" for a in inner.names
                              if a.name.startswith("ser") and a.name not in LAZY_OK]
    assert not found, f"function-level imports of light ser modules (import them at the top): {found}"


def test_no_function_is_longer_than_80_lines():
    import ast

    long = [f"{path.relative_to(PKG)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(PKG.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, f"functions over 80 lines: {long}"
