"""The virtual worker's board (virtual_worker.py): the device under test is a disk image,
UEFI variables and a QEMU process. Flashing writes the disk and gives the board fresh
variables and a new serial log; power on starts QEMU, power off kills it (no shutdown).
The serial console is one unix socket of QEMU's, held by the worker from power on to
power off: what the board prints is appended to one log from flashing on (across power
cycles), what is typed goes the other way. The worker writes the log itself, from the
socket: QEMU's own logfile= repeats a byte now and then when the socket is slow to take
it, and QEMU drops what a client typed when the client hangs up before the UART took it.
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import process
from harness.backends.qemu.architectures import MACHINES, qemu_binary
from harness.backends.qemu.command import disk_args, machine_alias, machine_args, uefi_args
from harness.backends.qemu.controls import connect
from harness.backends.qemu.firmware import copy_nvram, find_ovmf
from harness.boot.accel import detect, vcpus_now
from harness.host.controls import MachineError
from harness.process import OwnedProcess
from harness.settings import Settings

ARCH = "x86_64"  # the board's
EXEC_QUIET = 0.2  # s: the output of a typed line has ended when the console is this quiet
EXEC_LONGEST = 2.0  # s: and at most this long after it was typed


class VirtualBoard:
    """The device under test: a disk image, UEFI variables and a QEMU process."""

    def __init__(self, state_dir: Path, settings: Settings) -> None:
        self.dir = state_dir
        self.settings = settings  # the worker's: HARNESS_QEMU, HARNESS_ACCEL, HARNESS_VCPUS
        self.disk = state_dir / "disk.raw"
        self.serial_log = state_dir / "serial.log"
        self.serial_input = state_dir / "serial.sock"
        self.proc: OwnedProcess | None = None
        self._serial: socket.socket | None = None  # the console, while the board is on
        self._logger: threading.Thread | None = None
        self.nvram: Path | None = None
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="board-owner")

    def write_disk(self, gzipped: Path) -> None:
        self.power_off()
        tmp = self.disk.with_suffix(".new")
        with gzip.open(gzipped, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.replace(self.disk)
        self.serial_log.write_bytes(b"")  # a new board: its log starts again
        ovmf = find_ovmf(ARCH, machine_alias(qemu_binary(ARCH, self.settings), MACHINES[ARCH]), self.settings)
        self.nvram = copy_nvram(ovmf, self.dir)  # a freshly flashed board has fresh variables

    def power_on(self) -> None:
        if self.proc and self.proc.poll() is None:
            return
        if not self.disk.exists():
            raise RuntimeError("nothing flashed yet: POST /dut/sendImage and /dut/flashImage first")
        assert self.nvram is not None
        ovmf = find_ovmf(ARCH, machine_alias(qemu_binary(ARCH, self.settings), MACHINES[ARCH]), self.settings)
        cmd = [
            *machine_args(ARCH, detect(ARCH, self.settings), self.settings, vcpus_now(self.settings)),
            *disk_args(self.disk, "raw"),
            *uefi_args(ovmf, self.nvram),
            "-nic",
            "user,model=virtio-net-pci",
            "-chardev",
            # QEMU waits for the worker to connect: not a byte of the boot is lost.
            f"socket,id=serial,path={self.serial_input},server=on,wait=on",
            "-serial",
            "chardev:serial",
        ]
        # Requests are served by short-lived threads, and the parent-death signal fires
        # when the forking thread ends: the board is started from the owner thread, which
        # lives as long as the worker, so a killed worker takes its board with it.
        self.serial_input.unlink(missing_ok=True)
        proc = self.proc = self._owner.submit(self._spawn, cmd).result()
        try:
            self._serial = connect(self.serial_input, lambda: proc.poll() is None)
        except MachineError as e:
            self.power_off()
            stderr = (self.dir / "qemu.stderr").read_text(errors="replace").strip()
            raise RuntimeError(f"the board did not start: {e}; QEMU said: {stderr[-500:]}") from None
        self._logger = threading.Thread(target=self._log_serial, args=(self._serial,), daemon=True)
        self._logger.start()

    def _log_serial(self, serial: socket.socket) -> None:
        with self.serial_log.open("ab") as log:
            with contextlib.suppress(OSError):
                while data := serial.recv(1 << 16):
                    log.write(data)
                    log.flush()

    def _spawn(self, cmd: list[str]) -> OwnedProcess:
        return process.start(cmd, self.dir / "qemu.stderr")

    def power_off(self) -> None:
        if self.proc:
            self.proc.kill()
        self.proc = None
        if self._logger is not None:  # QEMU is gone: the log ends with what it printed last
            self._logger.join(timeout=10)
            self._logger = None
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def serial_since(self, offset: int) -> bytes:
        try:
            with self.serial_log.open("rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def type_line(self, line: str) -> bytes:
        """Type `line` and a newline on the console; what the console printed meanwhile."""
        serial = self._serial
        if serial is None or not (self.proc and self.proc.poll() is None):
            raise RuntimeError("the board is off: POST /dut/on first")
        start = self.serial_log.stat().st_size
        serial.sendall(line.encode() + b"\n")
        typed = last_change = time.monotonic()
        size = start
        while time.monotonic() - last_change < EXEC_QUIET and time.monotonic() - typed < EXEC_LONGEST:
            time.sleep(0.05)
            now = self.serial_log.stat().st_size
            if now != size:
                size, last_change = now, time.monotonic()
        return self.serial_since(start)
