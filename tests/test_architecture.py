"""The import graph flows one way: cli -> api -> experiment/training/evaluation/export/serving -> models/data/losses
-> config/errors. No module imports a higher layer, and no import cycle exists (function-level imports count)."""
from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

import pytest

import embedtune

PACKAGE = Path(embedtune.__file__).parent
# Lower number = lower layer; a module may import its own layer or below.
LAYERS = {
    "config": 0, "options": 0, "errors": 0, "files": 0, "runtime": 0, "distributed": 0, "progress": 0, "extras": 0,
    "hooks": 0,  # the product's one test hook; embedtune.testing arms it (see hooks.py)
    "models": 1, "data": 1, "losses": 1,
    "training": 2, "evaluation": 2, "export": 2, "serve": 2, "encode_files": 2, "experiment": 2, "sweep": 2, "runs": 2,
    "mteb_model": 2, "mine_files": 2,
    "testing": 2,  # fault injection: reaches the trainer through training/callbacks.py; no product module imports it
    "api": 3,
    "cli": 4, "cli_flags": 4, "launch": 4, "__main__": 4, "__init__": 4,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("embedtune"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("embedtune"))
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    assert all(module.count(".") == 0 or module.split(".")[1] in LAYERS for module in graph())


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{m} -> {i}" for m, deps in graph().items() for i in deps
                    if m != "embedtune" and layer(i) > layer(m))
    assert upward == []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(edges.get(module, ())):
            if dep not in edges:
                continue
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(edges):
        if module not in state and module != "embedtune":
            visit(module, [module])
    assert cycles == []


def test_the_package_passes_its_own_lint_rules():
    """pyproject.toml promises `ruff check src` is clean (line length, imports, bugbear, pyupgrade): hold it to that."""
    ruff = pytest.importorskip("ruff")
    found = subprocess.run([os.fsdecode(ruff.find_ruff_bin()), "check", "--no-cache", str(PACKAGE)],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stdout
