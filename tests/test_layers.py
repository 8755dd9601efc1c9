"""The package's layers only point down: base -> data, models -> distill -> engine -> commands.

Reads every module's imports with ``ast`` (imports inside functions included) and fails on an import
of a higher layer, on an import between the two peer layers ``data`` and ``models``, and on any
import cycle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "segdistill"

# Rank of each layer; a module may import modules of a lower rank, or of its own layer.
RANKS = {"base": 0, "data": 1, "models": 1, "distill": 2, "engine": 3, "commands": 4}

# Modules outside the layer packages, and the detection feature package file by file.
LAYER_OF_MODULE = {
    "segdistill": "commands",  # the public API re-exports
    "segdistill.__main__": "commands",
    "segdistill.errors": "base",
    "segdistill.assets": "models",  # shipped weights: read by model builders
    "segdistill.config": "engine",
    "segdistill.cli": "commands",
    "segdistill.quickstart": "commands",
    "segdistill.bench": "commands",
    "segdistill.predict": "commands",
    "segdistill.export": "commands",
    "segdistill.detection": "engine",
    "segdistill.detection.coco": "data",
    "segdistill.detection.dataset": "data",
    "segdistill.detection.models": "models",
    "segdistill.detection.apd": "distill",
    "segdistill.detection.task": "engine",
    "segdistill.detection.evaluate": "engine",
    "segdistill.detection.config": "engine",
    "segdistill.detection.run": "engine",
    "segdistill.detection.bench": "commands",
}
LAYER_OF_PACKAGE = {
    "segdistill.base": "base",
    "segdistill.data": "data",
    "segdistill.models": "models",
    "segdistill.distill": "distill",
    "segdistill.engine": "engine",
    "segdistill.report": "commands",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module in LAYER_OF_MODULE:
        return LAYER_OF_MODULE[module]
    for package, layer in LAYER_OF_PACKAGE.items():
        if module == package or module.startswith(package + "."):
            return layer
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layers.py")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The segdistill modules ``path`` imports (relative imports resolved; ``from x import y`` counts
    ``x.y`` when that is a module, else ``x``)."""
    return imports_in(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py", modules)


def imports_in(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """:func:`imports_of` for the ``source`` text of module ``name``."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


GRAPH = import_graph()


def test_every_module_has_a_layer() -> None:
    for module in GRAPH:
        assert layer_of(module) in RANKS


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_point_down(module: str) -> None:
    own = layer_of(module)
    for target in sorted(GRAPH[module]):
        if target in ("segdistill",):  # the root package's lazy re-exports are not a dependency
            continue
        other = layer_of(target)
        assert RANKS[other] <= RANKS[own], f"{module} ({own}) imports {target} ({other}), a higher layer"
        if RANKS[other] == RANKS[own]:
            assert other == own, f"{module} ({own}) imports {target} ({other}), a peer layer"


def test_no_import_cycles() -> None:
    """Depth-first search over the module graph; reports the first cycle found."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if target == "segdistill":
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def upward_edges(module: str, targets: set[str]) -> list[str]:
    own = layer_of(module)
    return [t for t in sorted(targets) if t != "segdistill" and RANKS[layer_of(t)] > RANKS[own]]


def test_the_checker_finds_an_upward_import_inside_a_function() -> None:
    """A relative import of the engine from a models module, hidden in a function, is an upward edge."""
    source = "def build():\n    from ..engine.trainer import Trainer\n    return Trainer\n"
    targets = imports_in(source, "segdistill.models.segmentor", False, set(GRAPH))
    assert targets == {"segdistill.engine.trainer"}
    assert upward_edges("segdistill.models.segmentor", targets) == ["segdistill.engine.trainer"]
    assert upward_edges("segdistill.engine.run", targets) == []


# Imports that may sit inside a function: optional dependencies (and matplotlib, whose backend is set
# first), and the lazy entry points (the CLI dispatcher and the root package keep `--help` and the
# dataset generator's workers free of torch).
OPTIONAL_IMPORTS = {
    "matplotlib",
    "sklearn",
    "onnxruntime",
    "onnx",
    "pycocotools",
    "cityscapesscripts",
    "torch.utils.tensorboard",  # needs the tensorboard package
}
LAZY_MODULES = {"segdistill", "segdistill.cli"}


def imports_inside_functions(source: str) -> list[str]:
    """``line: import`` for every import in a function body that is not an optional dependency."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom):
                names = [("." * inner.level) + (inner.module or "")]
            else:
                continue
            if all(name in OPTIONAL_IMPORTS or name.split(".")[0] in OPTIONAL_IMPORTS for name in names):
                continue
            found.append(f"{inner.lineno}: {', '.join(names)}")
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_imports_sit_at_the_top_of_files(path: Path) -> None:
    if module_name(path) in LAZY_MODULES:
        return
    assert imports_inside_functions(path.read_text()) == [], f"{path.name} imports inside a function"


def test_the_top_of_file_check_finds_an_import_in_a_function() -> None:
    source = "import os\n\ndef f():\n    import json\n    from .x import y\n    import matplotlib\n    return json, y\n"
    assert imports_inside_functions(source) == ["4: json", "5: .x"]
