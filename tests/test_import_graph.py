"""The import graph of `nas/` goes one way: a module imports only its own layer and the layers below it.

Every module under nas/ is parsed with `ast` (imports at module level and inside functions alike: a lazy
import is still a dependency) and mapped to its layer; an import of a higher layer is a back-edge, and so
is any cycle between packages. No module under nas/ imports `experiments` (the stage scripts sit on top).

Layers, lowest first (ARCHITECTURE.md's flow; a package imports the ones before it):

  0 ground:     nas/config and the utilities (atomic, jsonfile, finite, progress, distributed)
  1 data:       nas/data
  2 objectives: nas/objectives (losses as nn.Modules)
  3 models:     nas/models (encoders, ALBEF, NAS, MUG, UTA and their registry)
  4 engine:     nas/engine (trainer, handlers, checkpoints, launch)
  5 evaluation: nas/evaluation
  6 reporting:  nas/reporting
  7 recipes:    nas/recipes (the run layer above `fit`, the stages' library code)
  8 entry:      nas/cli.py, nas/inference.py, nas/testing, nas/__init__.py

`KNOWN_BACK_EDGES` lists tolerated back-edges with their reasons; issue 14's refactor emptied it (38 edges
before). An edge that goes away must leave the list too (the test says so), so the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GROUND = ("config", "atomic", "jsonfile", "finite", "progress", "distributed", "resources")
LAYERS: dict[str, int] = {
    **{name: 0 for name in GROUND},
    "data": 1,
    "objectives": 2,
    "models": 3,
    "engine": 4,
    "evaluation": 5,
    "reporting": 6,
    "recipes": 7,
    "cli": 8,
    "inference": 8,
    "testing": 8,
    "__init__": 8,  # `nas/__init__.py` re-exports the public API (lazily)
}
LAYER_NAMES = [
    "ground",
    "data",
    "objectives",
    "models",
    "engine",
    "evaluation",
    "reporting",
    "recipes",
    "entry",
]

# Back-edges (importer module -> imported module) tolerated, each with the reason it is left: none. A piece a
# lower layer needs from above is registered from above (nas/recipes/__init__.py, nas/recipes/sections.py).
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = ROOT) -> str:
    """`nas.config.base` for `<root>/nas/config/base.py`."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit of a `nas` module: its sub-package or top-level module (`nas.config.base` -> config)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int:
    name = unit(module)
    if name not in LAYERS:
        raise AssertionError(f"{module}: nas/{name} has no layer in tests/test_import_graph.py LAYERS")
    return LAYERS[name]


# A module named in a string and imported when used: "nas.x.y:Name" (a params section's type, a check)
# or `importlib.import_module("nas.x.y")`. Still a dependency, so it counts like an import.
TARGET = re.compile(r"^(nas|experiments)(\.\w+)+(:\w+)?$")


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement of a file, relative ones resolved; `from a
    import b` of a submodule `a.b` counts as importing `a.b`; so do the string targets (`TARGET`)."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == (
            "import_module"
        ):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and TARGET.match(arg.value):
                yield arg.value, node.lineno
        elif isinstance(node, ast.Constant) and _is_target(node.value) and ":" in node.value:
            yield node.value.partition(":")[0], node.lineno
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            submodules = [n for n in names if _is_module(root, n)]
            yield from ((n, node.lineno) for n in submodules)
            if len(submodules) < len(names):
                yield target, node.lineno


def _is_target(value: object) -> bool:
    return isinstance(value, str) and TARGET.match(value) is not None


def _is_module(root: Path, name: str) -> bool:
    path = root / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph(root: Path = ROOT) -> dict[str, list[tuple[str, int]]]:
    """importer module -> [(imported nas/experiments module, line)] for the `nas` package under `root`."""
    out: dict[str, list[tuple[str, int]]] = {}
    for path in sorted((root / "nas").rglob("*.py")):
        edges = [(t, line) for t, line in imports(path, root) if t.split(".")[0] in ("nas", "experiments")]
        out[module_name(path, root)] = edges
    return out


