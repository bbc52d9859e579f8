"""Building declarations the way meson's arguments do, for tests."""

from harness.declaration import file as declaration_file
from harness.declaration.declaration import TestDeclaration


def options(*args: str, name: str = "TEST-99-UNIT", test_dir: str = "/nonexistent/TEST-99-UNIT"):
    return declaration_file.parse([f"--name={name}", f"--test-dir={test_dir}", *args])


def declaration(*args: str, env=None, **kw) -> TestDeclaration:
    return TestDeclaration.from_options(options(*args, **kw), env)
