"""What the benchmarks in tools/ share (bench, bench-boot, bench-cpu, bench-suite,
bench-vcpus): where the checkout and its image are, the environment a harness run gets,
the host CPU their runs took, and the versions they print. A script imports it as
`benchlib`: python puts the script's directory, tools/, on sys.path.

The checkout goes on sys.path too, so that a benchmark measures the harness beside it,
not whichever one pip installed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:  # imported when used: the scripts that only run `python -m harness` need none of it
    from harness.declaration.declaration import TestDeclaration
    from harness.verdict.record import TestRecord

IMAGE = ROOT / "build" / "mkosi.output" / "image.raw"  # what `meson compile -C build mkosi` builds


def harness_env(**overrides: str) -> dict[str, str]:
    """This environment, for a harness run (`python -m harness`) from the checkout."""
    return dict(os.environ, PYTHONPATH=str(ROOT), **overrides)


def children_cpu() -> float:
    """User + system seconds of every finished process this one waited for, and theirs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_records(build: Path) -> list[TestRecord]:
    """The records (result.json) of BUILD's tests, each as its last run left it; one that
    cannot be read is left out."""
    from harness.verdict.record import RESULT_FILE, TestRecord

    records = []
    for path in sorted((build / "integration-tests").glob(f"*/{RESULT_FILE}")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            records.append(TestRecord.from_json(path.read_text()))
    return records


def version(cmd: list[str]) -> str:
    """The first line `cmd` (e.g. `qemu-system-x86_64 --version`) prints, or "not found"."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "not found"


def declaration(test: str, test_dir: Path, *options: str) -> TestDeclaration:
    """The declaration of `test` as meson would write it, with `options` (`--KEY=VALUE`)."""
    from harness.declaration import file as declaration_file
    from harness.declaration.declaration import TestDeclaration

    parsed = declaration_file.parse([f"--name={test}", f"--test-dir={test_dir}", *options])
    return TestDeclaration.from_options(parsed)
