"""How a host-driven test drives a VM: the control agent's virtio-serial port and the
console as unix sockets of QEMU's, power through QMP (no shutdown: `stop` cuts it,
`system_reset` and `cont` bring it back, on the same disk and the same firmware
variables), and QMP itself for whatever else QEMU offers.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.backends.qemu.command import RunFiles
from harness.backends.qemu.early_console import merged
from harness.backends.qemu.qmp import Qmp, qmp_errors
from harness.deadline import Deadline
from harness.host.controls import MachineError
from harness.process import OwnedProcess

CONNECT_TIMEOUT = 10.0  # s QEMU may take to create its sockets


def connect(path: Path, proc_alive: Any) -> socket.socket:
    """A connection to one of QEMU's server sockets, once QEMU has made it."""
    deadline = Deadline.after(CONNECT_TIMEOUT)
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if not proc_alive() or deadline.passed():
                raise MachineError(f"could not connect to QEMU's {path.name}") from None
            time.sleep(0.05)


class VmControls:
    """One VM's controls: its QEMU process `proc`, its sockets in `files`, and what QEMU
    said when it failed (`failure_detail`)."""

    def __init__(
        self, files: RunFiles, proc: OwnedProcess, qmp: Qmp, failure_detail: Callable[[], str]
    ) -> None:
        self.files = files
        self.proc = proc
        self.console_log = files.console
        self._qmp = qmp
        self._failure_detail = failure_detail
        self._alive = proc.alive
        self._control = connect(files.control, self._alive)
        self._console: socket.socket | None = None

    def console_text(self) -> bytes:
        """The console so far, each boot's kernel lines from its first on (the UART's
        that hvc0 missed, as console.log will hold them once the VM is gone)."""
        console = self.files.console.read_bytes()
        try:
            return merged(console, self.files.early_console.read_bytes(), note=False)
        except FileNotFoundError:
            return console

    def close(self) -> None:
        self._control.close()
        if self._console is not None:
            self._console.close()

    def send(self, data: bytes) -> None:
        try:
            self._control.sendall(data)
        except OSError as e:
            raise MachineError(f"the VM's control port is gone: {e}") from None

    def receive(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self._control], [], [], timeout)
        if not ready:
            return b""
        try:
            data = self._control.recv(1 << 20)
        except OSError:
            return b""
        if not data:  # QEMU closed it: it is exiting
            time.sleep(min(timeout, 0.1))
        return data

    def send_console(self, data: bytes) -> None:
        if self._console is None:
            self._console = connect(self.files.console_input, self._alive)
            # What QEMU writes to the socket is in console.log too; it is read and dropped
            # here so that a full socket never stalls the guest's console.
            threading.Thread(target=_drain, args=(self._console,), daemon=True).start()
        self._console.sendall(data)

    def power_off(self) -> None:
        self.qmp("stop", {})

    def power_on(self) -> None:
        self.qmp("system_reset", {})
        self.qmp("cont", {})

    def gone(self) -> str | None:
        status = self.proc.poll()
        if status is None:
            return None
        detail = self._failure_detail()
        return f"the VM stopped (QEMU exited with status {status}{': ' + detail if detail else ''})"

    def qmp(self, command: str, arguments: dict[str, Any]) -> Any:
        try:
            return self._qmp.call(command, 30, **arguments)
        except qmp_errors() as e:
            raise MachineError(f"qmp({command!r}): {e}") from None


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass
