"""The package layout shows the pipeline, and its imports point one way, down it.

Every module of src/critkit is parsed (no import is executed) and each `import` / `from ... import`
inside it, at module level or inside a function, becomes an edge between two critkit modules. Two
rules hold:

- no cycle between modules (a cycle would make the order of stages meaningless);
- a stage imports only from stages before it: shared foundations (config, prompts, grading), then
  data, engine, synth, training, evaluation, diagnostics, report, and the orchestration on top
  (run, ablate, cli), which nothing below imports.

Both checks are run on small made-up graphs first, so a checker that could never fail is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "critkit"

# The order of the stages: a module may import from its own stage and from stages of lower rank.
RANKS = {
    "config": 0, "prompts": 0, "grading": 0,
    "data": 1,
    "engine": 2,
    "synth": 3,
    "training": 4,
    "evaluation": 5,
    "diagnostics": 6,
    "report": 7,
    "run": 8, "ablate": 9, "cli": 10, "__init__": 11, "__main__": 11,
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    """The critkit-relative module a relative import names (level 1 = the current package)."""
    base = current.split(".") if current not in ("", "__init__") else []
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *(target.split(".") if target else [])])


def import_edges(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the critkit modules it imports (as dotted names relative to critkit)."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    known = set(files)
    edges: dict[str, set[str]] = {name: set() for name in files}

    def closest(name: str) -> str | None:
        # `from .a import b` may name module a.b or an attribute b of module a.
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = _resolve(name, is_package, node.level, node.module)
                targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names] or [base]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("critkit"):
                base = node.module.removeprefix("critkit").lstrip(".")
                targets = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("critkit").lstrip(".") for a in node.names if a.name.startswith("critkit")]
            for target in targets:
                found = closest(target)
                if found and found != name:
                    edges[name].add(found)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def stage(module: str) -> str:
    return module.split(".")[0] or "__init__"


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a stage into a later stage (or a stage the table does not rank)."""
    bad = []
    for source, targets in edges.items():
        for target in targets:
            a, b = stage(source), stage(target)
            if a == b:
                continue
            if a not in RANKS or b not in RANKS:
                bad.append(f"{source} -> {target}: stage {a if a not in RANKS else b!r} has no place in RANKS")
            elif RANKS[b] >= RANKS[a]:
                bad.append(f"{source} ({a}) imports {target} ({b}), a later stage")
    return sorted(bad)


# ------------------------------------------------------------------------- the checkers can fail


def test_the_checkers_find_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert upward_imports({"data.records": {"synth.stages"}, "synth.stages": {"data.records"}}) == [
        "data.records (data) imports synth.stages (synth), a later stage"]
    assert upward_imports({"newstage.x": {"data.records"}})  # an unranked stage is reported too


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "critkit"
    (pkg / "synth").mkdir(parents=True)
    (pkg / "data").mkdir()
    for init in (pkg / "__init__.py", pkg / "synth" / "__init__.py", pkg / "data" / "__init__.py"):
        init.write_text("")
    (pkg / "data" / "records.py").write_text("def f():\n    from ..synth.stages import g\n")
    (pkg / "synth" / "stages.py").write_text("from ..data import records\nfrom . import jobs\n")
    (pkg / "synth" / "jobs.py").write_text("import critkit.data.records\n")
    edges = import_edges(pkg)
    assert edges["data.records"] == {"synth.stages"}
    assert edges["synth.stages"] == {"data.records", "synth.jobs"}
    assert edges["synth.jobs"] == {"data.records"}
    assert find_cycle(edges) == ["data.records", "synth.stages", "data.records"]


# ---------------------------------------------------------------------------- the real package


@pytest.fixture(scope="module")
def edges():
    found = import_edges()
    assert len(found) > 30 and "synth.jobs" in found and "engine.generation" in found  # the parse saw the package
    return found


def test_no_import_cycles(edges):
    assert find_cycle(edges) is None


def test_imports_point_down_the_pipeline(edges):
    assert upward_imports(edges) == []


def test_every_stage_says_what_lives_there():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 60, f"{init.relative_to(PACKAGE.parent)} needs a docstring that says what it holds"
