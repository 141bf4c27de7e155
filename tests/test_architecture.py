"""The shape of the house, checked: data flows one way through the stages, with no import cycle.

Every ``import`` in the library is read from the source (function-level imports included: a cycle
hidden inside a function is still a cycle) and checked against :data:`ALLOWED`, the stages each
stage may use. To add a stage, add it here and to the README's folder table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("pipeline", "training", "storage_schemas", "flows", "lesionflow")

# stage → the stages it may import (itself always allowed). Lower stages never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "storage_schemas": set(),
    "pipeline": set(),  # pipeline/__init__.py: the version only
    "pipeline.core": set(),
    "pipeline.io": {"pipeline", "pipeline.core", "storage_schemas"},  # ReasonCode: the shared vocabulary of outcomes
    "pipeline.store": {"pipeline", "pipeline.core", "storage_schemas"},
    "pipeline.ingest": {"pipeline", "pipeline.core", "pipeline.io", "pipeline.store", "storage_schemas"},
    "pipeline.prepare": {"pipeline", "pipeline.core", "pipeline.store", "storage_schemas"},
    "pipeline.lesions": {"pipeline", "pipeline.core", "pipeline.io", "pipeline.store", "storage_schemas"},
    "pipeline.quality": {"pipeline", "pipeline.core", "pipeline.io", "pipeline.store", "pipeline.lesions", "pipeline.prepare", "storage_schemas"},
    "pipeline.phantom": {"pipeline", "pipeline.core", "pipeline.io", "storage_schemas"},
    "pipeline.longitudinal": {"pipeline", "pipeline.core", "pipeline.io", "pipeline.ingest", "pipeline.store", "pipeline.lesions", "storage_schemas"},
    "pipeline.export": {"pipeline", "pipeline.core", "pipeline.io", "pipeline.store", "pipeline.lesions", "storage_schemas"},
    "training": {"pipeline", "pipeline.core", "pipeline.store", "pipeline.prepare", "pipeline.lesions", "storage_schemas"},
    "flows": {"pipeline", *(f"pipeline.{s}" for s in ("core", "io", "ingest", "store", "prepare", "lesions", "quality", "phantom", "export", "longitudinal")),
              "training", "storage_schemas"},
    "lesionflow": {"pipeline", *(f"pipeline.{s}" for s in ("core", "io", "ingest", "store", "prepare", "lesions", "quality", "phantom", "export", "longitudinal")),
                   "training", "storage_schemas", "flows"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stage_of(module: str) -> str:
    """``pipeline.ingest.session`` → ``pipeline.ingest``; ``training.loop`` → ``training``."""
    parts = module.split(".")
    if parts[0] == "pipeline" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from pipeline import store`` → ``pipeline.store``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import pipeline.store.cases` → deepest known module
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] in PACKAGES:
                out.add(name)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = library_modules()
    return {m: imports_of(p, m, set(mods)) for m, p in mods.items()}


def test_every_module_belongs_to_a_known_stage(graph):
    unknown = sorted({stage_of(m) for m in graph} - set(ALLOWED))
    assert not unknown, f"stages missing from ALLOWED (and the README's folder table): {unknown}"


def test_no_stage_imports_a_higher_one(graph):
    bad = []
    for mod, deps in graph.items():
        stage = stage_of(mod)
        for dep in deps:
            if stage_of(dep) != stage and stage_of(dep) not in ALLOWED[stage]:
                bad.append(f"{mod} imports {dep}")
    assert not bad, "imports against the flow of data:\n" + "\n".join(sorted(bad))


def test_no_import_cycle(graph):
    """Tarjan's strongly connected components over modules (package ``__init__`` re-exports of
    their own submodules are the package's face, not a cycle, and are left out)."""
    edges = {m: {d for d in deps if not (m == d.rpartition(".")[0] and (REPO / m.replace(".", "/") / "__init__.py").exists())}
             for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_function_level_imports(tmp_path):
    """The walker must not be fooled by an import tucked inside a function."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pipeline.ingest import cluster\n    import training.loop\n")
    known = {"pipeline", "pipeline.ingest", "pipeline.ingest.cluster", "training", "training.loop"}
    assert imports_of(src, "pipeline.ingest.session", known) == {"pipeline.ingest.cluster", "training.loop"}
