"""The packages split into modules (cacnet.datasets, cacnet.cohort): no import cycle, no module imports another
module's private name, and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys

import pytest

import cacnet

PACKAGES = ("cacnet.datasets", "cacnet.cohort")
MODULES = ["cacnet"] + sorted(m.name for m in pkgutil.walk_packages(cacnet.__path__, "cacnet."))
CHECKED = [m for m in MODULES if m in PACKAGES or m.startswith(tuple(p + "." for p in PACKAGES))]


def _imports(module: str, module_level: bool) -> list[tuple[str, str]]:
    """(imported module, name) of each ``from X import name`` (``import X``: (X, "")), X resolved to a full name."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    parts = module.split(".") if spec.submodule_search_locations is not None else module.split(".")[:-1]
    out = []
    for node in (tree.body if module_level else ast.walk(tree)):
        if isinstance(node, ast.ImportFrom):
            base = parts[: len(parts) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out += [(target, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return out


def test_the_split_packages_are_checked():
    assert {"cacnet.datasets.coca", "cacnet.datasets.layout", "cacnet.cohort._run"} <= set(CHECKED)


def test_no_module_imports_another_modules_private_name():
    found = []
    for module in MODULES:
        for target, name in _imports(module, module_level=False):
            private = name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in MODULES
            if private and (module in CHECKED or target in CHECKED):
                found.append(f"{module}: from {target} import {name}")
    assert not found


def test_no_import_cycle_through_the_split_packages():
    graph = {}
    for module in MODULES:  # what runs at import time: module-level imports, and the submodules they name
        deps = set()
        for target, name in _imports(module, module_level=True):
            deps |= {target, f"{target}.{name}"}
        graph[module] = sorted(d for d in deps if d in MODULES and d != module)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return False

    cycles = [(m, d) for m in CHECKED for d in graph[m] if reaches(d, m)]
    assert not cycles


@pytest.mark.parametrize("module", CHECKED)
def test_each_module_imports_on_its_own(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _module_graph() -> dict[str, list[str]]:
    graph = {}
    for module in MODULES:
        deps = set()
        for target, name in _imports(module, module_level=True):
            deps |= {target, f"{target}.{name}"}
        graph[module] = sorted(d for d in deps if d in MODULES and d != module)
    return graph


def test_no_module_anywhere_imports_another_modules_private_name():
    """The whole package (issue 26's rule), not only the split packages: shared helpers have public names."""
    found = [f"{module}: from {target} import {name}" for module in MODULES
             for target, name in _imports(module, module_level=False)
             if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in MODULES
             and target.startswith("cacnet") and target != module]
    assert not found


def test_no_import_cycle_anywhere():
    graph = _module_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    assert not cycles
