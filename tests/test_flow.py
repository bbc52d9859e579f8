"""The flow of one test (declare -> plan -> boot -> collect -> classify -> record), for
every way a run can end, through the fake backend: what the QEMU and autokit backends
are tested for end to end in minutes, here in milliseconds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from harness.backends.fake import FakeBackend, Script, guest_said, passing
from harness.boot.machine import Ending, EndingKind
from harness.boot.plan import BootPath
from harness.errors import HarnessError
from harness.image.parts import ImageParts
from harness.report.tap import tap_lines
from harness.report.text import describe
from harness.settings import Settings
from harness.verdict.record import TestRecord
from harness.verdict.results import EXIT_ERROR, Status
from harness.wrapper import RunContext, run_test
from tests.helpers import declaration
from tests.images import write_image

ENV = {"HARNESS_ACCEL": "tcg"}  # no probing of the host's /dev/kvm


@pytest.fixture
def fake_image(tmp_path):
    return write_image(tmp_path / "image")


def run(
    tmp_path: Path,
    image: Path,
    script: Script | list[Script] | None = None,
    *args: str,
    backend: FakeBackend | None = None,
    env: Mapping[str, str] = ENV,
    interactive: bool = False,
) -> tuple[TestRecord, FakeBackend]:
    backend = backend or FakeBackend(script or passing())
    ctx = RunContext(tmp_path / "logs", tmp_path / "build", "run-1", snapshot_dir=tmp_path / "snapshots")
    record = run_test(
        declaration(*args),
        ImageParts(image),
        ctx,
        backend,
        Settings.from_environment(env),
        interactive=interactive,
        timeout_factor=1,
    )
    assert backend.running == 0, "a machine was left running"
    return record, backend


def test_pass(tmp_path, fake_image):
    record, backend = run(tmp_path, fake_image)
    assert (record.status, record.reason) == (Status.PASS, "TEST-99-UNIT exited with the expected status 123")
    assert record.exit_code == 0 and record.rerun == ()
    assert backend.machines[0].powered_off == [], "a machine that stopped by itself is not powered off again"
    assert tap_lines(record) == ["TAP version 14", "ok 1 - TEST-99-UNIT", "1..1"]


def test_fail_with_the_tests_own_status_offers_a_rerun(tmp_path, fake_image):
    record, _ = run(tmp_path, fake_image, Script(guest_said("READY=1", "EXIT_STATUS=3")))
    assert record.status == Status.FAIL and record.exit_code == 1
    assert record.reason == "TEST-99-UNIT failed with exit status 3 (expected 123)"
    assert record.rerun[0] == f"meson test -C {tmp_path / 'build'} --interactive TEST-99-UNIT"
    assert "  rerun:" in describe(record)


def test_the_rerun_of_a_test_with_failed_testcases_runs_only_those(tmp_path, fake_image):
    said = guest_said(
        "READY=1",
        "X_HARNESS_TESTCASE=pass 5 testcase_1_ok",
        "X_HARNESS_TESTCASE=fail 7 testcase_2_broken exited with status 1",
        "EXIT_STATUS=1",
    )
    record, _ = run(tmp_path, fake_image, Script(said))
    assert record.rerun[0] == (
        f"HARNESS_MATCH_TESTCASE='^(testcase_2_broken)$' meson test -C {tmp_path / 'build'} --interactive TEST-99-UNIT"
    )


def test_status_derived_from_the_unit_result_on_the_serial_channel(tmp_path, fake_image):
    said = guest_said(
        "READY=1",
        "X_HARNESS_SERVICE_RESULT=exit-code",
        "X_HARNESS_EXIT_CODE=exited",
        "X_HARNESS_EXIT_STATUS=4",
    )
    record, _ = run(tmp_path, fake_image, Script(said))
    assert record.reason == "TEST-99-UNIT failed with exit status 4 (expected 123)"


def test_the_guest_skips_itself_with_77(tmp_path, fake_image):
    record, _ = run(tmp_path, fake_image, Script(guest_said("READY=1", "EXIT_STATUS=77")))
    assert (record.status, record.exit_code) == (Status.SKIP, 77)
    assert tap_lines(record) == ["TAP version 14", "1..0 # SKIP TEST-99-UNIT skipped itself (exit status 77)"]


@pytest.mark.parametrize(
    "args, env, why",
    [
        (["--enabled=false"], {}, "disabled in"),
        (["--slow=true"], {}, "HARNESS_SLOW_TESTS=1"),
        ([], {"HARNESS_SKIP": "TEST-99"}, "HARNESS_SKIP"),
        ([], {"HARNESS_INTEGRATION_TESTS": "0"}, "turned off"),
        (["--requires=hdmi"], {}, "lacks required features: hdmi"),
    ],
)
def test_skips_before_booting(tmp_path, fake_image, args, env, why):
    record, backend = run(tmp_path, fake_image, None, *args, env={**ENV, **env})
    assert record.status == Status.SKIP and why in record.reason
    assert backend.plans == [], "a skipped test booted"


def test_timeout_powers_off_in_order_and_cuts_off_the_running_subtest(tmp_path, fake_image):
    said = guest_said(
        "READY=1",
        "X_HARNESS_TESTCASE_START=testcase_one",
        "X_HARNESS_TESTCASE=pass 5 testcase_one",
        "X_HARNESS_TESTCASE_START=testcase_two",
    )
    record, backend = run(tmp_path, fake_image, Script(said, Ending(EndingKind.TIMEOUT)), "--timeout=7")
    assert record.status == Status.FAIL and record.reason == "timed out after 7 s while the test was running"
    assert backend.machines[0].powered_off == [True]
    assert [(s.name, s.status) for s in record.subtests] == [
        ("testcase_one", "pass"),
        ("testcase_two", "fail"),
    ]
    assert record.subtests[1].detail == "did not finish: timed out after 7 s while the test was running"
    assert tap_lines(record)[1:3] == [
        "ok 1 - TEST-99-UNIT/testcase_one",
        "not ok 2 - TEST-99-UNIT/testcase_two",
    ]


def test_panic_is_forced_off_and_named(tmp_path, fake_image):
    panic = "Kernel panic - not syncing: Attempted to kill init!"
    record, backend = run(tmp_path, fake_image, Script(b"", Ending(EndingKind.PANIC, detail=panic)))
    assert record.status == Status.FAIL
    assert record.reason == f"kernel panic before the test unit started: {panic}"
    assert backend.machines[0].powered_off == [False]


def test_emergency_mode_is_a_failed_boot(tmp_path, fake_image):
    record, _ = run(tmp_path, fake_image, Script(guest_said("X_HARNESS_EMERGENCY=1")))
    assert (record.status, record.reason) == (Status.FAIL, "boot failed: the guest fell into emergency mode")


def test_a_machine_that_powers_off_without_a_word_fails(tmp_path, fake_image):
    record, _ = run(tmp_path, fake_image, Script(guest_said("READY=1")))
    assert record.reason == "the VM powered off without reporting an exit status (while the test was running)"


def test_status_0_never_means_success(tmp_path, fake_image):
    record, _ = run(tmp_path, fake_image, Script(guest_said("READY=1", "EXIT_STATUS=0")))
    assert record.status == Status.FAIL and "never reported success" in record.reason


def test_a_crashed_machine_is_an_infrastructure_error(tmp_path, fake_image):
    crash = Script(b"", Ending(EndingKind.EXITED, -9), detail="qemu: terminating on signal 9")
    record, _ = run(tmp_path, fake_image, crash)
    assert record.status == Status.ERROR and record.exit_code == EXIT_ERROR
    assert (
        record.reason
        == "the VM was killed by signal 9 before the test unit started: qemu: terminating on signal 9"
    )
    assert tap_lines(record)[-1].startswith("Bail out! TEST-99-UNIT: the VM was killed by signal 9")


def test_interrupt_stops_the_machine_and_reaches_the_caller(tmp_path, fake_image):
    backend = FakeBackend(Script(raises=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, fake_image, backend=backend)
    assert backend.running == 0


def test_missing_image_is_an_error_with_a_fix(tmp_path):
    with pytest.raises(HarnessError) as e:
        run(tmp_path, tmp_path / "nothing.raw")
    assert "no image at" in str(e.value) and "meson compile -C build mkosi" in str(e.value)


def test_the_plan_carries_the_declaration_and_the_path(tmp_path, fake_image):
    _, backend = run(tmp_path, fake_image, None, "--timeout=10", "--cmdline=quiet")
    plan = backend.plans[0]
    assert plan.timeout == 10 and plan.boot_path == BootPath.SNAPSHOT and plan.firmware == "linux"
    assert "quiet" in plan.cmdline and any(c.name == "harness.testcases" for c in plan.credentials)
    _, backend = run(tmp_path, fake_image, None, "--boot=cold")
    assert (
        backend.plans[0].boot_path == BootPath.COLD
        and backend.plans[0].cold_reason == "the test declares boot: 'cold'"
    )
    _, backend = run(tmp_path, fake_image, interactive=True)
    assert backend.plans[0].timeout is None and backend.plans[0].cold_reason == "interactive run"


def test_what_the_machine_did_is_recorded(tmp_path, fake_image):
    record, _ = run(
        tmp_path, fake_image, Script(guest_said("READY=1", "EXIT_STATUS=123"), boot_path=BootPath.COLD)
    )
    assert record.boot == "cold" and "cold boot)" in describe(record)
    record, _ = run(tmp_path, fake_image)
    assert record.boot == "snapshot" and "resumed from the booted snapshot)" in describe(record)


def test_logs_of_an_earlier_run_are_cleared(tmp_path, fake_image):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "journal.journal").write_text("old")
    run(tmp_path, fake_image)
    assert not (tmp_path / "logs" / "journal.journal").exists()


CRASH = Script(b"", Ending(EndingKind.EXITED, -11), detail="qemu: segfault", console=b"booting...")


def test_a_machine_crash_before_the_guest_spoke_is_retried_once(tmp_path, fake_image):
    record, backend = run(tmp_path, fake_image, [CRASH, passing()])
    assert record.status == Status.PASS and record.retried == 1 and len(backend.plans) == 2
    assert "booted again after 1 crash of the machine" in describe(record)
    assert (tmp_path / "logs" / "console.crash-1.log").read_bytes() == b"booting..."


def test_a_second_crash_is_an_error(tmp_path, fake_image):
    record, backend = run(tmp_path, fake_image, [CRASH])
    assert record.status == Status.ERROR and record.retried == 1 and len(backend.plans) == 2
    assert "killed by signal 11" in record.reason


def test_crash_retries_can_be_turned_off_and_must_be_a_number(tmp_path, fake_image):
    record, backend = run(
        tmp_path, fake_image, [CRASH, passing()], env={**ENV, "HARNESS_RETRY_QEMU_CRASH": "0"}
    )
    assert record.status == Status.ERROR and len(backend.plans) == 1
    with pytest.raises(HarnessError, match="HARNESS_RETRY_QEMU_CRASH"):
        run(tmp_path, fake_image, env={**ENV, "HARNESS_RETRY_QEMU_CRASH": "once"})


def test_a_crash_after_the_guest_spoke_is_not_retried(tmp_path, fake_image):
    record, backend = run(
        tmp_path, fake_image, [Script(guest_said("READY=1"), Ending(EndingKind.EXITED, -9)), passing()]
    )
    assert record.status == Status.ERROR and len(backend.plans) == 1


def test_an_image_with_systemd_252_boots_cold_and_loads_its_credentials(tmp_path):
    image = write_image(tmp_path / "image", systemd_version=252)
    record, backend = run(tmp_path, image, None, "--credentials=greeting=hello")
    plan = backend.plans[0]
    assert plan.boot_path == BootPath.COLD and "has no ImportCredential= (254)" in plan.cold_reason
    unit = next(
        c.value.decode() for c in plan.credentials if c.name == "systemd.extra-unit.TEST-99-UNIT.service"
    )
    assert (
        "LoadCredential=greeting:/run/systemd/generator/harness-credentials/greeting" in unit
        and "ImportCredential" not in unit
    )
    assert record.status == Status.PASS


def test_garbage_on_the_report_channel_is_a_plain_failure(tmp_path, fake_image):
    garbage = bytes(range(256)) * 64 + b"\nEXIT_STATUS=abc\nX_HARNESS_TESTCASE=maybe 1\n=\n\xff\xfe\n"
    record, _ = run(tmp_path, fake_image, Script(garbage))
    assert record.status == Status.FAIL
    assert (
        record.reason == "the VM powered off without reporting an exit status (before the test unit started)"
    )


def test_a_lab_s_failure_is_an_error_with_the_job_s_address(tmp_path, fake_image):
    url = "http://lava.invalid/scheduler/job/7"
    ending = Ending(EndingKind.INFRASTRUCTURE, detail="LAVA job 7 ended Incomplete: the device is offline")
    record, _ = run(tmp_path, fake_image, Script(ending=ending, job_url=url))
    assert record.status == Status.ERROR
    assert (
        record.reason == "LAVA job 7 ended Incomplete: the device is offline (before the test unit started)"
    )
    assert record.job_url == url and f"  job:         {url}" in describe(record)


def test_a_shell_instead_of_the_test_boots_the_default_target_and_skips_unless_started(tmp_path, fake_image):
    env = {**ENV, "TEST_SHELL": "1"}
    powered_off = Script(b"", Ending(EndingKind.EXITED, 0))
    record, backend = run(tmp_path, fake_image, powered_off, env=env, interactive=True)
    plan = backend.plans[0]
    assert plan.shell and not any(c.startswith("systemd.unit=") for c in plan.cmdline)
    names = [c.name for c in plan.credentials]
    assert "systemd.extra-unit.TEST-99-UNIT.service" in names, "to start by hand"
    assert (
        "systemd.extra-unit.harness-shell.service" in names
        and "systemd.unit-dropin.multi-user.target~harness-shell" in names
    )
    assert (record.status, record.reason) == (
        Status.SKIP,
        "HARNESS_SHELL=1: a shell instead of the test, which was not started",
    )
    record, _ = run(tmp_path, fake_image, passing(), env=env, interactive=True)
    assert record.status == Status.PASS, "started by hand, the test's verdict is the test's"
    _, backend = run(tmp_path, fake_image, env=env)
    assert not backend.plans[0].shell, "no console, no shell"


def test_under_tap_a_failure_is_described_on_stderr_where_meson_prints_it(tmp_path, fake_image, capsys):
    from harness.__main__ import report_verdict

    failed, _ = run(tmp_path, fake_image, Script(guest_said("READY=1", "EXIT_STATUS=3")))
    capsys.readouterr()
    report_verdict(failed, tap=True)
    err = capsys.readouterr().err
    assert err.startswith("TEST-99-UNIT: FAIL") and "rerun:" in err
    passed, _ = run(tmp_path / "again", fake_image)
    capsys.readouterr()
    report_verdict(passed, tap=True)
    assert capsys.readouterr().err == ""


def test_a_sanitizer_build_has_the_guest_send_its_whole_journal_after_a_pass(tmp_path, fake_image):
    _, backend = run(tmp_path, fake_image, env={**ENV, "HARNESS_SANITIZERS": "1"})
    assert backend.plans[0].whole_journal
    _, backend = run(tmp_path / "again", fake_image)
    assert not backend.plans[0].whole_journal
