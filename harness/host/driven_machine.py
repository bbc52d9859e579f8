"""The machine a host-driven test holds: `DrivenMachine`, the `machine` fixture of a host
test's pytest file, the same on every backend that can be driven.

It runs shell commands in the guest (`run`, `check`), moves files both ways (`put`,
`get`), reboots it from inside (`reboot`), cuts and restores its power from outside
(`power_off`, `power_on`, `power_cycle`), waits for a boot (`wait_booted`, `boot`), reads
and types on its console (`console.expect`, `console.sendline`) and, on a VM, passes QMP
commands through (`qmp`). Commands travel to the guest's control agent
(guest/control.sh) through a backend's `Controls`, which need no network or ssh in the
image: a line protocol, base64 inside, so binary output and any size survive.

Every call has a timeout (in seconds with KVM, multiplied like the test's own) and fails
with a `MachineError` naming the call, the command and the console's last lines: a guest
that stops answering fails the step, it never hangs the test.
"""

from __future__ import annotations

import base64
import math
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from harness.deadline import Deadline
from harness.host.controls import (
    BOOT_TIMEOUT,
    RUN_TIMEOUT,
    CommandResult,
    CommandTimedOut,
    Console,
    Controls,
    MachineError,
)
from harness.host.verbs import Verbs

# s, with KVM: how long a boot may stay silent before the host asks the agent for its boot
# ID. A lost announcement (seen once under heavy load: the boot's mark on the console, no
# H line on the channel) then costs this long, not the whole boot timeout.
BOOT_ASK_AFTER = 15.0
BOOT_ID_COMMAND = "cat /proc/sys/kernel/random/boot_id"