def back_edges(edges: dict[str, list[tuple[str, int]]]) -> dict[tuple[str, str], int]:
    """(importer, imported) -> line for every import of `experiments` or of a higher layer."""
    found: dict[tuple[str, str], int] = {}
    for importer, targets in edges.items():
        for target, line in targets:
            if target.split(".")[0] == "experiments" or (target != "nas" and layer(target) > layer(importer)):
                found.setdefault((importer, target), line)
    return found


def package_cycles(
    edges: dict[str, list[tuple[str, int]]], allowed: set[tuple[str, str]] = frozenset()
) -> list[list[str]]:
    """The strongly connected groups (more than one unit) of the graph between layer units (sub-packages
    and top-level modules), leaving out the module edges in `allowed`: each group is a set of packages
    that import one another in a cycle."""
    adjacency: dict[str, set[str]] = {}
    for importer, targets in edges.items():
        for target, _ in targets:
            if (
                target.startswith("nas.")
                and unit(target) != unit(importer)
                and (importer, target) not in allowed
            ):
                adjacency.setdefault(unit(importer), set()).add(unit(target))
    nodes = sorted(set(adjacency) | {t for ts in adjacency.values() for t in ts})

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in adjacency.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {node: reach(node) for node in nodes}
    groups = {frozenset({n} | {m for m in reachable[n] if n in reachable[m]}) for n in nodes}
    return [sorted(g) for g in sorted(groups, key=sorted) if len(g) > 1]


def describe(found: dict[tuple[str, str], int], edges: dict[str, list[tuple[str, int]]]) -> str:
    lines = []
    for (importer, target), line in sorted(found.items()):
        to = "experiments" if target.startswith("experiments") else LAYER_NAMES[layer(target)]
        lines.append(f"  {importer}:{line} -> {target}   ({LAYER_NAMES[layer(importer)]} -> {to})")
    return "\n".join(lines)


def test_every_nas_module_has_a_layer():
    for module in graph():
        layer(module)


def test_no_module_imports_a_higher_layer_or_experiments():
    edges = graph()
    found = back_edges(edges)
    new = {edge: line for edge, line in found.items() if edge not in KNOWN_BACK_EDGES}
    gone = sorted(set(KNOWN_BACK_EDGES) - set(found))
    message = f"{len(found)} back-edges now:\n{describe(found, edges)}"
    assert not new, f"imports of a higher layer (or of experiments):\n{describe(new, edges)}\n\n{message}"
    assert not gone, f"remove from KNOWN_BACK_EDGES, these edges are gone: {gone}\n\n{message}"


def test_no_import_cycle_between_packages():
    """With the known back-edges left out, no packages import one another in a cycle."""
    cycles = package_cycles(graph(), set(KNOWN_BACK_EDGES))
    assert not cycles, "packages in an import cycle:\n" + "\n".join("  " + ", ".join(c) for c in cycles)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "nas"
    (pkg / "config").mkdir(parents=True)
    (pkg / "models").mkdir()
    (pkg / "config" / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "m.py").write_text("X = 1\n")
    (pkg / "config" / "c.py").write_text("def f():\n    from nas.models.m import X\n    from . import base\n")
    (pkg / "config" / "base.py").write_text(
        "import experiments.common\nimport importlib\nSECTION = 'nas.models.m:X'\n"
        "def g():\n    return importlib.import_module('nas.models')\n"
    )
    edges = graph(tmp_path)
    assert set(back_edges(edges)) == {
        ("nas.config.c", "nas.models.m"),
        ("nas.config.base", "experiments.common"),
        ("nas.config.base", "nas.models.m"),
        ("nas.config.base", "nas.models"),
    }
    assert package_cycles(edges) == []
    assert ("nas.config.base", 3) in edges["nas.config.c"]
