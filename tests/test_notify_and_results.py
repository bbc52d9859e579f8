import pytest

from harness.boot.machine import Ending, EndingKind
from harness.verdict.notify import GuestReport, console_notify_lines, derive_exit_status, parse_notify
from harness.verdict.results import classify


def test_parse_notify_keeps_order_and_skips_junk():
    assert parse_notify(b"READY=1\nnot a pair\n\0EXIT_STATUS=123\r\nlower=x\n") == [
        ("READY", "1"),
        ("EXIT_STATUS", "123"),
    ]


@pytest.mark.parametrize(
    "result, code, status, expected",
    [
        ("success", "exited", "0", 123),
        ("exit-code", "exited", "77", 77),
        ("exit-code", "exited", "1", 1),
        ("signal", "killed", "TERM", 1),
    ],
)
def test_exit_status_as_pid1_reports_it(result, code, status, expected):
    assert derive_exit_status(result, code, status, 123) == expected


def report(data: bytes) -> GuestReport:
    r = GuestReport()
    r.add(data)
    return r


def test_pid1_exit_status_wins_over_derived():
    r = report(
        b"READY=1\nX_HARNESS_SERVICE_RESULT=exit-code\nX_HARNESS_EXIT_CODE=exited\nX_HARNESS_EXIT_STATUS=3\n"
    )
    assert r.exit_status(123) == 3
    r.add(b"EXIT_STATUS=123\n")
    assert r.exit_status(123) == 123


PASSED = b"READY=1\nX_HARNESS_SERVICE_RESULT=success\nX_HARNESS_EXIT_CODE=exited\nX_HARNESS_EXIT_STATUS=0\n"


@pytest.mark.parametrize(
    "ending, data, status, exit_code, words",
    [
        (Ending(EndingKind.EXITED, 0), PASSED, "pass", 0, "expected status 123"),
        (Ending(EndingKind.EXITED, 0), b"READY=1\nEXIT_STATUS=77\n", "skip", 77, "skipped"),
        (Ending(EndingKind.EXITED, 0), b"READY=1\nEXIT_STATUS=1\n", "fail", 1, "exit status 1"),
        (Ending(EndingKind.EXITED, 0), b"EXIT_STATUS=0\n", "fail", 1, "never reported"),
        (Ending(EndingKind.EXITED, 0), b"", "fail", 1, "without reporting an exit status"),
        (Ending(EndingKind.EXITED, 0), b"X_HARNESS_EMERGENCY=1\n", "fail", 1, "emergency"),
        (
            Ending(EndingKind.TIMEOUT),
            b"READY=1\n",
            "fail",
            1,
            "timed out after 60 s while the test was running",
        ),
        (Ending(EndingKind.TIMEOUT), b"", "fail", 1, "before the test unit started"),
        (
            Ending(EndingKind.PANIC, detail="Kernel panic - not syncing: sysrq"),
            b"READY=1\n",
            "fail",
            1,
            "kernel panic",
        ),
        (Ending(EndingKind.EXITED, 1), b"", "error", 99, "exited with status 1"),
        (Ending(EndingKind.EXITED, -9), b"READY=1\n", "error", 99, "killed by signal 9"),
        # A late crash after the guest reported is still the guest's verdict.
        (Ending(EndingKind.EXITED, 1), PASSED, "pass", 0, "expected"),
    ],
)
def test_classify(ending, data, status, exit_code, words):
    o = classify("TEST-99-X", 123, 60, ending, report(data))
    assert (o.status, o.exit_code) == (status, exit_code)
    assert words in o.reason


def test_console_lines_cut_by_kernel_messages_are_put_back_together():
    """As a LAVA qemu device's console showed it: the kernel printed in the middle of the
    unit's lines, whose rest followed on the next line that was not the kernel's."""
    console = (
        b"[   22.245340] scsi host3: ahci\r\n"
        b"HARNESS_NOTIFY X_HARNESS_SERVICE_RESULT=success[   22.307169] scsi host4: ahci\r\n"
        b"\r\n"
        b"HARNESS_NOTIFY X_HARNESS_EXIT_CODE=exited\r\n"
        b"HARNESS_NOTIFY X_HARNESS_TIMELINE=[   22.689699] ata6: SATA link down\r\n"
        b"[   22.692279] ata3: SATA link up 1.5 Gbps\r\n"
        b"H4sIAAAA\r\n"
        b"HARNESS_NOTIFY X_HARNESS_DONE=1\r\n"
    )
    assert console_notify_lines(console, b"HARNESS_NOTIFY ") == (
        b"X_HARNESS_SERVICE_RESULT=success\nX_HARNESS_EXIT_CODE=exited\n"
        b"X_HARNESS_TIMELINE=H4sIAAAA\nX_HARNESS_DONE=1"
    )
