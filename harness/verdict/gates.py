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
- a sanitizer's report (ASan, UBSan, LSan, MSan) in the journal: code built with them
  prints one to its stderr, which the journal keeps, and goes on or exits, not always
  with a failure. `sanitizer-exclude-regex` (systemd's key) excludes processes by name.
  A passed test's journal holds its own unit's lines only, unless HARNESS_SANITIZERS=1
  has the guest send all of it (plan.py): then every process's reports count.
A panic ends the machine at once (watch.py); these let it run on and fail the test once
it is done, naming what happened, so that the test's own subtests still report. They
read each log as it will be kept (secrets.py), so that what they quote of it holds no
credential value, even while a host-driven test's machine still writes the console.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from harness.declaration.declaration import TestDeclaration
from harness.verdict.journal import COREDUMP_MESSAGE_ID, read_export
from harness.verdict.results import Outcome, Status
from harness.verdict.secrets import NO_SECRETS, Secrets

KERNEL_TROUBLE = re.compile(
    rb"^\[ *\d+\.\d+\] ((?:\S+: )?(?:BUG: |Oops: |general protection fault|INFO: task \S+ blocked for more than).*)$",
    re.MULTILINE,
)
STACK_LINES = 12  # of a core dump's stack trace, in the reason
# The first line of a sanitizer's report, as systemd's wrapper finds them: ASan, LSan and
# MSan open with "==PID==ERROR: AddressSanitizer: ..." (or "... has encountered a fatal
# error"), UBSan with "FILE:LINE:COLUMN: runtime error: ...". The report ends with a
# "SUMMARY: ...Sanitizer" line.
SANITIZER_REPORT = re.compile(r"==\d+==.*?\w+Sanitizer|\d+: runtime error: ")
SANITIZER_SUMMARY = re.compile(r"SUMMARY: \w+Sanitizer")
REPORT_LINES = 12  # of a sanitizer's report, in the reason


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


def sanitizer_reports(export: bytes, exclude: str = "") -> list[str]:
    """Each sanitizer report in a journal export from a process whose name (the journal's
    SYSLOG_IDENTIFIER, else _COMM) `exclude` does not match: the process, and the
    report's first lines (the lines of one process that follow its first, to its SUMMARY)."""
    reports: dict[str, list[str]] = {}  # by process and PID, in the order they began
    open_ones: set[str] = set()
    for entry in read_export(export):
        name = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM", "?")
        process = f"{name}[{entry.get('_PID', '?')}]"
        message = entry.get("MESSAGE", "").rstrip()
        if process not in open_ones:
            if not SANITIZER_REPORT.search(message) or (exclude and re.search(exclude, name)):
                continue
            open_ones.add(process)
            reports[process] = []
        lines = reports[process]
        if len(lines) < REPORT_LINES:
            lines.append(message)
        if SANITIZER_SUMMARY.search(message):
            open_ones.discard(process)
    return [
        "\n".join([f"{process}:", *(f"    {line}" for line in lines)]) for process, lines in reports.items()
    ]


def gate(
    outcome: Outcome,
    console_log: Path,
    journal_export: Path | None = None,
    decl: TestDeclaration | None = None,
    secrets: Secrets = NO_SECRETS,
) -> Outcome:
    """`outcome`, or a FAIL where a passed (or skipped) test's console shows kernel
    trouble, or its journal a core dump or a sanitizer's report not excluded."""
    if outcome.status not in (Status.PASS, Status.SKIP):
        return outcome
    coredump_exclude = decl.coredump_exclude_regex if decl else ""
    sanitizer_exclude = decl.sanitizer_exclude_regex if decl else ""
    trouble = kernel_trouble(_read(console_log, secrets))
    if trouble is not None:
        return attrs.evolve(
            outcome,
            status=Status.FAIL,
            reason=f"the kernel reported trouble during the test: {trouble} (see console.log)",
            cause="kernel",
        )
    journal = _read(journal_export, secrets) if journal_export else b""
    dumps = core_dumps(journal, coredump_exclude)
    if dumps:
        return attrs.evolve(
            outcome,
            status=Status.FAIL,
            reason=f"a process dumped core during the test: {dumps[0]}"
            + (f"\n(and {len(dumps) - 1} more core dumps: see the journal)" if len(dumps) > 1 else ""),
            cause="coredump",
        )
    reports = sanitizer_reports(journal, sanitizer_exclude)
    if reports:
        return attrs.evolve(
            outcome,
            status=Status.FAIL,
            reason=f"a sanitizer reported during the test: {reports[0]}"
            + (f"\n(and {len(reports) - 1} more reports: see the journal)" if len(reports) > 1 else ""),
            cause="sanitizer",
        )
    return outcome


def _read(path: Path, secrets: Secrets) -> bytes:
    try:
        return secrets.log(path, path.read_bytes())
    except FileNotFoundError:
        return b""
