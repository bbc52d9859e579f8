"""A host test's file checked before its machine boots: a typo costs a second, not a boot.

As the NixOS test driver type-checks a test script before any VM starts, the wrapper reads
a host test's pytest file first and stops the test as an ERROR, naming the file and the
line, when the file does not compile, uses a name defined nowhere (pyflakes), asks for a
fixture that neither pytest, its plugins, the file nor its conftest.py provide (pytest
collects the file, as the run will, with a stand-in `machine`), or reads a verb the
machine or its console does not have (`machine.wait_for_uint`: did you mean ...?).

The collection imports the file, so it runs in a child process of its own (`python3 -m
harness.host.precheck FILE`): what the file does when imported (a thread, a socket, a
conftest's hooks) is gone before the run imports it again. The verbs are checked only
where `machine` is the fixture: a parameter of that name, never assigned in its
function, with no conftest.py of the test's redefining it.
"""

from __future__ import annotations

import ast
import difflib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from harness.host.controls import Console, Controls
from harness.host.driven_machine import DrivenMachine
from harness.host.pytest_run import _pytest
from harness.process import die_with_parent

MACHINE = "machine"  # the fixture's name: its attributes are the verbs checked
MOST_SHOWN = 5  # problems named in the verdict; the rest counted
COLLECT_TIMEOUT = 60  # s: a file whose import never ends is not checked for fixtures
ALWAYS_THERE = {"request"}  # pytest's own, never in a function's fixture definitions


def problems(file: Path) -> list[str]:
    """What is wrong with `file`, each as "NAME:LINE: what" (empty: nothing found)."""
    try:
        tree = ast.parse(file.read_bytes(), str(file))  # bytes: the file's coding line counts
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte, in older Pythons
        return [f"{file.name}:{getattr(e, 'lineno', None) or 1}: {getattr(e, 'msg', str(e))}"]
    found = undefined_names(file, tree) + unknown_verbs(file, tree)
    return sorted(found, key=line_of) + unknown_fixtures(file)


def summary(file: Path, found: list[str]) -> str:
    more = f" (and {len(found) - MOST_SHOWN} more)" if len(found) > MOST_SHOWN else ""
    return (
        f"the host test {file.name} was checked before booting and has {len(found)} problem(s){more}: "
        + "; ".join(found[:MOST_SHOWN])
    )


def line_of(problem: str) -> int:
    return int(problem.split(":")[1])


def undefined_names(file: Path, tree: ast.Module) -> list[str]:
    """Names used and defined nowhere (pyflakes), where pyflakes is installed; not those
    of string annotations (`machine: "DrivenMachine"`), which Python never looks up."""
    try:
        from pyflakes import checker, messages  # type: ignore[import-untyped]
    except ImportError:
        return []
    undefined = (messages.UndefinedName, messages.UndefinedLocal)
    hinted = names_in_string_annotations(tree)
    found = checker.Checker(tree, filename=str(file)).messages
    return [
        f"{file.name}:{m.lineno}: {m.message % m.message_args}"
        for m in found
        if isinstance(m, undefined) and m.message_args[0] not in hinted
    ]


