"""Host-driven tests through the fake backend, in seconds: every verb of the machine a
test holds, timeouts, a guest that stops answering, a power cut, and pytest's outcomes
turned into subtests (what tests/test_host_driven_vm.py shows on a real VM)."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest

import harness.host.pytest_run
from harness.backends.fake import FakeBackend, FakeGuest, Script
from harness.errors import DeclarationError
from harness.host.controls import MachineError
from harness.host.driven_machine import DrivenMachine
from harness.image.parts import ImageParts
from harness.report.tap import tap_lines
from harness.settings import Settings
from harness.verdict.record import TestRecord
from harness.verdict.results import Status
from harness.wrapper import RunContext, run_test
from tests.helpers import declaration
from tests.images import write_image

ENV = {"HARNESS_ACCEL": "tcg"}


@pytest.fixture
def fake_image(tmp_path):
    return write_image(tmp_path / "image")


def guest(tmp_path, **kw) -> tuple[DrivenMachine, FakeGuest]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    fake = FakeGuest(tmp_path / "console.log", root, **kw)
    return DrivenMachine(fake, timeout_factor=0.05), fake


def host_test(
    tmp_path: Path, image: Path, code: str, *args: str, script: Script | None = None, timeout: int = 300
) -> tuple[TestRecord, FakeBackend]:
    """Run a host-driven test whose pytest file is `code`, through the fake backend."""
    test_dir = tmp_path / "TEST-99-UNIT"
    test_dir.mkdir()
    (test_dir / "test_host.py").write_text(textwrap.dedent(code))
    backend = FakeBackend(script or Script())
    ctx = RunContext(tmp_path / "logs", tmp_path / "build", "run-1", snapshot_dir=tmp_path / "snapshots")
    decl = declaration("--host=test_host.py", f"--timeout={timeout}", *args, test_dir=str(test_dir))
    record = run_test(decl, ImageParts(image), ctx, backend, Settings.from_environment(ENV), timeout_factor=1)
    assert backend.running == 0, "a machine was left running"
    return record, backend


# -- the machine's verbs -----------------------------------------------------------------


def test_run_returns_status_stdout_and_stderr_and_binary_survives(tmp_path):
    machine, _ = guest(tmp_path)
    result = machine.run("printf 'out\\n'; printf err >&2; exit 3")
    assert (result.status, result.stdout, result.stderr, result.text) == (3, b"out\n", b"err", "out")
    big = machine.run("head -c 300000 /dev/zero | tr '\\0' '\\377'")
    assert big.stdout == b"\xff" * 300000
    assert machine.boot == 1 and machine.boot_id == "boot-1"


def test_check_raises_with_status_and_both_outputs(tmp_path):
    machine, _ = guest(tmp_path)
    with pytest.raises(MachineError, match=r"'echo no; exit 2' exited with status 2; stdout: 'no'"):
        machine.check("echo no; exit 2")
    assert machine.check("true").status == 0


def test_put_and_get_move_files_both_ways(tmp_path):
    machine, fake = guest(tmp_path)
    source = tmp_path / "blob"
    source.write_bytes(bytes(range(256)) * 100)
    machine.put(source, "copied")
    assert (fake.root / "copied").read_bytes() == source.read_bytes()
    machine.get("copied", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == source.read_bytes()
    with pytest.raises(MachineError, match="cat missing"):
        machine.get("missing", tmp_path / "none")


def test_reboot_returns_in_the_next_boot(tmp_path):
    machine, fake = guest(tmp_path)
    machine.reboot()
    assert machine.boot == 2 and fake.boots == 2
    assert machine.run("true").status == 0


def test_a_reboot_whose_answer_the_shutdown_cut_off_returns_in_the_next_boot(tmp_path):
    """The shutdown stops the control agent, at times before it answers the command that
    started it: the next boot's hello answers it."""
    machine, fake = guest(tmp_path, answers_reboot=False)
    machine.reboot()
    assert machine.boot == 2 and machine.run("echo up").text == "up"
    assert fake.ran.count("systemctl --no-block reboot") == 1


def test_a_power_cut_stops_the_guest_until_power_on(tmp_path):
    machine, _ = guest(tmp_path)
    machine.power_off()
    with pytest.raises(MachineError, match="powered off; power_on"):
        machine.run("true")
    machine.power_on()
    assert machine.run("echo up").text == "up" and machine.boot == 2
    machine.power_cycle()
    assert machine.boot == 3


