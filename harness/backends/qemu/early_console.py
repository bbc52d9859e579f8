"""The start of every boot in console.log, on a direct kernel boot too.

There the console is the virtio console, hvc0: it costs a fraction of an emulated UART
under TCG, but the kernel registers it (`console=hvc0`) long before virtio_console
backs it, and prints into the void until then: the first seconds of every boot (the
`Linux version` line, the command line, a driver that fails) never reached console.log.
So the kernel also prints to the machine's UART, into a file of its own (`console=ttyS0`
ahead of `console=hvc0`: /dev/console stays hvc0, and only the kernel's own lines cross
the slow UART), and when the VM is gone, each boot's lines that hvc0 missed are put back
in front of that boot's first line on hvc0. A boot that died before hvc0 came up leaves
its UART lines at the end, under a note.
"""

from __future__ import annotations

import re
from pathlib import Path

UART_LIMIT = 8 * 2**20  # bytes of the UART's file read, at most
CUT_MARK = b"[harness: the log is cut here"  # boot/watch.py's note at the end of a cut log
EARLY_FILE = "early-console.log"  # in the VM's private directory: the UART's whole output
FIRST_LINE = b"Linux version "  # the kernel's first line: a boot begins there
RESUMED_MARK = b"[harness: the booted snapshot was saved here"  # snapshot.resumed_vm writes it
NOISE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _key(line: bytes) -> bytes:
    return NOISE.sub(b"", line).strip()


def boots(uart: bytes) -> list[list[bytes]]:
    """The UART's lines, a list per boot (each from its `Linux version` line)."""
    found: list[list[bytes]] = []
    for line in uart.splitlines(keepends=True):
        if FIRST_LINE in line or not found:
            found.append([])
        found[-1].append(line.replace(b"\r\n", b"\n"))  # a UART's line ends, as hvc0's
    return [b for b in found if any(FIRST_LINE in line for line in b)]


def merged(console: bytes, uart: bytes, note: bool = True) -> bytes:
    """`console` with each boot's lines that only the UART has put in front of the boot's
    first line that both have; the lines of a boot that has not reached hvc0 at the end
    (under a note, unless `note` is off: a live view, which only grows as the boot goes on)."""
    lines = console.splitlines(keepends=True)
    where: dict[bytes, list[int]] = {}
    for i, line in enumerate(lines):
        where.setdefault(_key(line), []).append(i)
    inserts: dict[int, list[bytes]] = {}
    lost: list[bytes] = []
    # Where in console.log the next boot's lines may be: after the boot a resumed VM's
    # console.log begins with (its snapshot's, whole already), where the VM's own begin.
    marks = [i for i, line in enumerate(lines) if line.startswith(RESUMED_MARK)]
    start = marks[-1] + 1 if marks else 0
    for boot in boots(uart):
        at = next(
            (
                (n, i)
                for n, line in enumerate(boot)
                if _key(line)
                for i in where.get(_key(line), [])
                if i >= start
            ),
            None,
        )
        if at is None:
            lost += boot
        else:
            inserts[at[1]] = boot[: at[0]]
            start = at[1] + 1
    out: list[bytes] = []
    for i, line in enumerate(lines):
        out += inserts.get(i, [])
        out.append(line)
    if lost:
        if out and not out[-1].endswith(b"\n"):
            out.append(b"\n")
        if note:
            out.append(b"[harness: what the kernel printed on the UART before the console came up]\n")
        out += lost
    return b"".join(out)


def merge_early_console(console_log: Path, uart_log: Path) -> None:
    """Rewrite console.log with the early lines of `uart_log`, if it has any. A log cut
    for a flood stays as it was cut (its size is the limit's), and of a UART flooded by
    the kernel before hvc0 came up only the first UART_LIMIT bytes are read."""
    try:
        with uart_log.open("rb") as f:
            uart = f.read(UART_LIMIT)
    except FileNotFoundError:
        return
    if FIRST_LINE not in uart:
        return
    try:
        console = console_log.read_bytes()
    except FileNotFoundError:
        console = b""
    if CUT_MARK in console[-512:]:
        return
    partial = console_log.with_suffix(".partial")
    partial.write_bytes(merged(console, uart))
    partial.replace(console_log)