def names_in_string_annotations(tree: ast.Module) -> set[str]:
    annotations: list[ast.expr | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    names = set()
    for annotation in annotations:
        for part in ast.walk(annotation) if annotation is not None else ():
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                try:
                    names |= {
                        n.id for n in ast.walk(ast.parse(part.value, mode="eval")) if isinstance(n, ast.Name)
                    }
                except SyntaxError:
                    continue
    return names


def unknown_verbs(file: Path, tree: ast.Module) -> list[str]:
    """`machine.X` and `machine.console.X` read where the machine or its console has no X,
    inside the functions that take the fixture."""
    if redefines_machine(file.parent / "conftest.py"):
        return []
    machine = attributes(DrivenMachine(cast(Controls, None)))
    console = attributes(Console(cast(Controls, None), 1))
    machine |= {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
    }
    found = []
    for function in fixture_users(tree):
        for node in fixture_scope(function):
            if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
                continue
            if node.attr.startswith("_"):
                continue
            owner, known = verb_owner(node, machine, console)
            if owner and node.attr not in known:
                close = difflib.get_close_matches(node.attr, sorted(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                found.append(f"{file.name}:{node.lineno}: {owner} has no {node.attr}{hint}")
    return sorted(set(found), key=line_of)


def verb_owner(node: ast.Attribute, machine: set[str], console: set[str]) -> tuple[str, set[str]]:
    if is_machine(node.value):
        return MACHINE, machine
    inner = node.value
    if isinstance(inner, ast.Attribute) and inner.attr == "console" and is_machine(inner.value):
        return f"{MACHINE}.console", console
    return "", set()


def is_machine(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == MACHINE


def fixture_users(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions that take `machine` as a parameter and never assign the name."""
    users = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if MACHINE not in parameters(node):
            continue
        assigned = any(
            isinstance(n, ast.Name) and n.id == MACHINE and not isinstance(n.ctx, ast.Load)
            for n in ast.walk(node)
        )
        if not assigned:
            users.append(node)
    return users


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    return {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}


def fixture_scope(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.AST]:
    """The nodes of `function` where `machine` is still the fixture: not inside a nested
    function or lambda that takes a `machine` of its own."""
    nodes: list[ast.AST] = []
    todo: list[ast.AST] = list(ast.iter_child_nodes(function))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and MACHINE in parameters(
            node
        ):
            continue
        nodes.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def redefines_machine(conftest: Path) -> bool:
    try:
        tree = ast.parse(conftest.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == MACHINE for n in ast.walk(tree)
    )


def attributes(instance: object) -> set[str]:
    return {name for name in dir(instance) if not name.startswith("_")}


class _Collector:
    """The plugin of the collecting run: a stand-in `machine`, and every test function's
    fixtures that nothing provides."""

    def __init__(self) -> None:
        self.unknown: list[str] = []
        self.errors: list[str] = []

    @pytest.fixture(scope="session")
    def machine(self) -> None:
        """Collected, never called: the real one is handed out when the test runs."""

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.errors.append(str(report.longreprtext).strip().splitlines()[-1])

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        for item in items:
            info = getattr(item, "_fixtureinfo", None)
            if info is None:  # not a function, or a pytest without it: nothing to say
                continue
            params = getattr(getattr(item, "callspec", None), "params", {})
            for name in info.argnames:
                if name not in info.name2fixturedefs and name not in params and name not in ALWAYS_THERE:
                    path, line, _ = item.location
                    self.unknown.append(
                        f"{Path(path).name}:{line + 1}: {item.name} asks for an unknown fixture {name}"
                    )


def unknown_fixtures(file: Path) -> list[str]:
    """Collect `file` as the run will, in a child process: what fails to import, or asks
    for what nothing gives. Nothing, where the collection does not end in time."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "harness.host.precheck", str(file)],
            capture_output=True,
            text=True,
            timeout=COLLECT_TIMEOUT,
            preexec_fn=die_with_parent,
            # The harness the child imports is this one, wherever it was found.
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)),
        )
    except subprocess.TimeoutExpired:
        return []
    # Ctrl-C reaches the wrapper too (one process group), and SIGTERM the wrapper alone:
    # either stops it here, and the child with it. A child that failed says nothing.
    return [line for line in done.stdout.splitlines() if line] if done.returncode == 0 else []


def collect(file: Path) -> int:
    """The child's side: the problems pytest's collection finds, one a line on stdout."""
    collector = _Collector()
    _pytest(file, collector, io.StringIO(), "--collect-only", "-q")
    found = [f"{file.name}: {e}" for e in collector.errors] + sorted(dict.fromkeys(collector.unknown))
    print("\n".join(found))
    return 0


if __name__ == "__main__":
    sys.exit(collect(Path(sys.argv[1])))
