"""Watching a running machine: the one policy every backend shares.

A test's machine is followed until one of these happens, in this order of precedence:
it stops by itself (QEMU exits, a lab finishes the job); its console passes the limit
(it is stopped and console.log cut there: a guest stuck printing must not fill the disk);
the guest says its last word (a throw-away VM is ended there, without waiting for its
shutdown); the test unit ends and the machine's grace for winding up passes; the kernel
panics; the boot falls into rescue or emergency mode before the test started (its shell
or sulogin's prompt on the console); the deadline passes. A backend supplies only how to look at its machine
(`Machine.look`), how to stop it, and its `WatchRules`; the flow calls `watch`.

Its limits are `Deadline`s (harness/deadline.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs

from harness.boot.machine import Ending, EndingKind, Machine
from harness.deadline import Deadline

PANIC_MARKERS = (b"Kernel panic - not syncing", b"---[ end Kernel panic")
# What a boot stuck before its test prints: systemd's rescue and emergency shells, and
# sulogin's prompt (util-linux, older and newer wording; a locked root account). The test
# unit will never start: waiting for the timeout would only cost its whole length.
MAINTENANCE_MARKERS = (
    b"You are in rescue mode",
    b"You are in emergency mode",
    b"Enter root password for system maintenance",
    b"Give root password for maintenance",
    b"Cannot open access to console, the root account is locked",
)


# Seconds a boot at a maintenance prompt is given for the harness's guard unit to report
# it (which mode, and how the test unit stood) before the console's word is taken.
MAINTENANCE_GRACE = 5.0


def marked_line(console: bytes, markers: tuple[bytes, ...]) -> str | None:
    """The console's first line from one of `markers` on, if the text shows one."""
    for marker in markers:
        at = console.find(marker)
        if at >= 0:
            return console[at:].split(b"\n")[0].decode(errors="replace").strip()
    return None


def panic_line(console: bytes) -> str | None:
    """The kernel's panic line, if the console text shows one."""
    return marked_line(console, PANIC_MARKERS)


@attrs.define
class ConsoleScan:
    """Finds a line of `markers` in a console read in pieces; a marker cut between two
    pieces is found too (the end of the last piece is kept)."""

    markers: tuple[bytes, ...]
    tail: bytes = b""
    found: str | None = None

    def feed(self, new: bytes) -> str | None:
        if self.found is None and new:
            text = self.tail + new
            self.tail = text[-256:]
            self.found = marked_line(text, self.markers)
        return self.found


def maintenance_mode(line: str) -> str:
    """What a maintenance line says the boot fell into."""
    for mode in ("rescue mode", "emergency mode"):
        if mode in line:
            return mode
    return f"rescue or emergency mode ({line!r})"


def cut_log(path: Path, limit: int) -> None:
    """Cut a log the machine no longer writes to `limit` bytes, and say so at its end."""
    with path.open("r+b") as f:
        f.truncate(limit)
        f.seek(0, 2)
        f.write(f"\n[harness: the log is cut here, at {limit // 2**20} MB; the guest wrote more]\n".encode())


def watch(machine: Machine, timeout: float | None, console_limit: int) -> Ending:
    """Follow `machine` until it ends (see the module's docstring); `timeout` s counted
    from the first look at which the test's time runs (None: no limit)."""
    rules = machine.watch_rules
    scan = ConsoleScan(PANIC_MARKERS)
    # A person at the console (no timeout: meson test -i) may want the rescue shell.
    stuck = ConsoleScan(MAINTENANCE_MARKERS if timeout is not None else ())
    deadline: Deadline | None = None
    winding_up: Deadline | None = None  # from the test unit's end
    at_prompt: Deadline | None = None  # from a maintenance prompt: the guest's guard may say more
    while True:
        look = machine.look()
        if look.stopped is not None:
            return look.stopped
        if look.written > console_limit:
            return stop_flood(machine, console_limit)
        panic = scan.feed(look.console)
        maintenance = stuck.feed(look.console)
        if rules.end_at_last_word and look.report.last_word_came:
            return Ending(
                EndingKind.EXITED, detail=f"the guest reported everything; {machine.display_name} was ended"
            )
        if deadline is None and look.started:
            deadline = Deadline.after(timeout)
        if look.report.test_ended:
            # The guest's word is the verdict now: no panic or timeout can change it.
            winding_up = winding_up or Deadline.after(rules.finish_grace)
            if winding_up.passed() or (deadline is not None and deadline.passed()):
                return Ending(EndingKind.EXITED, 0)
        elif panic:
            return Ending(EndingKind.PANIC, detail=panic)
        elif maintenance and not look.report.test_started:
            at_prompt = at_prompt or Deadline.after(MAINTENANCE_GRACE)
            if at_prompt.passed():
                return Ending(EndingKind.MAINTENANCE, detail=maintenance_mode(maintenance))
        elif deadline is not None and deadline.passed():
            return Ending(EndingKind.TIMEOUT)
        time.sleep(rules.poll)


def power_off_after(machine: Machine, ending: Ending) -> None:
    """A machine that did not stop by itself is powered off once watched: asked nicely
    at a timeout (its journal may still be flushed), forced after a panic or a flood."""
    if ending.kind != EndingKind.EXITED:
        machine.power_off(orderly=ending.kind == EndingKind.TIMEOUT)


def stop_flood(machine: Machine, console_limit: int) -> Ending:
    """Stop a machine whose guest writes more to its console than a log may hold, and
    cut the log there."""
    machine.power_off(orderly=False)
    cut_log(machine.console_log, console_limit)
    return Ending(
        EndingKind.CONSOLE_FLOOD,
        detail=f"the guest wrote more than {console_limit // 2**20} MB to its console "
        f"(HARNESS_CONSOLE_LIMIT_MB); {machine.display_name} was stopped and console.log cut there,",
    )
