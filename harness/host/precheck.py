"""A host test's file checked before its machine boots: a typo costs a second, not a boot.

As the NixOS test driver type-checks a test script before any VM starts, the wrapper reads
a host test's pytest file first and stops the test as an ERROR, naming the file and the
line, when the file does not compile, uses a name defined nowhere (pyflakes), asks for a
fixture that neither pytest, its plugins, the file nor its conftest.py provide (pytest
collects the file, as the run will, with a stand-in `machine`), or calls a verb the
machine or its console does not have (`machine.wait_for_uint`: did you mean ...?).
"""

from __future__ import annotations

import ast
import difflib
import io
from pathlib import Path
from typing import Any, cast

import pytest

from harness.host.controls import Console, Controls
from harness.host.driven_machine import DrivenMachine
from harness.host.pytest_run import _pytest

MACHINE = "machine"  # the fixture's name: its attributes are the verbs checked
MOST_SHOWN = 5  # problems named in the verdict; the rest counted


def problems(file: Path) -> list[str]:
    """What is wrong with `file`, each as "NAME:LINE: what" (empty: nothing found)."""
    source = file.read_text(errors="replace")
    try:
        tree = ast.parse(source, str(file))
    except SyntaxError as e:
        return [f"{file.name}:{e.lineno}: {e.msg}"]
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
    """Names used and defined nowhere (pyflakes), where pyflakes is installed."""
    try:
        from pyflakes import checker, messages  # type: ignore[import-untyped]
    except ImportError:
        return []
    undefined = (messages.UndefinedName, messages.UndefinedLocal)
    found = checker.Checker(tree, filename=str(file)).messages
    return [
        f"{file.name}:{m.lineno}: {m.message % m.message_args}" for m in found if isinstance(m, undefined)
    ]


def unknown_verbs(file: Path, tree: ast.Module) -> list[str]:
    """`machine.X` and `machine.console.X` where the machine or its console has no X."""
    machine = attributes(DrivenMachine(cast(Controls, None)))
    console = attributes(Console(cast(Controls, None), 1))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner, known = None, set()
        if isinstance(node.value, ast.Name) and node.value.id == MACHINE:
            owner, known = MACHINE, machine
        elif (
            isinstance(node.value, ast.Attribute)
            and node.value.attr == "console"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == MACHINE
        ):
            owner, known = f"{MACHINE}.console", console
        if owner and node.attr not in known:
            close = difflib.get_close_matches(node.attr, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            found.append(f"{file.name}:{node.lineno}: {owner} has no {node.attr}{hint}")
    return found


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
                if name not in info.name2fixturedefs and name not in params:
                    path, line, _ = item.location
                    self.unknown.append(
                        f"{Path(path).name}:{line + 1}: {item.name} asks for an unknown fixture {name}"
                    )


def unknown_fixtures(file: Path) -> list[str]:
    """Collect `file` as the run will: what fails to import, or asks for what nothing gives."""
    collector = _Collector()
    _pytest(file, collector, io.StringIO(), "--collect-only", "-q")
    return [f"{file.name}: {e}" for e in collector.errors] + sorted(dict.fromkeys(collector.unknown))
