"""The guest's boot timeline: what `systemd-analyze plot` shows, drawn by the host.

The guest sends `systemctl show` output for the manager and every unit (gzipped,
base64, one Notify.TIMELINE line); this module turns it into phases and unit bars
(report/timeline_chart.py draws them for the HTML report).
"""

from __future__ import annotations

import base64
import binascii
import gzip

import attrs

# The unit properties `systemd-analyze plot` draws its chart from, plus the manager's boot
# phases. systemd-analyze itself refuses while the boot is unfinished, which it is as
# long as the test unit (the boot's target) runs, so the guest sends the raw properties.
TIMELINE_UNIT_PROPERTIES = (
    "Id",
    "InactiveExitTimestampMonotonic",
    "ActiveEnterTimestampMonotonic",
    "ActiveExitTimestampMonotonic",
    "InactiveEnterTimestampMonotonic",
)
TIMELINE_MANAGER_PROPERTIES = (
    "FirmwareTimestampMonotonic",
    "LoaderTimestampMonotonic",
    "InitRDTimestampMonotonic",
    "UserspaceTimestampMonotonic",
)


@attrs.frozen
class UnitSpan:
    name: str
    start_us: int  # left inactive (began activating), since the kernel started
    active_us: int | None  # became active; None if it never did


@attrs.frozen
class Timeline:
    firmware_us: int  # before the kernel (UEFI boots only)
    loader_us: int
    initrd_us: int | None  # when the initrd started, if there was one
    userspace_us: int  # when the system manager of the real root started
    units: tuple[UnitSpan, ...]
    taken_us: int = 0  # when the guest took the data (the test had just ended)

    @property
    def end_us(self) -> int:
        ends = [u.active_us or u.start_us for u in self.units]
        return max([self.userspace_us, self.taken_us, *ends])


def decode_timeline(value: str | None) -> str | None:
    """The guest's `systemctl show` text from its Notify.TIMELINE value."""
    if not value:
        return None
    try:
        return gzip.decompress(base64.b64decode(value, validate=False)).decode(errors="replace")
    except (binascii.Error, OSError, EOFError, ValueError):
        return None  # a line garbled on a serial console: no chart, not an error


def merge_timelines(boot: str, test: str) -> str:
    """A resumed test's timeline: the snapshot boot's manager and units, then what the test
    sent (its uptime when it ended, which replaces the boot's, and its own unit)."""
    boot_blocks = [b for b in boot.split("\n\n") if b.strip()]
    test_blocks = [b for b in test.split("\n\n") if b.strip()]
    if not boot_blocks or not test_blocks:
        return test or boot
    sent = dict(line.split("=", 1) for line in test_blocks[0].splitlines() if "=" in line)
    kept = [line for line in boot_blocks[0].splitlines() if line.split("=", 1)[0] not in sent]
    manager = "\n".join([*kept, *test_blocks[0].splitlines()])
    return "\n\n".join([manager, *boot_blocks[1:], *test_blocks[1:]]) + "\n"


def _number(props: dict[str, str], key: str) -> int:
    value = props.get(key, "")
    return int(value) if value.isdigit() else 0


def parse_systemctl_show(text: str) -> Timeline | None:
    blocks = [
        dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in text.split("\n\n")
    ]
    blocks = [b for b in blocks if b]
    if not blocks:
        return None
    manager, units = blocks[0], blocks[1:]
    spans = []
    for props in units:
        start = _number(props, "InactiveExitTimestampMonotonic")
        if not props.get("Id") or start == 0:
            continue  # never started in this boot
        active = _number(props, "ActiveEnterTimestampMonotonic")
        spans.append(UnitSpan(props["Id"], start, active if active >= start else None))
    taken = _seconds_as_us(manager.get("UptimeSeconds", ""))
    if taken:  # units carried over from the initrd can have stamps from another clock
        spans = [s for s in spans if s.start_us <= taken]
    spans.sort(key=lambda s: s.start_us)
    initrd = _number(manager, "InitRDTimestampMonotonic")
    return Timeline(
        firmware_us=_number(manager, "FirmwareTimestampMonotonic"),
        loader_us=_number(manager, "LoaderTimestampMonotonic"),
        initrd_us=initrd or None,
        userspace_us=_number(manager, "UserspaceTimestampMonotonic"),
        units=tuple(spans),
        taken_us=taken,
    )


def _seconds_as_us(text: str) -> int:
    try:
        return int(float(text) * 1e6)
    except ValueError:
        return 0