def test_a_guest_that_stops_answering_fails_the_call_naming_it(tmp_path):
    machine, _ = guest(tmp_path, answers=1)
    machine.run("true")
    with pytest.raises(MachineError, match=r"run\('sleep 1'\): the guest did not answer within \d+ s"):
        machine.run("sleep 1", timeout=1)


def test_a_command_past_its_timeout_is_killed_and_named(tmp_path):
    machine, _ = guest(tmp_path)
    with pytest.raises(MachineError, match=r"run\('sleep 5'\): still running after 1 s"):
        machine.run("sleep 5", timeout=10)  # x0.05: one second


def test_a_boot_that_never_answers_fails_wait_booted(tmp_path):
    machine, _ = guest(tmp_path, comes_up=False)
    with pytest.raises(MachineError, match="boot 1 did not come up within 6 s"):
        machine.wait_booted()


def test_a_boot_whose_announcement_is_lost_is_found_by_asking_its_agent(tmp_path):
    machine, fake = guest(tmp_path, announces=False)
    machine.wait_booted()  # x0.05: the agent is asked after 0.75 s
    assert machine.boot == 1 and machine.boot_id == "boot-1"
    machine.reboot()
    assert machine.boot == 2 and machine.run("echo up").text == "up"
    assert fake.ran.count("cat /proc/sys/kernel/random/boot_id") >= 2


def test_a_machine_that_stopped_says_so(tmp_path):
    machine, fake = guest(tmp_path, answers=0)
    fake.stopped = "the VM stopped (QEMU exited with status 1)"
    with pytest.raises(MachineError, match=r"run\('true'\): the VM stopped"):
        machine.run("true")


def test_the_console_expects_and_types(tmp_path):
    machine, fake = guest(tmp_path)
    machine.reboot()
    assert machine.console.expect(r"fake boot (\d)").group(1) == "1"
    assert machine.console.expect(r"fake boot (\d)").group(1) == "2"  # past the last match
    with pytest.raises(MachineError, match=r"console.expect\('login:'\): not within"):
        machine.console.expect("login:", timeout=1)
    machine.console.sendline("root")
    assert fake.typed == b"root\n"


def test_qmp_passes_through(tmp_path):
    machine, fake = guest(tmp_path)
    machine.qmp("set_link", name="net0", up=False)
    assert fake.qmp_calls == [("set_link", {"name": "net0", "up": False})]


# -- the file as a test ------------------------------------------------------------------

STEPS = """
    def test_step_1_boots(machine):
        assert machine.boot == 1

    def test_step_2_fails_on_purpose(machine):
        assert machine.run("echo v1").text == "v2"

    def test_step_3_still_runs(machine):
        machine.reboot()
        assert machine.boot == 2
"""


def test_each_function_is_a_subtest_and_a_failure_names_its_step(tmp_path, fake_image):
    record, backend = host_test(tmp_path, fake_image, STEPS)
    assert record.status == Status.FAIL
    assert [(s.name, s.status) for s in record.subtests] == [
        ("test_step_1_boots", Status.PASS),
        ("test_step_2_fails_on_purpose", Status.FAIL),
        ("test_step_3_still_runs", Status.PASS),
    ]
    assert "assert 'v1' == 'v2'" in record.subtests[1].detail
    assert record.reason.startswith(
        "1 of 3 steps of test_host.py failed, first test_step_2_fails_on_purpose:"
    )
    assert "not ok 2 - TEST-99-UNIT/test_step_2_fails_on_purpose" in tap_lines(record)
    assert (tmp_path / "logs" / "host-test.log").read_text().count("PASSED") == 2
    assert backend.machines[0].guest is not None
    assert backend.machines[0].guest.ran[-1] == "journalctl -o export | gzip -1", (
        "a failed host test keeps the journal"
    )


def test_a_passing_file_passes_and_skips_are_subtests(tmp_path, fake_image):
    code = """
        import pytest

        def test_runs(machine):
            machine.check("true")

        def test_not_here(machine):
            pytest.skip("no TPM on this machine")
    """
    record, _ = host_test(tmp_path, fake_image, code)
    assert (record.status, record.reason) == (Status.PASS, "1 of 2 steps of test_host.py passed")
    assert record.subtests[1].detail == "no TPM on this machine"
    assert not list((tmp_path / "TEST-99-UNIT").glob("__pycache__")), "nothing written beside the file"


