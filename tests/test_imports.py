"""The project's import graph (every ``import`` statement, function-level ones included, read with
``ast``): no import cycles, and each layer imports only the layers below it."""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bench", "clip", "dassl", "datasets", "federated", "scripts", "tools", "trainers", "utils")
SCRIPTS = ("federated_main.py",)


def project_modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the project's packages and scripts."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = os.path.join(folder, name)
    for script in SCRIPTS:
        out[script[:-3]] = os.path.join(REPO, script)
    return out


def imports_of(module: str, path: str, modules: dict[str, str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``); the implicit import of parent packages is not counted."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_detector_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_imports_the_script():
    assert [m for m, targets in import_graph().items() if "federated_main" in targets] == []


def _allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") or (p.endswith("*") and target.startswith(p[:-1]))
               for p in prefixes)


#: What each layer may import of the project (itself always). ``federated.aggregation*``: the rules.
LAYERS = {
    "dassl": ("dassl",),
    "clip": ("clip",),
    "datasets": ("datasets", "dassl", "federated.errors"),
    "trainers": ("trainers", "dassl", "clip", "federated.errors", "federated.aggregation*"),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layering(layer):
    bad = [f"{module} imports {target}" for module, targets in sorted(import_graph().items())
           if module == layer or module.startswith(layer + ".")
           for target in sorted(targets) if not _allowed(target, LAYERS[layer])]
    assert not bad, "\n".join(bad)


def test_the_aggregation_rules_and_errors_import_no_trainer():
    graph = import_graph()
    for module in ("federated.errors", "federated.aggregation", "federated.aggregation_saa",
                   "federated.aggregation_personalized"):
        assert all(_allowed(t, ("dassl", "federated.errors", "federated.aggregation*")) for t in graph[module]), \
            (module, graph[module])
    assert graph["federated.errors"] == set()
