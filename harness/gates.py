"""Gates: what fails a test whose own check passed.

The OS under test is broken when, during the test, its kernel reported trouble or one of
its processes crashed, even where the test's payload did not notice:
- the kernel: an oops, a `BUG:` (a NULL dereference, a soft lockup), a general protection
  fault, a task hung for minutes. The kernel prints each on the console with its
  timestamp (`[   12.345678] BUG: ...`); that prefix keeps a service's own message that
  merely says "BUG:" from failing a test.
- a core dump: systemd-coredump logs one message per dump, with the process, its
  executable and the stack trace; the guest sends those with the test's journal. A test
  excludes executables it crashes on purpose with `coredump-exclude-regex` (systemd's key).
A panic ends the machine at once (watch.py); these let it run on and fail the test once
it is done, naming what happened, so that the test's own subtests still report.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from harness.journal import COREDUMP_MESSAGE_ID, read_export
from harness.results import Outcome, Status

KERNEL_TROUBLE = re.compile(
    rb"^\[ *\d+\.\d+\] ((?:\S+: )?(?:BUG: |Oops: |general protection fault|INFO: task \S+ blocked for more than).*)$",
    re.MULTILINE,
)
STACK_LINES = 12  # of a core dump's stack trace, in the reason


def kernel_trouble(console: bytes) -> str | None:
    """The first line in which the kernel reported trouble, if the console shows one."""
    found = KERNEL_TROUBLE.search(console.replace(b"\r", b""))
    return found.group(1).decode(errors="replace").strip() if found else None


def core_dumps(export: bytes, exclude: str = "") -> list[str]:
    """Each core dump in a journal export whose executable `exclude` does not match: the
    process, and the first lines of its stack trace."""
    dumps = []
    for entry in read_export(export):
        if entry.get("MESSAGE_ID") != COREDUMP_MESSAGE_ID:
            continue
        exe = entry.get("COREDUMP_EXE", "")
        if exclude and re.search(exclude, exe):
            continue
        what = (
            f"{entry.get('COREDUMP_COMM', '?')} (pid {entry.get('COREDUMP_PID', '?')}, "
            f"{entry.get('COREDUMP_SIGNAL_NAME', 'signal ' + entry.get('COREDUMP_SIGNAL', '?'))}, {exe})"
        )
        lines = (line.strip() for line in entry.get("MESSAGE", "").splitlines()[1:])
        stack = [line for line in lines if line.startswith(("Stack trace", "#"))]
        dumps.append("\n".join([what, *(f"    {line}" for line in stack[:STACK_LINES])]))
    return dumps


def gate(
    outcome: Outcome, console_log: Path, journal_export: Path | None = None, exclude: str = ""
) -> Outcome:
    """`outcome`, or a FAIL where a passed (or skipped) test's console shows kernel
    trouble, or its journal a core dump not excluded."""
    if outcome.status not in (Status.PASS, Status.SKIP):
        return outcome
    trouble = kernel_trouble(_read(console_log))
    if trouble is not None:
        return attrs.evolve(
            outcome,
            status=Status.FAIL,
            reason=f"the kernel reported trouble during the test: {trouble} (see console.log)",
            cause="kernel",
        )
    dumps = core_dumps(_read(journal_export), exclude) if journal_export else []
    if dumps:
        return attrs.evolve(
            outcome,
            status=Status.FAIL,
            reason=f"a process dumped core during the test: {dumps[0]}"
            + (f"\n(and {len(dumps) - 1} more core dumps: see the journal)" if len(dumps) > 1 else ""),
            cause="coredump",
        )
    return outcome


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