class DrivenMachine(Verbs):
    """The machine of a host-driven test (the `machine` fixture). Timeouts are seconds
    with KVM; under emulation they are multiplied by the test's timeout factor."""

    def __init__(self, controls: Controls, timeout_factor: float = 1, backend: str = "qemu") -> None:
        self._controls = controls
        self.backend = backend  # the machine's backend, for a step only some offer (qmp: "qemu")
        self._factor = timeout_factor
        self._pending = b""
        self._replies: dict[int, tuple[int, bytes, bytes]] = {}
        self._boots: list[str] = []  # the boot IDs, in order
        self._awaited = 1  # the number of the boot the next command waits for
        self._powered = True
        self._next_id = 1
        self._boot_questions: set[int] = set()  # request IDs that ask for the boot ID
        self.answered = True  # False once a call went unanswered: the guest may be hung
        self.console = Console(controls, timeout_factor)

    # -- boots ---------------------------------------------------------------------------

    @property
    def boot(self) -> int:
        """The number of the current boot: 1 for the first, one more after every reboot
        or power cycle that came up."""
        return len(self._boots)

    @property
    def boot_id(self) -> str:
        return self._boots[-1] if self._boots else ""

    def wait_booted(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Return when the awaited boot is up and its control agent answers."""
        if not self._powered:
            raise MachineError("wait_booted(): the machine is powered off; power_on() first")
        seconds = timeout * self._factor
        deadline = Deadline.after(seconds)
        while True:
            silence = deadline.remaining(at_most=BOOT_ASK_AFTER * self._factor)
            if self._read_until(
                lambda: len(self._boots) >= self._awaited, max(0.0, silence), "wait_booted()"
            ):
                return
            if deadline.passed():
                self._unanswered(
                    "wait_booted()", f"boot {self._awaited} did not come up within {seconds:.0f} s"
                )
            self._ask_boot_id()

    def _ask_boot_id(self) -> None:
        """Ask whichever agent listens for its boot: the answer counts as its announcement
        (an old boot's answer names a boot already counted)."""
        request_id = self._next_id
        self._next_id += 1
        self._boot_questions.add(request_id)
        script = base64.b64encode(BOOT_ID_COMMAND.encode()).decode()
        self._controls.send(f"C {request_id} 10 {script}\n".encode())

    def reboot(self, timeout: float = BOOT_TIMEOUT) -> None:
        """A clean reboot from inside; returns when the next boot answers. The shutdown
        stops the control agent too, at times before it has answered the command: then
        the next boot's hello is the answer."""
        self.wait_booted()
        before = self.boot
        result = self._run("systemctl --no-block reboot", timeout, lambda: self.boot > before)
        if result is not None and result.status != 0:
            raise MachineError(f"reboot(): {result}")
        self._awaited = before + 1
        self.wait_booted(timeout)

    def power_off(self) -> None:
        """Cut the power, as pulling the plug: no shutdown, nothing flushed."""
        self._read_channel(0)  # a boot that came up is counted before it is cut
        self._controls.power_off()
        self._powered = False
        self._pending = b""  # half a line of the boot that was cut

    def power_on(self) -> None:
        """Restore the power; the machine boots (wait_booted() waits for it; the next
        command too)."""
        self._awaited = self.boot + 1
        self._controls.power_on()
        self._powered = True

    def power_cycle(self) -> None:
        """Off and on again, hard; returns once the next boot answers."""
        self.power_off()
        self.power_on()
        self.wait_booted()

    # -- commands ------------------------------------------------------------------------

    def run(self, command: str, timeout: float = RUN_TIMEOUT) -> CommandResult:
        """Run a shell command in the guest: its status, stdout and stderr (bytes)."""
        result = self._run(command, timeout)
        assert result is not None
        return result

    def _run(
        self, command: str, timeout: float, instead: Callable[[], bool] = lambda: False
    ) -> CommandResult | None:
        """run(); None when `instead` came true before the answer did."""
        if not self._powered:
            raise MachineError(f"run({command!r}): the machine is powered off; power_on() first")
        self.wait_booted()
        seconds = math.ceil(timeout * self._factor)
        request_id = self._next_id
        self._next_id += 1
        script = base64.b64encode(command.encode()).decode()
        self._controls.send(f"C {request_id} {seconds} {script}\n".encode())
        call = f"run({command!r})"
        # The agent's own limit ends the command first.
        if not self._read_until(lambda: request_id in self._replies or instead(), seconds + 10, call):
            self._unanswered(call, f"the guest did not answer within {seconds} s")
        if request_id not in self._replies:
            return None
        status, out, err = self._replies.pop(request_id)
        if status == 124:
            raise CommandTimedOut(f"run({command!r}): still running after {seconds} s; it was killed")
        return CommandResult(command, status, out, err)

    def check(self, command: str, timeout: float = RUN_TIMEOUT) -> CommandResult:
        """run(), and a MachineError with status, stdout and stderr unless it exits 0."""
        result = self.run(command, timeout)
        if result.status != 0:
            raise MachineError(f"check: {result}")
        return result

    def put(self, host_path: Path | str, guest_path: str, timeout: float = RUN_TIMEOUT) -> None:
        """Copy a host file into the guest (its directory must exist)."""
        data = base64.b64encode(Path(host_path).read_bytes()).decode()
        self.check(f"printf %s {data} | base64 -d >{shlex.quote(guest_path)}", timeout)

    def get(self, guest_path: str, host_path: Path | str, timeout: float = RUN_TIMEOUT) -> None:
        """Copy a guest file to the host."""
        Path(host_path).write_bytes(self.check(f"cat {shlex.quote(guest_path)}", timeout).stdout)

    def qmp(self, command: str, **arguments: Any) -> Any:
        """A QMP command to the VM's QEMU, and its answer (VMs only)."""
        return self._controls.qmp(command, arguments)

    # -- the channel ---------------------------------------------------------------------

    def _read_until(self, done: Callable[[], bool], seconds: float, call: str) -> bool:
        """Read the channel until `done` (True) or `seconds` passed (False); the machine
        stopping is a MachineError naming `call`."""
        deadline = Deadline.after(seconds)
        while not done():
            self._read_channel(deadline.remaining(at_most=1.0))
            if done():
                return True
            self._fail_if_gone(call)
            if deadline.passed():
                return False
        return True

    def _unanswered(self, call: str, failure: str) -> NoReturn:
        self.answered = False
        raise MachineError(f"{call}: {failure}; the console's last lines:\n{self.console.tail()}")

    def _read_channel(self, timeout: float) -> None:
        self._pending += self._controls.receive(timeout)
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            words = line.rstrip(b"\r").split(b" ")
            if words[0] == b"H" and len(words) == 2:
                self._count_boot(words[1].decode(errors="replace"))
            elif words[0] == b"R" and len(words) == 5 and words[1].isdigit() and words[2].isdigit():
                request_id, status = int(words[1]), int(words[2])
                out, err = (base64.b64decode(w, validate=False) for w in words[3:])
                if request_id not in self._boot_questions:
                    self._replies[request_id] = (status, out, err)
                elif status == 0:
                    self._count_boot(out.decode(errors="replace").strip())

    def _count_boot(self, boot_id: str) -> None:
        if boot_id and boot_id not in self._boots:  # a restarted agent announces its boot again
            self._boots.append(boot_id)

    def _fail_if_gone(self, call: str) -> None:
        gone = self._controls.gone()
        if gone:
            raise MachineError(f"{call}: {gone}; the console's last lines:\n{self.console.tail()}")
