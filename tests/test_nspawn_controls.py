"""A host-driven test's controls over a container, without one: a real pty, and a stand-in
machine whose 'container' is a process ending with the status asked for."""

import os
import pty
import tty
from pathlib import Path

import pytest

from harness import process
from harness.backends.nspawn.controls import REBOOT_STATUS, NspawnControls
from harness.host.controls import MachineError


class StandIn:
    """NspawnMachine's part the controls use: starts count, each a `sh -c exit N`."""

    def __init__(self, tmp: Path, statuses: list[int]) -> None:
        self.console_log = tmp / "console.log"
        self.tmp = tmp
        self.statuses = statuses
        self.starts = 0
        self.killed = 0
        self.start()

    def start(self) -> None:
        status = self.statuses[min(self.starts, len(self.statuses) - 1)]
        self.starts += 1
        self.proc = process.start(["sh", "-c", f"exit {status}"], self.tmp / "stderr")
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.killed += 1

    def read_console(self) -> bytes:
        return b""

    def failure_detail(self) -> str:
        return "Container failed"


@pytest.fixture
def pair():
    host_end, far_end = pty.openpty()
    tty.setraw(far_end)
    yield host_end, far_end
    os.close(host_end)
    os.close(far_end)


def test_the_agents_lines_travel_both_ways_on_the_pty(tmp_path, pair):
    host_end, far_end = pair
    controls = NspawnControls(StandIn(tmp_path, [0]), host_end, far_end)
    controls.send(b"C 1 10 ZWNobw==\n")
    assert os.read(far_end, 100) == b"C 1 10 ZWNobw==\n"
    os.write(far_end, b"H boot-1\n")
    assert controls.receive(2) == b"H boot-1\n"
    assert controls.receive(0.1) == b""


def test_a_reboot_starts_the_container_again_and_drops_what_nobody_read(tmp_path, pair):
    host_end, far_end = pair
    machine = StandIn(tmp_path, [REBOOT_STATUS, 0])
    controls = NspawnControls(machine, host_end, far_end)
    controls.send(b"C 2 10 stale\n")  # sent while no agent listened
    controls.receive(0.1)
    assert machine.starts == 2
    os.set_blocking(far_end, False)
    with pytest.raises(BlockingIOError):
        os.read(far_end, 100)


def test_a_container_that_ended_by_itself_is_gone_unless_powered_off(tmp_path, pair):
    machine = StandIn(tmp_path, [1])
    controls = NspawnControls(machine, *pair)
    assert controls.gone() == "the container ended by itself (nspawn's status 1: Container failed)"
    controls.power_off()
    assert machine.killed == 1 and controls.gone() is None
    controls.power_on()
    assert machine.starts == 2


def test_qmp_and_typing_on_the_console_are_refused_naming_why(tmp_path, pair):
    controls = NspawnControls(StandIn(tmp_path, [0]), *pair)
    with pytest.raises(MachineError, match="a container has no QMP"):
        controls.qmp("query-status", {})
    with pytest.raises(MachineError, match="read-only"):
        controls.send_console(b"root\n")


def test_waiting_on_the_console_reads_it_on(tmp_path, pair):
    # console.expect asks gone() between its reads of console.log: the container's console
    # reaches console.log there, not only when the agent's channel is read.
    machine = Counting(tmp_path, [0])
    NspawnControls(machine, *pair).gone()
    assert machine.reads == 1


class Counting(StandIn):
    reads = 0

    def read_console(self) -> bytes:
        self.reads += 1
        return b""
