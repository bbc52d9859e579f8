"""The gates after the verdict (harness/verdict/gates.py): kernel trouble on the console fails a
test that passed, naming the line; nothing else does."""

from __future__ import annotations

import pytest

from harness.verdict.gates import gate, kernel_trouble
from harness.verdict.results import Outcome, Status
from tests.helpers import declaration

PASSED = Outcome(Status.PASS, "TEST-99-UNIT exited with the expected status 123")


@pytest.mark.parametrize(
    "line",
    [
        b"[   12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000000",
        b"[    3.100000] Oops: 0002 [#1] PREEMPT SMP NOPTI",
        b"[  130.000001] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [kworker/0:1:42]",
        b"[    9.5] general protection fault, probably for non-canonical address 0xdead: 0000 [#1]",
        b"[  242.1] INFO: task jbd2/vda1-8:123 blocked for more than 120 seconds.",
    ],
)
def test_the_kernels_trouble_is_found_on_the_console(line):
    console = b"[    1.0] Linux version 6.12\r\nStarting...\n" + line + b"\r\n[  250.0] more\n"
    assert kernel_trouble(console) == line.split(b"] ", 1)[1].decode()


@pytest.mark.parametrize(
    "console",
    [
        b"myapp[312]: BUG: the cache is cold\n",  # a service's own words, not the kernel's
        b"[  OK  ] Started BUG: tracker.\n",
        b"[    1.0] Booting; a BUG: would be on a line of its own\n",
        b"",
    ],
)
def test_other_lines_saying_bug_do_not_count(console):
    assert kernel_trouble(console) is None


def test_a_passed_test_with_kernel_trouble_fails_naming_the_line(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"[   12.3] BUG: unable to handle page fault for address: ffff\n")
    failed = gate(PASSED, log)
    assert failed.status == Status.FAIL and failed.cause == "kernel"
    assert failed.reason == (
        "the kernel reported trouble during the test: BUG: unable to handle page fault for address: ffff "
        "(see console.log)"
    )
    assert gate(Outcome(Status.SKIP, "skipped"), log).status == Status.FAIL


def test_a_failed_test_keeps_its_own_reason_and_a_clean_console_changes_nothing(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"[   12.3] Oops: 0000 [#1]\n")
    failed = Outcome(Status.FAIL, "timed out")
    assert gate(failed, log) is failed
    log.write_bytes(b"[    1.0] all is well\n")
    assert gate(PASSED, log) is PASSED
    assert gate(PASSED, tmp_path / "missing.log") is PASSED


def export_entry(**fields: str) -> bytes:
    return b"".join(f"{k}={v}\n".encode() for k, v in fields.items() if "\n" not in v) + b"".join(
        k.encode() + b"\n" + len(v.encode()).to_bytes(8, "little") + v.encode() + b"\n"
        for k, v in fields.items()
        if "\n" in v
    )


DUMP = export_entry(
    MESSAGE_ID="fc2e22bc6ee647b6b90729ab34a250b1",
    COREDUMP_COMM="myd",
    COREDUMP_PID="312",
    COREDUMP_SIGNAL_NAME="SIGSEGV",
    COREDUMP_EXE="/usr/bin/myd",
    MESSAGE="Process 312 (myd) of user 0 dumped core.\n\nModule libc.so.6 from deb libc6\n"
    "Stack trace of thread 312:\n#0  0x00007f0 crash (myd + 0x10)\n#1  0x00007f1 main (myd + 0x20)\n"
    "ELF object binary architecture: AMD x86-64",
)


def test_a_core_dump_in_the_journal_fails_a_passed_test_with_its_stack_trace(tmp_path):
    export = tmp_path / "journal.export"
    export.write_bytes(export_entry(MESSAGE="unrelated", _PID="1") + b"\n" + DUMP + b"\n")
    failed = gate(PASSED, tmp_path / "console.log", export)
    assert failed.status == Status.FAIL and failed.cause == "coredump"
    assert failed.reason == (
        "a process dumped core during the test: myd (pid 312, SIGSEGV, /usr/bin/myd)\n"
        "    Stack trace of thread 312:\n    #0  0x00007f0 crash (myd + 0x10)\n    #1  0x00007f1 main (myd + 0x20)"
    )
    assert (
        gate(PASSED, tmp_path / "console.log", export, declaration("--coredump-exclude-regex=/myd$"))
        is PASSED
    )
    assert gate(PASSED, tmp_path / "console.log", tmp_path / "no-export") is PASSED


def test_a_coredump_exclude_regex_must_compile():
    from harness.errors import DeclarationError
    from tests.helpers import declaration

    assert declaration("--coredump-exclude-regex=/usr/bin/(sleep|true)$").coredump_exclude_regex
    with pytest.raises(DeclarationError, match="'coredump-exclude-regex': '\\(' is not a regular expression"):
        declaration("--coredump-exclude-regex=(")


def asan_report(pid: str, name: str = "myd") -> bytes:
    lines = [
        f"=={pid}==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010",
        "READ of size 4 at 0x602000000010 thread T0",
        "    #0 0x55d5 in crash /src/myd.c:12",
        "SUMMARY: AddressSanitizer: heap-use-after-free /src/myd.c:12 in crash",
    ]
    return b"".join(export_entry(MESSAGE=line, SYSLOG_IDENTIFIER=name, _PID=pid) + b"\n" for line in lines)


def test_a_sanitizer_report_in_the_journal_fails_a_passed_test_with_its_lines(tmp_path):
    export = tmp_path / "journal.export"
    ubsan = export_entry(
        MESSAGE="src/other.c:7:3: runtime error: signed integer overflow", _COMM="other", _PID="9"
    )
    noise = export_entry(
        MESSAGE="AddressSanitizer is mentioned, nothing is reported", SYSLOG_IDENTIFIER="x", _PID="3"
    )
    export.write_bytes(noise + b"\n" + asan_report("312") + ubsan + b"\n")
    failed = gate(PASSED, tmp_path / "console.log", export)
    assert failed.status == Status.FAIL and failed.cause == "sanitizer"
    assert failed.reason == (
        "a sanitizer reported during the test: myd[312]:\n"
        "    ==312==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010\n"
        "    READ of size 4 at 0x602000000010 thread T0\n"
        "        #0 0x55d5 in crash /src/myd.c:12\n"
        "    SUMMARY: AddressSanitizer: heap-use-after-free /src/myd.c:12 in crash\n"
        "(and 1 more reports: see the journal)"
    )
    only_other = gate(
        PASSED, tmp_path / "console.log", export, declaration("--sanitizer-exclude-regex=^myd$")
    )
    assert only_other.reason == (
        "a sanitizer reported during the test: other[9]:\n    src/other.c:7:3: runtime error: signed integer overflow"
    )
    assert (
        gate(PASSED, tmp_path / "console.log", export, declaration("--sanitizer-exclude-regex=myd|other"))
        is PASSED
    )


def test_a_sanitizer_exclude_regex_must_compile():
    from harness.errors import DeclarationError

    with pytest.raises(DeclarationError) as e:
        declaration("--sanitizer-exclude-regex=(")
    assert "sanitizer-exclude-regex" in str(e.value)
