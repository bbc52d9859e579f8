"""A host-driven test's machine on a board: the control agent on the serial console,
typed through the worker and read back from its serial log, among the kernel's lines."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer

import pytest

from harness.backends.autokit.client import WorkerClient
from harness.backends.autokit.controls import BoardControls
from harness.backends.autokit.virtual_worker import VirtualWorker
from harness.backends.autokit.worker_api import make_handler
from harness.backends.fake import FakeGuest
from harness.guest.units import CONSOLE_CONTROL, CONTROL_UNIT, VIRTIO_CONTROL, control_credentials
from harness.host.controls import MachineError
from harness.host.driven_machine import DrivenMachine
from harness.settings import Settings
from tests.stub_worker import StubWorker

NOISE = b"[   12.345678] EXT4-fs (vda2): re-mounted. Quota mode: none.\r\n"


class ConsoleWorker:
    """A worker whose board's serial console carries the control agent (a FakeGuest)
    and kernel messages between its lines."""

    def __init__(self, guest: FakeGuest) -> None:
        self.guest = guest
        self.log = bytearray(NOISE)
        self.typed: list[str] = []
        self.powered = True

    def serial_exec(self, cmd: str) -> str:
        self.typed.append(cmd)
        self.guest.send(cmd.encode() + b"\n")
        return ""

    def serial_since(self, offset: int) -> bytes:
        self.log += self.guest.receive(0) + NOISE
        return bytes(self.log[offset:])

    def power_off(self) -> None:
        self.powered = False
        self.guest.power_off()

    def power_on(self) -> None:
        self.powered = True
        self.guest.power_on()


def board(tmp_path) -> tuple[DrivenMachine, ConsoleWorker]:
    root = tmp_path / "root"
    root.mkdir()
    worker = ConsoleWorker(FakeGuest(tmp_path / "guest-console.log", root))
    console_log = tmp_path / "console.log"
    console_log.write_bytes(b"")
    read = 0

    def read_serial() -> bytes:
        nonlocal read
        new = worker.serial_since(read)
        read += len(new)
        with console_log.open("ab") as f:
            f.write(new)
        return new

    controls = BoardControls(worker, console_log, read_serial, poll=0.01)  # type: ignore[arg-type]
    return DrivenMachine(controls, timeout_factor=0.05, backend="autokit"), worker


def test_commands_and_files_travel_over_a_console_shared_with_the_kernel(tmp_path):
    machine, worker = board(tmp_path)
    result = machine.run("printf out; printf err >&2; exit 3")
    assert (result.status, result.stdout, result.stderr) == (3, b"out", b"err")
    assert machine.run("head -c 100000 /dev/zero | tr '\\0' '\\377'").stdout == b"\xff" * 100000
    assert all(line.startswith("C ") and "\n" not in line for line in worker.typed)
    assert b"EXT4-fs" in (tmp_path / "console.log").read_bytes()  # the console keeps it all


def test_power_goes_through_the_worker_and_the_next_boot_answers(tmp_path):
    machine, worker = board(tmp_path)
    machine.wait_booted()
    machine.power_off()
    assert not worker.powered
    with pytest.raises(MachineError, match="powered off"):
        machine.run("true")
    machine.power_on()
    machine.wait_booted()
    assert machine.boot == 2 and worker.powered


def test_a_board_has_no_qmp_and_says_where_it_is(tmp_path):
    machine, _ = board(tmp_path)
    with pytest.raises(MachineError, match="a board has no QMP"):
        machine.qmp("query-status")
    assert machine.backend == "autokit"


def test_the_agent_on_the_console_keeps_the_serial_getty_off_it():
    console = control_credentials(257, CONSOLE_CONTROL)
    unit = next(c for c in console if c.name == f"systemd.extra-unit.{CONTROL_UNIT}").value.decode()
    assert f"ExecStart=/bin/sh %d/harness.control {CONSOLE_CONTROL}" in unit
    getty = next(c for c in console if c.name.startswith("systemd.unit-dropin.serial-getty@.service"))
    assert f"ConditionPathExists=!/etc/systemd/system/{CONTROL_UNIT}" in getty.value.decode()
    vm = control_credentials(257, VIRTIO_CONTROL)
    assert not any("serial-getty" in c.name for c in vm)


# -- the serial log from an offset ---------------------------------------------------------


@pytest.fixture
def virtual_worker(tmp_path):
    w = VirtualWorker(tmp_path, "t", Settings.from_environment({}), watchdog=60)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(w))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    client = WorkerClient(f"http://127.0.0.1:{server.server_address[1]}", token="t", sleep=lambda s: None)
    client.reserve()
    yield w, client
    server.shutdown()
    server.server_close()
    w.teardown()


def test_the_virtual_worker_serves_the_serial_log_from_an_offset(virtual_worker):
    worker, client = virtual_worker
    worker.board.serial_log.write_bytes(b"0123456789")
    assert client.serial_since(0) == b"0123456789"
    assert client.serial_since(4) == b"456789"
    assert client.serial_since(10) == b""  # 416: nothing past it yet


def test_a_worker_that_ignores_the_range_is_cut_by_the_client():
    with StubWorker({("GET", "/dut/serial"): [(200, b"0123456789")]}) as stub:
        client = WorkerClient(stub.url)
        assert client.serial_since(6) == b"6789"
        assert stub.requests[-1][2]["Range"] == "bytes=6-"


def test_typing_on_a_board_that_is_off_is_refused(virtual_worker):
    _, client = virtual_worker
    with pytest.raises(Exception, match="the board is off"):
        client.serial_exec("C 1 1 dHJ1ZQ==")
