"""Dependencies point one way: backends and reports build on the core, the core never
imports a backend or a report, and backends and reports do not know each other. Only
the command line (harness/__main__.py) puts them together."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def imported_modules(path: Path) -> set[str]:
    """Every harness module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "harness" or m.startswith("harness.")}


def layer(path: Path) -> str:
    parts = path.relative_to(HARNESS).parts
    if parts == ("__main__.py",):
        return "command line"
    return {"backends": "backends", "report": "report"}.get(parts[0], "core")


def modules(of_layer: str) -> list[Path]:
    return [p for p in sorted(HARNESS.rglob("*.py")) if layer(p) == of_layer]


FORBIDDEN = {
    "core": ("harness.backends", "harness.report"),
    "report": ("harness.backends",),
    "backends": ("harness.report",),
}


@pytest.mark.parametrize("of_layer", sorted(FORBIDDEN))
def test_imports_point_to_the_core(of_layer):
    wrong = {
        f"{p.relative_to(HARNESS)} imports {m}"
        for p in modules(of_layer)
        for m in imported_modules(p)
        if m.startswith(FORBIDDEN[of_layer])
    }
    assert not wrong


def test_every_layer_has_modules():
    assert all(modules(of_layer) for of_layer in ("core", "backends", "report", "command line"))


def test_every_module_says_why_it_exists():
    missing = [
        str(p.relative_to(HARNESS))
        for p in HARNESS.rglob("*.py")
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert not missing


def test_backends_do_not_call_up_into_the_flow():
    """A backend gets what it needs from the plan; the wrapper and the command line are
    above it."""
    wrong = {
        f"{p.relative_to(HARNESS)} imports {m}"
        for p in modules("backends")
        for m in imported_modules(p)
        if m in ("harness.wrapper", "harness.__main__")
    }
    assert not wrong


def test_the_notify_keys_are_spelled_out_in_one_module():
    """The harness's notify keys live in notify.Notify; only the guest's shell scripts
    (which cannot import it) spell them out."""
    spelled = [
        str(p.relative_to(HARNESS))
        for p in HARNESS.rglob("*")
        if p.is_file()
        and p.suffix != ".sh"
        and p != HARNESS / "verdict" / "notify.py"
        and "__pycache__" not in p.parts
        and "X_HARNESS_" in p.read_text(errors="replace")
    ]
    assert not spelled


def test_no_module_is_too_long_to_read_whole():
    long = [
        f"{p.relative_to(HARNESS)}: {n} lines"
        for p in HARNESS.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    ]
    assert not long


def module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the harness modules it imports (type-only imports included); `from
    harness.x import y` counts as importing harness.x.y when y is a module."""
    names = {module_name(p): p for p in HARNESS.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in names else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("harness"))
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def test_no_import_cycles():
    """Each module can be read knowing only what it imports: no two modules import each
    other, however indirectly, and not for type hints either."""
    graph = import_graph()
    done: set[str] = set()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not cycles


def mapped_modules(text: str) -> set[str]:
    """The module paths docs/architecture.md's map names: its tree (an indented code block
    under "Where things live", two spaces a level) read back into paths."""
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    stack: list[str] = []
    paths = set()
    for line in section.splitlines():
        match = re.match(r"^    ( *)(\S+)", line)
        if not match or not match.group(2).endswith(("/", ".py")):
            continue
        depth = len(match.group(1)) // 2
        stack[depth:] = [match.group(2)]
        if match.group(2).endswith(".py"):
            paths.add("".join(stack))
    return paths


def test_every_module_is_on_the_map():
    """docs/architecture.md holds the one module map: every module is on it, and every
    module it names exists."""
    mapped = mapped_modules((HARNESS.parent / "docs" / "architecture.md").read_text())
    actual = {str(p.relative_to(HARNESS.parent)) for p in HARNESS.rglob("*.py") if p.name != "__init__.py"}
    assert not sorted(actual - mapped), "add them to docs/architecture.md's module map"
    assert not sorted(mapped - actual), "docs/architecture.md's map names modules that do not exist"
