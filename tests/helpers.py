"""Building declarations the way meson's arguments do, for tests."""

import argparse

from harness.__main__ import add_declaration_options
from harness.declaration import TestDeclaration


def options(*args: str, name: str = "TEST-99-UNIT", test_dir: str = "/nonexistent/TEST-99-UNIT"):
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_declaration_options(p)
    return p.parse_args([f"--name={name}", f"--test-dir={test_dir}", *args])


def declaration(*args: str, env=None, **kw) -> TestDeclaration:
    return TestDeclaration.from_options(options(*args, **kw), env)
