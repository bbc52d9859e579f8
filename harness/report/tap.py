"""TAP 14 for meson (`protocol: 'tap'`): one point per case of a TestRecord.

meson turns each point into a JUnit testcase. Infrastructure errors end in
`Bail out!`, which meson reports as ERROR (a JUnit <error/>), never as a failed test.
"""

from __future__ import annotations

import logging
import sys

from harness.verdict.record import TestRecord
from harness.verdict.results import Status


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tap_lines(record: TestRecord) -> list[str]:
    cases = record.cases()
    if len(cases) == 1 and cases[0].name == record.name and record.status == Status.SKIP:
        return ["TAP version 14", f"1..0 # SKIP {record.reason}"]
    lines = ["TAP version 14"]
    number = 0
    for case in cases:
        if case.status == Status.ERROR:
            lines.append(f"Bail out! {record.name}: {case.detail}")
            return lines
        number += 1
        point = f"{'not ok' if case.status == Status.FAIL else 'ok'} {number} - {case.name}"
        if case.status == Status.SKIP:
            point += f" # SKIP {case.detail}".rstrip()
        lines.append(point)
        if case.status == Status.FAIL:
            lines += ["  ---", f"  message: {_yaml_string(case.detail)}"]
            if case.duration_ms is not None:
                lines.append(f"  duration_ms: {case.duration_ms}")
            lines.append("  ...")
    lines.append(f"1..{number}")
    return lines


def tap_comment(text: str) -> str:
    """Human-readable lines inside a TAP stream."""
    return "\n".join(f"# {line}" if line else "#" for line in text.splitlines())


class _TapComments(logging.Formatter):
    """While TAP is written, the wrapper's own lines are TAP comments: meson shows them
    and parses only the points."""

    def format(self, record: logging.LogRecord) -> str:
        return tap_comment(super().format(record))


def setup_logging(tap: bool) -> None:
    """The wrapper's messages go to stdout, where meson's log and a person at the
    console see them; as TAP comments when stdout carries TAP."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_TapComments("%(message)s") if tap else logging.Formatter("%(message)s"))
    root = logging.getLogger("harness")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
