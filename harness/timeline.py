"""The guest's boot timeline: what `systemd-analyze plot` shows, drawn by the host.

The guest sends `systemctl show` output for the manager and every unit (gzipped,
base64, one X_HARNESS_TIMELINE= line); this module turns it into phases and unit bars,
and those into an SVG chart for the HTML report.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import html

import attrs


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
    """The guest's `systemctl show` text from its X_HARNESS_TIMELINE= value."""
    if not value:
        return None
    try:
        return gzip.decompress(base64.b64decode(value, validate=False)).decode(errors="replace")
    except (binascii.Error, OSError, EOFError, ValueError):
        return None  # a line garbled on a serial console: no chart, not an error


def merge_timelines(boot: str, test: str) -> str:
    """A resumed test's timeline: the snapshot boot's units, then what the test sent (its
    manager properties, taken when it ended, and its own unit)."""
    boot_blocks = [b for b in boot.split("\n\n") if b.strip()]
    test_blocks = [b for b in test.split("\n\n") if b.strip()]
    if not boot_blocks or not test_blocks:
        return test or boot
    return "\n\n".join([test_blocks[0], *boot_blocks[1:], *test_blocks[1:]]) + "\n"


def _number(props: dict[str, str], key: str) -> int:
    value = props.get(key, "")
    return int(value) if value.isdigit() else 0


def parse_systemctl_show(text: str) -> Timeline | None:
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in text.split("\n\n")]
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


ROW = 16
LABEL_WIDTH = 300
CHART_WIDTH = 700


def timeline_svg(t: Timeline, highlight: str = "", max_units: int = 60) -> str:
    """An SVG Gantt chart: the boot phases on top, then the units that took longest
    (and `highlight`, the test unit), in start order."""
    slowest = sorted(t.units, key=lambda u: (u.active_us or t.end_us) - u.start_us, reverse=True)[:max_units]
    shown = sorted({*slowest, *(u for u in t.units if u.name == highlight)}, key=lambda u: u.start_us)
    end = max(t.end_us, 1)
    scale = CHART_WIDTH / end

    def x(us: int) -> float:
        return LABEL_WIDTH + us * scale

    rows = []
    phases = [("kernel", 0, t.initrd_us or t.userspace_us)]
    if t.initrd_us:
        phases.append(("initrd", t.initrd_us, t.userspace_us))
    phases.append(("system", t.userspace_us, end))
    for i, (label, start, stop) in enumerate(phases):
        y = i * ROW
        rows.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end">{label} '
                    f'({(stop - start) / 1e6:.1f} s)</text>'
                    f'<rect class="phase phase-{label}" x="{x(start):.1f}" y="{y + 2}" '
                    f'width="{max((stop - start) * scale, 1):.1f}" height="{ROW - 4}"/>')
    top = len(phases) * ROW + ROW // 2
    for i, u in enumerate(shown):
        y = top + i * ROW
        stop = u.active_us or end
        took = f"{(stop - u.start_us) / 1e6:.2f} s" if u.active_us else "never active"
        cls = "unit test-unit" if u.name == highlight else ("unit" if u.active_us else "unit inactive")
        label = u.name if len(u.name) <= 42 else "\u2026" + u.name[-41:]  # device units run long
        rows.append(f'<text x="{LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end">{html.escape(label)}</text>'
                    f'<rect class="{cls}" x="{x(u.start_us):.1f}" y="{y + 2}" '
                    f'width="{max((stop - u.start_us) * scale, 1):.1f}" height="{ROW - 4}">'
                    f'<title>{html.escape(u.name)}: started at {u.start_us / 1e6:.2f} s, {took}</title></rect>')
    height = top + len(shown) * ROW + 24
    ticks = []
    step = _tick_step(end / 1e6)
    second = 0.0
    while second * 1e6 <= end:
        tx = x(int(second * 1e6))
        ticks.append(f'<line class="tick" x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="{height - 18}"/>'
                     f'<text x="{tx:.1f}" y="{height - 4}" text-anchor="middle">{second:g} s</text>')
        second += step
    return (f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + CHART_WIDTH + 20}" '
            f'height="{height}" role="img" aria-label="boot timeline">{"".join(ticks)}{"".join(rows)}</svg>')


def _tick_step(seconds: float) -> float:
    for step in (1, 2, 5, 10, 20, 30, 60, 120, 300):
        if seconds / step <= 12:
            return step
    return 600
