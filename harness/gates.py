"""Gates: what fails a test whose own check passed.

The OS under test is broken when its kernel reported trouble during the test, even where
the test's payload did not notice: an oops, a `BUG:` (a NULL dereference, a soft lockup),
a general protection fault, a task hung for minutes. The kernel prints each on the
console with its timestamp (`[   12.345678] BUG: ...`); that prefix is what keeps a
service's own message that merely says "BUG:" from failing a test. A panic ends the
machine at once (watch.py); these let it run on, and fail the test once it is done,
naming the line, so that the test's own subtests still report.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from harness.results import Outcome, Status

KERNEL_TROUBLE = re.compile(
    rb"^\[ *\d+\.\d+\] ((?:\S+: )?(?:BUG: |Oops: |general protection fault|INFO: task \S+ blocked for more than).*)$",
    re.MULTILINE,
)


def kernel_trouble(console: bytes) -> str | None:
    """The first line in which the kernel reported trouble, if the console shows one."""
    found = KERNEL_TROUBLE.search(console.replace(b"\r", b""))
    return found.group(1).decode(errors="replace").strip() if found else None


def gate(outcome: Outcome, console_log: Path) -> Outcome:
    """`outcome`, or a FAIL where a passed (or skipped) test's console shows kernel trouble."""
    if outcome.status not in (Status.PASS, Status.SKIP):
        return outcome
    try:
        console = console_log.read_bytes()
    except FileNotFoundError:
        return outcome
    trouble = kernel_trouble(console)
    if trouble is None:
        return outcome
    return attrs.evolve(
        outcome,
        status=Status.FAIL,
        reason=f"the kernel reported trouble during the test: {trouble} (see console.log)",
        cause="kernel",
    )
