"""Every import of a project module resolves: the module imports, and each name taken from it
exists (an attribute or a submodule).

Most of the project's imports of its own modules sit inside functions (commands, flows and tasks
import lazily so that ``--help`` and worker start-up stay fast), so a name moved from one module
to another breaks nothing at import time and no test that skips the function notices: the
real-data recipe imported ``run_ingest`` from a module that no longer had it and failed only when
run. Here every ``.py`` file of the project is read with :mod:`ast` (function-level imports
included) and each absolute import of a project module is resolved for real, once per module.
Imports in ``benchmarks/`` of a sibling script (``from bench_ingest import ...``) are checked
without running the script: the name must be defined at its top level.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("pipeline", "training", "flows", "storage_schemas", "lesionflow", "tests")
"""Top-level names whose imports are resolved (``tests``: the shared factories and fixtures)."""
SOURCE_DIRS = ("lesionflow", "pipeline", "training", "flows", "storage_schemas", "benchmarks", "tests")
SKIP_PARTS = {".venv", "work", "__pycache__", "mutants", "test-artifacts"}


def project_files(root: Path = REPO) -> list[Path]:
    """The ``.py`` files of :data:`SOURCE_DIRS` (no virtual environment, work folder or hidden folder)."""
    out = []
    for d in SOURCE_DIRS:
        for p in sorted((root / d).rglob("*.py")):
            parts = p.relative_to(root).parts
            if not any(part in SKIP_PARTS or part.startswith(".") for part in parts):
                out.append(p)
    return out


def imports_in(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` for every absolute import in ``path``, at any depth: ``import a.b``
    gives ``(n, "a.b", None)``, ``from a.b import c, d`` gives ``(n, "a.b", "c")`` and ``(n, "a.b", "d")``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


@functools.cache
def import_error(module: str) -> str | None:
    """Why ``module`` does not import (``None`` when it does); each module is imported once."""
    try:
        importlib.import_module(module)
    except (Exception, SystemExit) as exc:  # a module that exits on import is as broken as one that raises
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.cache
def top_level_names(path: Path) -> frozenset[str]:
    """Names bound at the top level of a script (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def unresolved(module: str, name: str | None) -> str | None:
    """Why ``import module`` / ``from module import name`` fails (``None`` when it resolves)."""
    if (why := import_error(module)) is not None:
        return f"{module} does not import ({why})"
    if name is None or name == "*":
        return None
    if hasattr(sys.modules[module], name):
        return None
    if import_error(f"{module}.{name}") is None:  # a submodule the package does not import itself
        return None
    return f"{module} has no {name!r} (neither an attribute nor a submodule)"


def unresolved_imports(files: list[Path], root: Path = REPO) -> list[str]:
    """``file:line: statement: why`` for every import of a project module (or of a sibling script)
    in ``files`` that does not resolve."""
    failures = []
    for path in files:
        siblings = {p.stem: p for p in path.parent.glob("*.py")} if "benchmarks" in path.relative_to(root).parts else {}
        for line, module, name in imports_in(path):
            top = module.split(".")[0]
            stmt = f"import {module}" if name is None else f"from {module} import {name}"
            if top in PACKAGES:
                why = unresolved(module, name)
            elif top in siblings and top != path.stem and "." not in module:  # a benchmark script importing another
                why = None if name in (None, "*") or name in top_level_names(siblings[top]) else f"{siblings[top].name} defines no {name!r}"
            else:
                continue
            if why:
                failures.append(f"{path.relative_to(root)}:{line}: {stmt}: {why}")
    return failures


def test_every_project_import_resolves():
    files = project_files()
    assert len(files) > 100 and REPO / "flows" / "train_ms.py" in files  # the walk sees the project
    failures = unresolved_imports(files)
    assert not failures, f"{len(failures)} import(s) of project modules that do not resolve:\n" + "\n".join(failures)


def test_the_checker_sees_broken_function_level_imports(tmp_path):
    """A name imported from the wrong module, inside a function, and a missing module are both
    reported with their line; good imports (an attribute, a submodule, a whole module) are not."""
    (tmp_path / "benchmarks").mkdir()
    src = tmp_path / "benchmarks" / "m.py"
    src.write_text(
        "import os\n"
        "from pipeline.ingest import run_ingest\n"
        "from pipeline import store\n"
        "import pipeline.core.lineage\n"
        "\n"
        "def f():\n"
        "    from pipeline.ingest.session import run_ingest\n"
        "    import pipeline.no_such_module\n"
        "    from other import helper, missing\n"
    )
    (tmp_path / "benchmarks" / "other.py").write_text("import json\n\ndef helper():\n    pass\n")
    got = unresolved_imports([src], root=tmp_path)
    assert [g.split(": ", 1)[0] for g in got] == ["benchmarks/m.py:7", "benchmarks/m.py:8", "benchmarks/m.py:9"], got
    assert "pipeline.ingest.session has no 'run_ingest'" in got[0]
    assert "pipeline.no_such_module does not import (ModuleNotFoundError" in got[1]
    assert "other.py defines no 'missing'" in got[2]

