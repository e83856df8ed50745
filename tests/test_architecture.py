"""The package's layout stays honest (docs/architecture.md): no import circle between its modules, and each
sub-package imports only the layers below it.

Imports are read from the source with ``ast``, wherever they stand: at module level, inside a function, under
``if TYPE_CHECKING``. A function-level import still runs the imported module, so it can close a circle that
only shows at run time; it is counted like any other. Importing ``a.b.c`` first runs the ``__init__`` of ``a``
and ``a.b``, so an import also depends on the packages above its target (those that are not also above the
importer, which are already being imported).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
from pathlib import Path

import pytest

import liftcam_utils

PACKAGE_DIR = Path(liftcam_utils.__file__).parent
ROOT = PACKAGE_DIR.parent

# sub-package (or base module) -> what it may import, besides itself; docs/architecture.md draws this
LAYERS = {
    "files": set(),
    "json_values": set(),
    "engine": set(),
    "datasets": {"engine"},
    "models": {"files", "engine", "datasets"},
    "methods": {"engine"},
    "evaluation": {"files", "json_values", "engine", "datasets", "models", "methods"},
    "app": {"files", "json_values", "engine", "datasets", "models", "methods", "evaluation"},
}


def module_names(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by the name of its ``__init__``)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((package, *parts))] = path
    return names


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (directly, or as the packages above a target)."""
    modules = module_names(package_dir, package)
    graph = {}
    for name, path in modules.items():
        here = name if _is_package(name, modules) else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here.split(".")[:len(here.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:  # `from a import b`: b is a module of a, or a name in a's namespace
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        edges = set()
        for target in targets:
            if target not in modules:  # outside the package (torch, numpy, ...)
                continue
            edges.add(target)
            edges |= {up for up in _ancestors(target) if up not in _ancestors(name) and up != name}
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of the import graph: its strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layer_of(module: str) -> str | None:
    """The sub-package (or base module) a module belongs to; None for the package's own ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Each import that goes from one layer to a layer it may not use, as ``"importer -> imported"``."""
    found = []
    for importer, targets in sorted(graph.items()):
        layer = layer_of(importer)
        if layer is None:  # liftcam_utils/__init__.py gathers the public API from every layer
            continue
        if layer not in LAYERS:
            found.append(f"{importer}: sub-package {layer!r} has no place in LAYERS (docs/architecture.md)")
            continue
        for target in sorted(targets):
            other = layer_of(target)
            if other is not None and other != layer and other not in LAYERS[layer]:
                found.append(f"{importer} -> {target}")
    return found


def copy_of_package(tmp_path: Path) -> Path:
    copy = tmp_path / "liftcam_utils"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_package_has_no_import_circle():
    assert import_cycles(imports(PACKAGE_DIR, "liftcam_utils")) == []


def test_each_layer_imports_only_the_layers_below_it():
    assert layer_violations(imports(PACKAGE_DIR, "liftcam_utils")) == []


def test_the_layers_themselves_form_no_circle():
    assert import_cycles({layer: set(allowed) for layer, allowed in LAYERS.items()}) == []


def test_every_sub_package_and_base_module_has_a_layer():
    top = {layer_of(name) for name in module_names(PACKAGE_DIR, "liftcam_utils")} - {None}
    assert top == set(LAYERS)


def test_the_reader_sees_function_level_and_relative_imports(tmp_path):
    """A planted two-module circle, one side inside a function, is found; so is a three-module one."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("import os\n\n\ndef late():\n    from . import b\n    return b\n")
    (package / "b.py").write_text("from .a import late\n")
    (package / "sub" / "c.py").write_text("from ..d import x\n")
    (package / "d.py").write_text("from pkg.sub import e\nx = 1\n")
    (package / "sub" / "e.py").write_text("from . import c\n")
    graph = imports(package, "pkg")
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.sub.e", "pkg.sub"}  # pkg.sub's __init__ runs first
    assert import_cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.d", "pkg.sub.c", "pkg.sub.e"]]


@pytest.mark.parametrize("module, planted, expected_edge", [
    # the circle this layout removed: the pipeline reaching up to the registry of methods
    ("engine/cam_input.py", "from ..methods import METHODS", "liftcam_utils.engine.cam_input -> liftcam_utils.methods"),
    # a dataset that loads a model by name (the flat folder used to)
    ("datasets/folder.py", "from ..models import load_model", "liftcam_utils.datasets.folder -> liftcam_utils.models"),
])
def test_a_planted_circle_fails_both_checks(tmp_path, module, planted, expected_edge):
    copy = copy_of_package(tmp_path)
    path = copy / module
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {planted}\n")
    graph = imports(copy, "liftcam_utils")
    cycles = import_cycles(graph)
    assert cycles, "the planted import closes a circle"
    importer = expected_edge.split(" -> ")[0]
    assert any(importer in cycle for cycle in cycles)
    assert expected_edge in layer_violations(graph)


def test_a_new_sub_package_must_be_placed(tmp_path):
    copy = copy_of_package(tmp_path)
    (copy / "course").mkdir()
    (copy / "course" / "__init__.py").write_text("from ..methods import METHODS\n")
    assert layer_violations(imports(copy, "liftcam_utils")) == [
        "liftcam_utils.course: sub-package 'course' has no place in LAYERS (docs/architecture.md)"]


def _resolves(dotted: str) -> bool:
    """Whether ``liftcam_utils.a.b.c`` names a module, or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def _texts():
    """The prose and code a reader follows: README, docs, the notebooks' and the explorer's cells, the package's
    own docstrings and messages, the benchmarks and the Makefile."""
    for path in [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md")),
                 *sorted(PACKAGE_DIR.rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]:
        yield path, path.read_text()
    for path in [*sorted((ROOT / "notebooks").glob("*.ipynb")), *sorted((ROOT / "apps").glob("*.ipynb"))]:
        yield path, "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])


def test_every_dotted_path_in_the_docs_and_notebooks_exists():
    """A module moved or renamed leaves no reader with a path that does not import."""
    missing = [f"{path.relative_to(ROOT)}: {match.group(0)}"
               for path, text in _texts()
               for match in re.finditer(r"liftcam_utils(\.[A-Za-z_]\w*)+", text)
               if not _resolves(match.group(0))]
    assert missing == []


def test_the_path_check_catches_a_stale_path():
    assert _resolves("liftcam_utils.evaluation.metrics.cosine_similarity")
    assert _resolves("liftcam_utils.app.workbook")
    assert not _resolves("liftcam_utils.metrics.cosine_similarity")  # the flat layout's path
    assert not _resolves("liftcam_utils.evaluation.metrics.no_such_metric")
