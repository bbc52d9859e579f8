"""A host-driven test's controls over a container (host/driven_machine.py's `Controls`).

The control agent (guest/control.sh) runs in the container as in a VM, on the same path:
there a host pty's far end is bound (`--bind=/dev/pts/N:/dev/virtio-ports/io.harness.control`),
a character device and a terminal, which the agent sets raw as it does a console. The host
keeps both ends open for the machine's life, so that a container's restart (a reboot, a
power cycle) finds the channel where it was. Power verbs stop and start the container:
off kills it (nothing flushed, as pulling a plug), on starts nspawn again on the same
root. A reboot from inside ends nspawn with status 133, and the machine starts it again.
The overlay of the test's writes lives in the container's memory, so a reboot or a power
cycle loses them, as `storage: 'volatile'` does on a VM; nothing else differs but QMP,
which a container has not, and the console, which is read-only.
"""

from __future__ import annotations

import errno
import os
import select
import termios
from pathlib import Path
from typing import Any, Protocol

from harness.deadline import Deadline
from harness.host.controls import MachineError
from harness.process import OwnedProcess


class Container(Protocol):
    """What the controls ask of the container's machine (backend.py's NspawnMachine)."""

    console_log: Path
    proc: OwnedProcess

    def start(self) -> None: ...
    def kill(self) -> None: ...
    def read_console(self) -> bytes: ...
    def failure_detail(self) -> str: ...


REBOOT_STATUS = 133  # nspawn's exit status when its container asked for a reboot
PUMP = 0.05  # s between looks at the container while waiting for the agent


class NspawnControls:
    def __init__(self, machine: Container, control: int, far_end: int) -> None:
        self.machine = machine
        self.console_log = machine.console_log
        self._control = control  # the host's end of the agent's pty
        self._far_end = far_end  # the container's end, kept open here between its runs
        self._powered = True

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._control, view) :]

    def receive(self, timeout: float) -> bytes:
        deadline = Deadline.after(timeout)
        while True:
            self._pump()
            ready, _, _ = select.select([self._control], [], [], deadline.remaining(at_most=PUMP))
            if ready:
                try:
                    return os.read(self._control, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise MachineError(
                            f"the control agent's pty could not be read: {e.strerror}"
                        ) from None
            if deadline.passed():
                return b""

    def _pump(self) -> None:
        """The console read on; a container that rebooted started again."""
        self.machine.read_console()
        if self._powered and self.machine.proc.poll() == REBOOT_STATUS:
            self._restart()

    def _restart(self) -> None:
        # What the host sent while no agent listened would reach the next one: dropped,
        # as a VM's port drops it.
        termios.tcflush(self._far_end, termios.TCIFLUSH)
        self.machine.start()

    def send_console(self, data: bytes) -> None:
        raise MachineError(
            "a container's console is read-only (nspawn --console=read-only): run commands with run()"
        )

    def power_off(self) -> None:
        self.machine.kill()
        self.machine.read_console()
        self._powered = False

    def power_on(self) -> None:
        self._restart()
        self._powered = True

    def gone(self) -> str | None:
        # Every wait asks this (console.expect too, which reads console.log): the console
        # is read on here, as the container only writes it to nspawn's stdout.
        self._pump()
        status = self.machine.proc.poll()
        if not self._powered or status is None or status == REBOOT_STATUS:
            return None
        return f"the container ended by itself (nspawn's status {status}: {self.machine.failure_detail() or 'no word'})"

    def qmp(self, command: str, arguments: dict[str, Any]) -> Any:
        raise MachineError(f"qmp({command!r}): a container has no QMP (it is a VM's); declare vm: true")
