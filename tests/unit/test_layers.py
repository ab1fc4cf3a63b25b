"""Imports flow one way: from the operator process down to the API models. Each module of synpo_operator has a
layer; a module may import its own layer or those below (never one above), and there are no cycles. The
stage programs (synpo_workloads) import only the API layer of synpo_operator (models, stage-result contract)."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "operator" / "synpo_operator"
LAYERS = [  # bottom to top
    ("clock", "ratelimit", "gitops"),
    ("api",),
    ("plan",),
    ("kube", "workqueue", "events", "metrics"),
    ("executors", "modelinfo"),
    ("reconcile", "schedule", "capacity", "render"),
    ("localrun", "controller"),
    ("cli", "__init__"),
]


def _layer(module: str) -> int:
    head = module.split(".")[1] if "." in module else "__init__"
    for rank, names in enumerate(LAYERS):
        if head in names:
            return rank
    raise AssertionError(f"{module}: in no layer (add it to LAYERS)")


def _module(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts
    return ".".join((package, *parts)) if parts != ("__init__",) else package


def _imports(path: Path, module: str, package: str) -> set[str]:
    """Modules of `package` imported anywhere in the file (function-level imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(package):
                if target != package:  # `from .. import clock`: the module is the name, below
                    found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names
                          if (ROOT / "operator" / Path(*f"{target}.{a.name}".split("."))).with_suffix(".py").exists()}
    return found


def _graph(root: Path, package: str) -> dict[str, set[str]]:
    return {(m := _module(p, root, package)): _imports(p, m, package) for p in sorted(root.rglob("*.py"))}


def test_no_module_imports_a_layer_above_it():
    wrong = [f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})"
             for m, deps in _graph(PACKAGE, "synpo_operator").items() for i in deps if _layer(i) > _layer(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = _graph(PACKAGE, "synpo_operator")
    modules = set(graph)

    def resolve(name: str) -> str | None:  # `from .x import y` names x or x.y: keep what is a module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {r for d in deps if (r := resolve(d)) and r != m and not m.startswith(r + ".") and r != "synpo_operator"}
             for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if not state.get(nxt):
                visit(nxt, [*path, node])
        state[node] = 2

    for m in sorted(edges):
        if not state.get(m):
            visit(m, [])


def test_workloads_import_only_the_api_of_the_operator():
    root = ROOT / "workloads" / "synpo_workloads"
    used = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("synpo_operator"):
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names if a.name.startswith("synpo_operator")}
    assert used and all(m == "synpo_operator.api" or m.startswith("synpo_operator.api.") for m in used), used
