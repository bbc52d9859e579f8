"""What the guest tells the host, in the systemd notify protocol (KEY=VALUE lines).

Two channels carry it. With vsock, PID 1 reports READY=1 and EXIT_STATUS= itself
(credential `vmm.notify_socket=vsock-stream:2:PORT`, one connection per message). The
virtio-serial port works everywhere: the test unit writes READY=1 when it starts and the
unit's result when it ends, from which `GuestReport.exit_status` derives what PID 1's
SuccessAction=/FailureAction=exit would report.

Every key of the protocol is a `Notify` member here: the guest's units are rendered from
them and every reader looks them up by them; only the guest's shell scripts
(guest/agent.sh, guest/testcases.sh) spell the harness's keys out.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable
from pathlib import Path

import attrs


class Notify(enum.StrEnum):
    """The keys of the notify lines: systemd's own, and the harness's (X_HARNESS_*)."""

    READY = "READY"  # the test unit started (PID 1 says it too, over vsock)
    EXIT_STATUS = "EXIT_STATUS"  # PID 1's exit status, over vsock
    SERVICE_RESULT = "X_HARNESS_SERVICE_RESULT"  # the test unit ended: systemd's $SERVICE_RESULT
    EXIT_CODE = "X_HARNESS_EXIT_CODE"  # ... its $EXIT_CODE (exited, killed, dumped)
    UNIT_EXIT_STATUS = "X_HARNESS_EXIT_STATUS"  # ... its $EXIT_STATUS
    EMERGENCY = "X_HARNESS_EMERGENCY"  # the boot fell into emergency or rescue mode: which
    TEST_UNIT_STATE = "X_HARNESS_TEST_UNIT_STATE"  # ... and the test unit's LoadState then
    TIMELINE = "X_HARNESS_TIMELINE"  # the boot's timeline, gzipped and base64-encoded
    TEST = "X_HARNESS_TEST"  # "pass|fail|skip 0 NAME": the guest's view of its verdict, for labs
    TESTCASE_START = "X_HARNESS_TESTCASE_START"  # NAME: a subtest begins
    TESTCASE = "X_HARNESS_TESTCASE"  # "RESULT MS NAME DETAIL": a subtest ended
    DONE = "X_HARNESS_DONE"  # the guest's last line: nothing more will come
    AGENT_READY = "X_HARNESS_AGENT_READY"  # the fast path's agent waits for a test


def parse_notify(data: bytes) -> list[tuple[str, str]]:
    """The KEY=VALUE assignments in a notify message or stream, in order; junk skipped."""
    pairs = []
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "replace").strip("\r\0 ")
        key, sep, value = line.partition("=")
        if sep and key and key.replace("_", "").isalnum() and key.upper() == key:
            pairs.append((key, value))
    return pairs


# A kernel message's start, as printk writes it to the console: "[   22.307169] ".
KERNEL_MESSAGE = re.compile(rb"\[\s*\d+\.\d+\] ")


def console_notify_lines(console: bytes, prefix: bytes) -> bytes:
    """The KEY=VALUE lines a board's units wrote to its serial console after `prefix`.

    The kernel writes its messages to the same console, a line at a time, and may do so in
    the middle of one of ours: `KEY=VAL[   22.3] scsi host4: ahci`, the rest of our line
    following on the next line that is not the kernel's. Such lines are put back together:
    `KEY=VALUE` must not read `VAL[   22.3] ...`."""
    lines = [line.rstrip(b"\r") for line in console.split(b"\n")]
    out = []
    for i, line in enumerate(lines):
        at = line.find(prefix)
        if at < 0:
            continue
        ours = line[at + len(prefix) :]
        kernel = KERNEL_MESSAGE.search(ours)
        if kernel:
            ours = ours[: kernel.start()] + _rest_of_line(lines[i + 1 : i + 50], prefix)
        out.append(ours)
    return b"\n".join(out)


def _rest_of_line(following: list[bytes], prefix: bytes) -> bytes:
    """The rest of a line of ours the kernel cut: the first following line that is
    neither the kernel's nor another of ours."""
    for line in following:
        if prefix in line:
            return b""
        if not KERNEL_MESSAGE.match(line):
            return line
    return b""


def derive_exit_status(service_result: str, exit_code: str, exit_status: str, success_status: int) -> int:
    """The status PID 1 exits with after the test unit ends, as systemd computes it:
    SuccessActionExitStatus= on success, else the main process's own exit status."""
    if service_result == "success":
        return success_status
    if exit_code == "exited" and exit_status.isdigit():
        return int(exit_status)
    return 1  # killed by a signal, dumped core, timed out in the guest


@attrs.define
class GuestReport:
    """Everything the guest said, from either channel."""

    pairs: list[tuple[str, str]] = attrs.Factory(list)

    def add(self, data: bytes) -> None:
        self.pairs.extend(parse_notify(data))

    def last(self, key: str) -> str | None:
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return None

    @property
    def test_started(self) -> bool:
        return self.last(Notify.READY) == "1"

    @property
    def entered_emergency(self) -> bool:
        return self.last(Notify.EMERGENCY) not in (None, "0")

    @property
    def maintenance_mode(self) -> str:
        """What the boot fell into, as the guest said ("1": an older harness's emergency)."""
        mode = self.last(Notify.EMERGENCY)
        return "rescue mode" if mode == "rescue" else "emergency mode"

    @property
    def test_ended(self) -> bool:
        """The test unit has ended (or the boot never will reach it)."""
        return self.last(Notify.SERVICE_RESULT) is not None or self.entered_emergency

    @property
    def last_word_came(self) -> bool:
        """The guest's last word came: the test's DONE, or the agent waiting for a test."""
        return self.last(Notify.DONE) == "1" or self.last(Notify.AGENT_READY) == "1"

    def exit_status(self, success_status: int) -> int | None:
        status = self.last(Notify.EXIT_STATUS)  # PID 1's own word wins where it arrived
        if status is not None and status.isdigit():
            return int(status)
        result = self.last(Notify.SERVICE_RESULT)
        if result is None:
            return None
        return derive_exit_status(
            result,
            self.last(Notify.EXIT_CODE) or "",
            self.last(Notify.UNIT_EXIT_STATUS) or "",
            success_status,
        )

    def masked(self, hide: Callable[[str], str]) -> GuestReport:
        """The report with every value passed through `hide` (the timeline is no text)."""
        return GuestReport([(k, v if k == Notify.TIMELINE else hide(v)) for k, v in self.pairs])


def read_port_file(path: Path, report: GuestReport) -> None:
    with contextlib.suppress(FileNotFoundError):
        report.add(path.read_bytes())
