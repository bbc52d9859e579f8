"""TAP 14 for meson (`protocol: 'tap'`): one point per case of a TestRecord.

meson turns each point into a JUnit testcase. Infrastructure errors end in
`Bail out!`, which meson reports as ERROR (a JUnit <error/>), never as a failed test.
"""

from __future__ import annotations

from harness.record import TestRecord
from harness.results import Status


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