def test_a_machine_that_never_comes_up_is_an_error(tmp_path, fake_image):
    record, _ = host_test(tmp_path, fake_image, STEPS, script=Script(comes_up=False), timeout=2)
    assert record.status == Status.ERROR
    assert record.reason == (
        "the machine did not come up for its host test: the test's timeout (2 s) passed during this step"
    )


def test_a_file_pytest_cannot_load_is_an_error(tmp_path, fake_image):
    # It compiles, and its import fails: found before the boot, as pytest finds it.
    record, backend = host_test(
        tmp_path, fake_image, "import no_such_module\ndef test_x(machine):\n    pass\n"
    )
    assert record.status == Status.ERROR and "No module named 'no_such_module'" in record.reason
    assert not backend.plans, "it booted"


def test_the_timeout_bounds_the_whole_file(tmp_path, fake_image):
    code = """
        import time

        def test_first(machine):
            time.sleep(30)

        def test_second(machine):
            pass
    """
    record, _ = host_test(tmp_path, fake_image, code, timeout=1)
    assert [(s.name, s.status) for s in record.subtests] == [
        ("test_first", Status.FAIL),
        ("test_second", Status.FAIL),
    ]
    assert "the test's timeout (1 s) passed during this step" in record.subtests[0].detail
    assert "did not run: the test's timeout (1 s) passed" in record.subtests[1].detail


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_step_interrupts_the_test_and_stops_its_machine(tmp_path, fake_image, signum):
    code = f"""
        import os

        def test_waits(machine):
            os.kill(os.getpid(), {int(signum)})
    """
    with pytest.raises(KeyboardInterrupt):
        host_test(tmp_path, fake_image, code)


def test_an_interrupt_that_pytest_turns_into_its_own_error_is_still_an_interrupt(
    tmp_path, fake_image, monkeypatch
):
    def pytest_breaks_on_interrupt(*args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # as pytest 8 did once, interrupted while importing a plugin
            raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'int'") from None

    monkeypatch.setattr(harness.host.pytest_run, "_pytest", pytest_breaks_on_interrupt)
    with pytest.raises(KeyboardInterrupt):
        host_test(tmp_path, fake_image, "def test_x(machine):\n    pass\n")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is put back"


def test_a_core_dump_fails_a_host_test_whose_steps_passed_unless_excluded(tmp_path, fake_image):
    from tests.test_gates import DUMP

    code = "def test_x(machine):\n    machine.check('true')\n"
    record, backend = host_test(tmp_path, fake_image, code, script=Script(journal_export=DUMP + b"\n"))
    assert record.status == Status.FAIL
    assert record.reason.startswith(
        "a process dumped core during the test: myd (pid 312, SIGSEGV, /usr/bin/myd)"
    )
    assert [s.status for s in record.subtests] == [Status.PASS]
    assert backend.machines[0].guest is not None
    assert backend.machines[0].guest.ran[-1] == "journalctl -o export | gzip -1", (
        "the failure keeps the journal"
    )
    (tmp_path / "TEST-99-UNIT" / "test_host.py").unlink()
    (tmp_path / "TEST-99-UNIT").rmdir()
    record, _ = host_test(
        tmp_path,
        fake_image,
        code,
        "--coredump-exclude-regex=/myd$",
        script=Script(journal_export=DUMP + b"\n"),
    )
    assert record.status == Status.PASS and not (tmp_path / "logs" / "journal.export").exists()


def test_a_host_test_skips_where_the_machine_cannot_be_driven(tmp_path, fake_image):
    code = "def test_x(machine):\n    pass\n"
    test_dir = tmp_path / "TEST-99-UNIT"
    test_dir.mkdir()
    (test_dir / "test_host.py").write_text(code)
    backend = FakeBackend(drives_host_tests=False, name="lava")
    ctx = RunContext(tmp_path / "logs", None, "run-1")
    decl = declaration("--host=test_host.py", test_dir=str(test_dir))
    record = run_test(decl, fake_image, ctx, backend, Settings.from_environment(ENV))
    assert record.status == Status.SKIP and "runs on qemu" in record.reason and backend.plans == []


def test_the_host_key_names_a_python_file_of_the_test(tmp_path):
    with pytest.raises(DeclarationError, match=r"'host': .* does not exist"):
        declaration("--host=test_missing.py", test_dir=str(tmp_path))
    with pytest.raises(DeclarationError, match=r"'host': '\.\./x\.py' is not a Python file name"):
        declaration("--host=../x.py", test_dir=str(tmp_path))
