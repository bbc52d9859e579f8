"""Subtests: the named cases a payload runs with harness/guest/testcases.sh.

The guest says `Notify.TESTCASE_START=NAME` before a case and
`Notify.TESTCASE=RESULT MS NAME DETAIL` after it. A case that started and never ended
(the VM timed out, panicked or died in it) is a failure that names how the run ended.
"""

from __future__ import annotations

import attrs

from harness.verdict.notify import GuestReport, Notify
from harness.verdict.results import Status

RESULTS = (Status.PASS, Status.FAIL, Status.SKIP)


@attrs.frozen
class Subtest:
    name: str
    status: Status  # pass, fail or skip
    duration_ms: int | None = None
    detail: str = ""


def subtests_from(report: GuestReport, unfinished_reason: str) -> list[Subtest]:
    """The cases in the order they ran; `unfinished_reason` explains a case left running."""
    ended: dict[str, Subtest] = {}
    order: list[str] = []
    for key, value in report.pairs:
        if key == Notify.TESTCASE_START and value and value not in order:
            order.append(value)
        elif key == Notify.TESTCASE:
            parsed = _parse_end(value)
            if parsed is not None:
                if parsed.name not in order:
                    order.append(parsed.name)
                ended[parsed.name] = parsed
    return [
        ended.get(name) or Subtest(name, Status.FAIL, None, f"did not finish: {unfinished_reason}")
        for name in order
    ]


def _parse_end(value: str) -> Subtest | None:
    words = value.split(" ", 3)
    if len(words) < 3 or words[0] not in RESULTS or not words[1].isdigit() or not words[2]:
        return None
    return Subtest(words[2], Status(words[0]), int(words[1]), words[3].strip() if len(words) > 3 else "")
