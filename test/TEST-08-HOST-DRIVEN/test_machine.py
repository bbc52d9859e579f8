"""The machine driven from the host, step by step: commands, files, a reboot from inside,
a power cut from outside, the console of every boot, QMP, and the NixOS driver's verbs.
Storage is volatile: what a boot writes is gone in the next."""

import hashlib
import os

import pytest


def test_the_first_boot_answers(machine):
    assert machine.boot == 1
    assert "ID=" in machine.check("cat /etc/os-release").text
    state = machine.run("systemctl is-system-running --wait").text
    assert state in ("running", "degraded"), machine.run("systemctl --failed --no-legend").text


def test_files_travel_both_ways_intact(machine, tmp_path):
    blob = os.urandom(300_000)
    (tmp_path / "blob").write_bytes(blob)
    machine.put(tmp_path / "blob", "/run/blob")
    assert machine.check("sha256sum /run/blob").text.split()[0] == hashlib.sha256(blob).hexdigest()
    machine.get("/run/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == blob


def test_a_reboot_from_inside_starts_a_new_boot(machine):
    first = machine.boot_id
    machine.check("touch /run/before-reboot")
    machine.reboot()
    assert machine.boot == 2 and machine.boot_id != first
    assert machine.run("test -e /run/before-reboot").status == 1


def test_a_power_cut_from_outside_boots_again(machine):
    machine.power_cycle()
    assert machine.boot == 3
    assert machine.check("cat /proc/sys/kernel/random/boot_id").text == machine.boot_id


def test_the_console_marks_every_boot(machine):
    for _ in range(3):
        machine.console.expect(r"harness: boot \S+ is up")


def test_qmp_reaches_qemu(machine):
    if machine.backend != "qemu":
        pytest.skip(f"QMP is a VM's; the {machine.backend} machine has none")
    assert machine.qmp("query-status")["status"] == "running"


def test_the_drivers_verbs_wait_for_what_they_say(machine):
    machine.wait_for_unit("systemd-journald.service")
    assert machine.succeed("echo ok") == "ok"
    assert machine.fail("echo no; false") == "no"
    machine.succeed("(sleep 2; touch /run/later) >/dev/null 2>&1 &")
    machine.wait_for_file("/run/later", timeout=60)
    machine.wait_until_fails("test ! -e /run/later", timeout=10)
    # A socket systemd listens on: the port is open as soon as the unit starts.
    machine.succeed("systemd-run --unit=harness-verbs-port --socket-property=ListenStream=8765 cat")
    machine.wait_for_open_port(8765, timeout=60)
    # A unit that failed fails the wait at once, with its status.
    machine.run("systemd-run --unit=harness-verbs-fails --property=Type=oneshot false")
    with pytest.raises(AssertionError, match="the unit failed"):
        machine.wait_for_unit("harness-verbs-fails.service", timeout=600)
