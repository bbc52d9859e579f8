"""The boot timeline as an SVG Gantt chart for the HTML report, as `systemd-analyze plot`
draws it: the boot phases on top, then the units that took longest."""

from __future__ import annotations

import html

from harness.verdict.timeline import Timeline

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
        rows.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end">{label} '
            f"({(stop - start) / 1e6:.1f} s)</text>"
            f'<rect class="phase phase-{label}" x="{x(start):.1f}" y="{y + 2}" '
            f'width="{max((stop - start) * scale, 1):.1f}" height="{ROW - 4}"/>'
        )
    top = len(phases) * ROW + ROW // 2
    for i, u in enumerate(shown):
        y = top + i * ROW
        stop = u.active_us or end
        took = f"{(stop - u.start_us) / 1e6:.2f} s" if u.active_us else "never active"
        cls = "unit test-unit" if u.name == highlight else ("unit" if u.active_us else "unit inactive")
        label = u.name if len(u.name) <= 42 else "\u2026" + u.name[-41:]  # device units run long
        rows.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect class="{cls}" x="{x(u.start_us):.1f}" y="{y + 2}" '
            f'width="{max((stop - u.start_us) * scale, 1):.1f}" height="{ROW - 4}">'
            f"<title>{html.escape(u.name)}: started at {u.start_us / 1e6:.2f} s, {took}</title></rect>"
        )
    height = top + len(shown) * ROW + 24
    ticks = []
    step = _tick_step(end / 1e6)
    second = 0.0
    while second * 1e6 <= end:
        tx = x(int(second * 1e6))
        ticks.append(
            f'<line class="tick" x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="{height - 18}"/>'
            f'<text x="{tx:.1f}" y="{height - 4}" text-anchor="middle">{second:g} s</text>'
        )
        second += step
    return (
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{LABEL_WIDTH + CHART_WIDTH + 20}" '
        f'height="{height}" role="img" aria-label="boot timeline">{"".join(ticks)}{"".join(rows)}</svg>'
    )


def _tick_step(seconds: float) -> float:
    for step in (1, 2, 5, 10, 20, 30, 60, 120, 300):
        if seconds / step <= 12:
            return step
    return 600
