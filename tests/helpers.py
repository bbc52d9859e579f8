"""Building declarations the way meson's arguments do, for tests."""

import argparse
from collections.abc import Mapping

from harness.declaration import file as declaration_file
from harness.declaration.declaration import TestDeclaration


def options(
    *args: str, name: str = "TEST-99-UNIT", test_dir: str = "/nonexistent/TEST-99-UNIT"
) -> argparse.Namespace:
    return declaration_file.parse([f"--name={name}", f"--test-dir={test_dir}", *args])


def declaration(*args: str, env: Mapping[str, str] | None = None, **kw: str) -> TestDeclaration:
    return TestDeclaration.from_options(options(*args, **kw), env)
