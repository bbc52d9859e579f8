"""From how a run ended and what the guest said, to one verdict and meson's exit code."""

from __future__ import annotations

import enum

import attrs

from harness.boot.machine import Ending, EndingKind
from harness.declaration.declaration import SKIP_EXIT
from harness.verdict.notify import GuestReport, Notify


class Status(enum.StrEnum):
    """A verdict, of a test or of one of its subtests."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"  # the harness could not run the test (infrastructure)

    def is_failure(self) -> bool:
        return self in (Status.FAIL, Status.ERROR)


# meson's meaning of a test's exit status.
EXIT_PASS, EXIT_FAIL, EXIT_SKIP, EXIT_ERROR = 0, 1, 77, 99
EXIT_CODES = {
    Status.PASS: EXIT_PASS,
    Status.FAIL: EXIT_FAIL,
    Status.SKIP: EXIT_SKIP,
    Status.ERROR: EXIT_ERROR,
}


@attrs.frozen
class Outcome:
    status: Status
    reason: str
    # "exit-status" when the test's own status says it failed (its subtests explain
    # why); anything else (timeout, panic, boot) is a failure outside the subtests.
    cause: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def classify(
    name: str,
    expected: int,
    timeout: float | None,
    ending: Ending,
    report: GuestReport,
    machine_detail: str = "",
) -> Outcome:
    started = "while the test was running" if report.test_started else "before the test unit started"
    if ending.kind == EndingKind.TIMEOUT:
        return Outcome(Status.FAIL, f"timed out after {timeout:.0f} s {started}")
    if ending.kind == EndingKind.PANIC:
        return Outcome(Status.FAIL, f"kernel panic {started}: {ending.detail}")
    if ending.kind == EndingKind.MAINTENANCE:
        return Outcome(Status.FAIL, f"boot failed: the guest fell into {ending.detail} {started}")
    if ending.kind == EndingKind.CONSOLE_FLOOD:
        return Outcome(Status.FAIL, f"{ending.detail} {started}")
    if ending.kind == EndingKind.INFRASTRUCTURE:
        return Outcome(Status.ERROR, f"{ending.detail} ({started})")
    status = report.exit_status(expected)
    if status is None:
        if ending.machine_status not in (0, None):
            how = (
                f"was killed by signal {-ending.machine_status}"
                if ending.machine_status < 0
                else f"exited with status {ending.machine_status}"
            )
            return Outcome(
                Status.ERROR, f"the VM {how} {started}" + (f": {machine_detail}" if machine_detail else "")
            )
        if report.entered_emergency:
            state = report.last(Notify.TEST_UNIT_STATE)
            why = f": its test unit was {state}" if state and state != "loaded" else ""
            return Outcome(Status.FAIL, f"boot failed: the guest fell into {report.maintenance_mode}{why}")
        return Outcome(Status.FAIL, f"the VM powered off without reporting an exit status ({started})")
    if status == expected:
        return Outcome(Status.PASS, f"{name} exited with the expected status {expected}")
    if status == SKIP_EXIT:
        return Outcome(Status.SKIP, f"{name} skipped itself (exit status 77)")
    if status == 0:
        return Outcome(Status.FAIL, "the guest shut down with status 0: the test never reported success")
    return Outcome(
        Status.FAIL, f"{name} failed with exit status {status} (expected {expected})", cause="exit-status"
    )
