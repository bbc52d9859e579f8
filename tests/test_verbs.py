"""The NixOS-style verbs of a host test's machine (host/verbs.py) through the fake guest:
each one's success, its timeout and its failure. The fake runs commands with the host's
sh in a directory of its own; a `systemctl` on PATH plays the guest's."""

from __future__ import annotations

import socket
import time

import pytest

from harness.host.controls import MachineError
from harness.host.driven_machine import DrivenMachine
from tests.test_host_driven import guest

FAKE_SYSTEMCTL = """#!/bin/sh
# show --property=ActiveState --property=Job -- UNIT | status ... -- UNIT: from files
for unit; do :; done
case "$1" in
show)
    echo "ActiveState=$(cat "state/$unit" 2>/dev/null || echo inactive)"
    if [ -e "jobs/$unit" ]; then echo "Job=$(cat "jobs/$unit")"; fi ;;
status) echo "status of $unit: $(cat "state/$unit")" ;;
*) echo "systemctl $*" ;;
esac
"""


@pytest.fixture
def machine(tmp_path, monkeypatch) -> DrivenMachine:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{monkeypatch.delenv('PATH', raising=False) or ''}/usr/bin:/bin")
    driven, _ = guest(tmp_path)
    for d in ("state", "jobs"):
        (tmp_path / "root" / d).mkdir()
    return driven


def set_state(tmp_path, unit: str, state: str) -> None:
    (tmp_path / "root" / "state" / unit).write_text(state + "\n")


def test_succeed_and_fail_return_stdout_or_say_why(machine):
    assert machine.succeed("echo hello") == "hello"
    with pytest.raises(MachineError, match=r"succeed: 'exit 4' exited with status 4"):
        machine.succeed("exit 4")
    assert machine.fail("echo no; exit 1") == "no"
    with pytest.raises(MachineError, match=r"fail: 'true' exited with status 0.*should have failed"):
        machine.fail("true")


def test_systemctl_runs_in_the_guest(machine):
    assert machine.systemctl("daemon-reload").text == "systemctl daemon-reload"


def test_wait_until_succeeds_retries_until_it_does(machine, tmp_path):
    # Fails twice, then succeeds: a counter in the guest's directory.
    command = "n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) >n; [ $n -ge 2 ] && echo done"
    assert machine.wait_until_succeeds(command) == "done"
    assert (tmp_path / "root" / "n").read_text().strip() == "3"


def test_wait_until_succeeds_times_out_naming_the_last_try(machine):
    start = time.monotonic()
    with pytest.raises(
        MachineError,
        match=r"wait_until_succeeds\('echo x; false'\): not within 1 s; the last try: .*stdout: 'x'",
    ):
        machine.wait_until_succeeds("echo x; false", timeout=20)  # x0.05: 1 s
    assert time.monotonic() - start < 5


def test_a_try_that_hangs_is_a_failed_try_not_the_end(machine, tmp_path):
    # The first try outlives its timeout and is killed; the next one succeeds.
    command = "if [ -e tried ]; then echo ok; else touch tried; sleep 30; fi"
    assert machine.wait_until_succeeds(command, timeout=200) == "ok"  # x0.05: 10 s, a try 1 s at least


def test_wait_until_fails(machine):
    assert machine.wait_until_fails("echo gone; false") == "gone"
    with pytest.raises(MachineError, match="not within 1 s"):
        machine.wait_until_fails("true", timeout=20)


def test_wait_for_file(machine, tmp_path):
    (tmp_path / "root" / "ready").touch()
    machine.wait_for_file("ready")
    with pytest.raises(MachineError, match=r"wait_for_file\('missing'\): not within 1 s"):
        machine.wait_for_file("missing", timeout=20)


def test_wait_for_unit_returns_when_active(machine, tmp_path):
    set_state(tmp_path, "web.service", "activating")
    machine.run("sleep 0; (sleep 1; echo active > state/web.service) >/dev/null 2>&1 &")
    machine.wait_for_unit("web.service")


def test_wait_for_unit_fails_at_once_when_the_unit_failed(machine, tmp_path):
    set_state(tmp_path, "web.service", "failed")
    start = time.monotonic()
    with pytest.raises(
        MachineError, match=r"wait_for_unit\('web.service'\): the unit failed:\nstatus of web.service: failed"
    ):
        machine.wait_for_unit("web.service", timeout=1000)
    assert time.monotonic() - start < 5


def test_wait_for_unit_fails_when_nothing_will_start_it(machine, tmp_path):
    with pytest.raises(MachineError, match="inactive and no job will start it"):
        machine.wait_for_unit("never.service", timeout=1000)
    # With a job queued it waits, and times out when the job never runs.
    (tmp_path / "root" / "jobs" / "later.service").write_text("42\n")
    with pytest.raises(MachineError, match=r"wait_for_unit\('later.service'\): not within 1 s"):
        machine.wait_for_unit("later.service", timeout=20)


def test_wait_for_open_port_sees_a_listening_socket(machine):
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::", 0))
        listener.listen()
        machine.wait_for_open_port(listener.getsockname()[1])
    with socket.socket() as bound:  # bound but not listening: not open
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(MachineError, match=r"wait_for_open_port\(\d+\): not within 1 s"):
            machine.wait_for_open_port(bound.getsockname()[1], timeout=20)
    with pytest.raises(MachineError, match="not a TCP port"):
        machine.wait_for_open_port(70000)


def test_wait_for_console_text(machine, tmp_path):
    assert machine.wait_for_console_text(r"fake boot \d") == "fake boot 1"
    with pytest.raises(MachineError, match=r"console.expect\('never'\): not within 1 s"):
        machine.wait_for_console_text("never", timeout=20)


def test_keys_and_chars_and_screens(tmp_path):
    machine, fake = guest(tmp_path)
    machine.send_chars("root\n")
    assert bytes(fake.typed) == b"root\n"
    machine.send_key("ctrl-alt-delete")
    machine.screenshot(tmp_path / "screen.ppm")
    assert fake.qmp_calls == [
        ("send-key", {"keys": [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]}),
        ("screendump", {"filename": str(tmp_path / "screen.ppm")}),
    ]


def test_a_screenshot_without_a_display_says_why(tmp_path, monkeypatch):
    machine, _ = guest(tmp_path)

    def refuse(self, command, arguments):
        raise MachineError(f"qmp({command!r}): no console to capture")

    monkeypatch.setattr("harness.backends.fake.FakeGuest.qmp", refuse)
    with pytest.raises(MachineError, match=r"no display .* the serial console is their screen"):
        machine.screenshot("s.ppm")
