"""How a host-driven test drives a board: its control agent reads the serial console, the
host's lines are typed there through the worker (POST /dut/serial/exec) and the agent's
answers read back from the serial log (GET /dut/serial, from where the last read ended);
power goes through /dut/off and /dut/on. The console is one channel for everything: what
the agent prints there is in console.log too, beside the kernel's and systemd's lines. A
board has no QMP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.backends.autokit.client import WorkerClient, WorkerError
from harness.deadline import Deadline
from harness.host.controls import MachineError

SERIAL_POLL = 0.2  # s between reads of the serial log while a call waits for an answer


class BoardControls:
    def __init__(
        self,
        worker: WorkerClient,
        console_log: Path,
        read_serial: Callable[[], bytes],
        poll: float = SERIAL_POLL,
    ) -> None:
        self.worker = worker
        self.console_log = console_log
        self._read_serial = read_serial  # what the log gained, also kept in console.log
        self._poll = poll

    def send(self, data: bytes) -> None:
        self._type("the control agent's line", data)

    def send_console(self, data: bytes) -> None:
        self._type("console input", data)

    def _type(self, what: str, data: bytes) -> None:
        # The worker types a command and its newline; the agent's lines are one each.
        for line in data.decode(errors="replace").removesuffix("\n").split("\n"):
            try:
                self.worker.serial_exec(line)
            except WorkerError as e:
                raise MachineError(
                    f"the worker did not type {what} on the board's console: {e.what}"
                ) from None

    def receive(self, timeout: float) -> bytes:
        deadline = Deadline.after(timeout)
        while True:
            try:
                new = self._read_serial()
            except WorkerError as e:
                raise MachineError(f"the board's serial log could not be read: {e.what}") from None
            left = deadline.remaining()
            if new or left <= 0:
                return new
            time.sleep(min(self._poll, left))

    def power_off(self) -> None:
        self._power("off", self.worker.power_off)

    def power_on(self) -> None:
        self._power("on", self.worker.power_on)

    def _power(self, how: str, switch: Callable[[], None]) -> None:
        try:
            switch()
        except WorkerError as e:
            raise MachineError(f"the worker could not power the board {how}: {e.what}") from None

    def gone(self) -> str | None:
        return None  # a board that stops answering is seen by the call's timeout

    def qmp(self, command: str, arguments: dict[str, Any]) -> Any:
        raise MachineError(f"qmp({command!r}): a board has no QMP (it is a VM's); run the test on qemu")
