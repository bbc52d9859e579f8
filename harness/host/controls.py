"""What a backend offers a host-driven test and what a call on its machine gives back:
the `Controls` primitives (the agent's channel, the console, power, QMP), a command's
`CommandResult`, the `Console` a test reads and types on, and `MachineError`, the failure
of any call (host/driven_machine.py and host/verbs.py build the verbs on them).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Protocol

import attrs

from harness.deadline import Deadline

RUN_TIMEOUT = 60.0  # s, with KVM, for one command
BOOT_TIMEOUT = 120.0  # s, with KVM, for a boot to answer


class MachineError(AssertionError):
    """A call on the machine did not do what it should: the step fails, saying why. An
    AssertionError, so that pytest shows it as a failed step."""


class CommandTimedOut(MachineError):
    """A command still ran at its timeout: the guest killed it (status 124)."""


class Controls(Protocol):
    """What a backend's machine offers a host-driven test, in primitives."""

    console_log: Path

    def send(self, data: bytes) -> None:
        """Write to the control agent's channel."""

    def receive(self, timeout: float) -> bytes:
        """What the agent's channel carried since, waiting up to `timeout` s for something."""

    def send_console(self, data: bytes) -> None:
        """Type on the serial console."""

    def power_off(self) -> None:
        """Cut the power: no shutdown, the disk kept as it is."""

    def power_on(self) -> None:
        """Power on again: the machine boots from its disk."""

    def gone(self) -> str | None:
        """Why the machine can no longer be driven (it stopped by itself), or None."""

    def qmp(self, command: str, arguments: dict[str, Any]) -> Any:
        """A QMP command's answer (VMs); raises MachineError elsewhere."""


@attrs.frozen
class CommandResult:
    command: str
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout as text, without its last newline."""
        return self.stdout.decode(errors="replace").removesuffix("\n")

    def __str__(self) -> str:
        out = self.stdout.decode(errors="replace").strip()
        err = self.stderr.decode(errors="replace").strip()
        return f"'{self.command}' exited with status {self.status}; stdout: {out!r}; stderr: {err!r}"


class Console:
    """The serial console as pexpect shows one: `expect` a pattern in what the machine
    printed (every boot's, from the start of the test on; each match moves past itself),
    `sendline` to type."""

    def __init__(self, controls: Controls, factor: float) -> None:
        self._controls = controls
        self._factor = factor
        self._offset = 0
        self.before = ""  # what came between the previous match and the last one
        self.after = ""  # the last match

    def expect(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = Deadline.after(timeout * self._factor)
        while True:
            text = self._unread()
            match = regex.search(text)
            if match:
                self.before, self.after = text[: match.start()], match.group(0)
                self._offset += len(text[: match.end()].encode(errors="surrogateescape"))
                return match
            gone = self._controls.gone()
            if gone or deadline.passed():
                tail = "\n".join(text.splitlines()[-5:])
                why = gone or f"not within {timeout * self._factor:.0f} s"
                raise MachineError(f"console.expect({pattern!r}): {why}; the console's last lines:\n{tail}")
            time.sleep(0.1)

    def sendline(self, line: str = "") -> None:
        self._controls.send_console(line.encode() + b"\n")

    def send(self, text: str) -> None:
        self._controls.send_console(text.encode())

    def _unread(self) -> str:
        # A VM's controls give the console with each boot's first kernel lines (those its
        # virtio console missed: backends/qemu/early_console.py); the others, the file.
        whole = getattr(self._controls, "console_text", None)
        try:
            if whole is not None:
                return bytes(whole()[self._offset :]).decode(errors="surrogateescape")
            with self._controls.console_log.open("rb") as f:
                f.seek(self._offset)
                return f.read().decode(errors="surrogateescape")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 5) -> str:
        """The console's last lines, for error messages."""
        try:
            data = self._controls.console_log.read_bytes()[-4096:]
        except FileNotFoundError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
