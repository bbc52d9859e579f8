"""The verbs a test author reaches for beyond `run`: the NixOS test driver's names and
meanings (`succeed`, `fail`, `wait_for_unit`, `wait_until_succeeds`, `wait_for_open_port`,
`wait_for_console_text`, `send_key`, ...), built on the machine's commands, console and
QMP, so they work on every backend that drives host tests (QMP ones on VMs only).

Every wait polls about once a second until its timeout (seconds with KVM, multiplied
like the test's own) and then fails with a `MachineError` naming the call and what it
saw last; `wait_for_unit` fails at once when the unit failed, or when it is inactive with
nothing queued to start it: it would never come up.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.deadline import Deadline
from harness.host.controls import RUN_TIMEOUT, CommandResult, CommandTimedOut, Console, MachineError

WAIT_TIMEOUT = 120.0  # s, with KVM: how long a wait_* verb waits by default
POLL_INTERVAL = 1.0  # s between two tries of a wait_* verb


class Verbs:
    """Mixed into DrivenMachine, which provides `run`, `qmp`, `console` and `_factor`."""

    console: Console
    _factor: float

    def run(self, command: str, timeout: float = RUN_TIMEOUT) -> CommandResult:
        raise NotImplementedError

    def qmp(self, command: str, **arguments: Any) -> Any:
        raise NotImplementedError

    # -- commands ------------------------------------------------------------------------

    def succeed(self, command: str, timeout: float = RUN_TIMEOUT) -> str:
        """Run `command`; its stdout as text, or a MachineError unless it exits 0."""
        result = self.run(command, timeout)
        if result.status != 0:
            raise MachineError(f"succeed: {result}")
        return result.text

    def fail(self, command: str, timeout: float = RUN_TIMEOUT) -> str:
        """Run `command`; its stdout as text, or a MachineError if it exits 0."""
        result = self.run(command, timeout)
        if result.status == 0:
            raise MachineError(f"fail: {result}, and it should have failed")
        return result.text

    def systemctl(self, arguments: str, timeout: float = RUN_TIMEOUT) -> CommandResult:
        """`systemctl ARGUMENTS` in the guest (`machine.systemctl("restart foo")`)."""
        return self.run(f"systemctl {arguments}", timeout)

    # -- waits ---------------------------------------------------------------------------

    def wait_until_succeeds(self, command: str, timeout: float = WAIT_TIMEOUT) -> str:
        """Run `command` until it exits 0; its stdout as text."""
        return self._retry(
            f"wait_until_succeeds({command!r})", command, timeout, lambda r: r.status == 0
        ).text

    def wait_until_fails(self, command: str, timeout: float = WAIT_TIMEOUT) -> str:
        """Run `command` until it exits other than 0; its stdout as text."""
        return self._retry(f"wait_until_fails({command!r})", command, timeout, lambda r: r.status != 0).text

    def wait_for_file(self, path: str, timeout: float = WAIT_TIMEOUT) -> None:
        """Return once `path` exists in the guest."""
        self._retry(
            f"wait_for_file({path!r})", f"test -e {shlex.quote(path)}", timeout, lambda r: r.status == 0
        )

    def wait_for_open_port(self, port: int, timeout: float = WAIT_TIMEOUT) -> None:
        """Return once a TCP socket listens on `port` (any address, IPv4 or IPv6). Read from
        /proc/net, so the image needs no ss, netcat or bash."""
        if not 0 < port < 65536:
            raise MachineError(f"wait_for_open_port({port}): not a TCP port (1-65535)")
        # st 0A is LISTEN; the local port is the hex after the address's colon.
        listening = f"grep -qiE '^ *[0-9]+: [0-9A-F]+:{port:04X} [0-9A-F]+:[0-9A-F]+ 0A ' /proc/net/tcp /proc/net/tcp6"
        self._retry(f"wait_for_open_port({port})", listening, timeout, lambda r: r.status == 0)

    def wait_for_unit(self, unit: str, timeout: float = WAIT_TIMEOUT) -> None:
        """Return once `unit` is active; fail at once when it failed, or when it is inactive
        and no job is queued for it."""
        call = f"wait_for_unit({unit!r})"
        # One question, names and aliases resolved: the state, and the job queued, if any
        # ("Job=" names it by number).
        show = f"systemctl show --property=ActiveState --property=Job -- {shlex.quote(unit)}"

        def settled(result: CommandResult) -> bool:
            values = dict(line.partition("=")[::2] for line in result.text.splitlines())
            state, queued = values.get("ActiveState", ""), values.get("Job", "").strip().isdigit()
            if state == "active":
                return True
            if state == "failed":
                raise MachineError(f"{call}: the unit failed:\n{self._status(unit)}")
            if state == "inactive" and not queued:
                raise MachineError(
                    f"{call}: the unit is inactive and no job will start it:\n{self._status(unit)}"
                )
            return False

        self._retry(call, show, timeout, settled)

    def wait_for_console_text(self, pattern: str, timeout: float = WAIT_TIMEOUT) -> str:
        """Return the first text the console printed after the previous match that matches
        the regular expression `pattern` (console.expect)."""
        return self.console.expect(pattern, timeout).group(0)

    # -- keyboard and screen (VMs) -------------------------------------------------------

    def send_chars(self, text: str) -> None:
        """Type `text` on the serial console."""
        self.console.send(text)

    def send_key(self, key: str) -> None:
        """Press a key, or a combination (`"ret"`, `"ctrl-alt-delete"`: QEMU's key codes),
        on the VM's keyboard (QMP send-key)."""
        self.qmp("send-key", keys=[{"type": "qcode", "data": k} for k in key.split("-")])

    def screenshot(self, path: Path | str) -> None:
        """The VM's screen into `path` (PPM; QMP screendump), where it has a display."""
        try:
            self.qmp("screendump", filename=str(Path(path).absolute()))
        except MachineError as e:
            raise MachineError(
                f"screenshot({str(path)!r}): {e}; the harness's VMs run with no display "
                "(-display none, no graphics device): the serial console is their screen"
            ) from None

    # -- how they wait -------------------------------------------------------------------

    def _retry(
        self, call: str, command: str, timeout: float, done: Callable[[CommandResult], bool]
    ) -> CommandResult:
        seconds = timeout * self._factor
        deadline = Deadline.after(seconds)
        while True:
            try:
                result = self.run(command, max(1.0, min(RUN_TIMEOUT, deadline.remaining() / self._factor)))
            except CommandTimedOut as e:  # a try that hung is a try that failed
                result = CommandResult(command, 124, b"", str(e).encode())
            if done(result):
                return result
            if deadline.passed():
                raise MachineError(f"{call}: not within {seconds:.0f} s; the last try: {result}")
            time.sleep(min(POLL_INTERVAL, deadline.remaining()))

    def _status(self, unit: str) -> str:
        return self.run(f"systemctl status --no-pager --full -- {shlex.quote(unit)}").text
