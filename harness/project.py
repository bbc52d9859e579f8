"""A repository whose tests the harness runs: the meson glue `os-harness init` writes into
it, the glue's version the wrapper checks, and the tests its build directory declares.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.errors import HarnessError


def meson_test_args(build_dir: Path, name: str) -> list[str]:
    """The arguments meson gives `python3 -m harness run` for the test `name`."""
    try:
        tests = json.loads((build_dir / "meson-info" / "intro-tests.json").read_text())
    except (OSError, ValueError) as e:
        raise HarnessError(
            f"cannot read the tests of {build_dir} ({e})",
            "meson setup BUILD -Dintegration-tests=true, and pass that directory with -C",
        ) from None
    for t in tests:
        if t["name"] == name and "run" in t["cmd"]:
            cmd: list[str] = t["cmd"]
            return cmd[cmd.index("run") + 1 :]
    names = ", ".join(sorted(t["name"] for t in tests if "run" in t["cmd"])) or "none"
    raise HarnessError(f"{build_dir} has no test {name}", f"use one of: {names}")
