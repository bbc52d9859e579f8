"""How much longer than declared a test may take here: the timeout factor.

Declared timeouts are written for KVM on an idle host. Under TCG everything runs several
times slower (a fixed base, accel.TCG_TIMEOUT_FACTOR); on a host whose cores are busy with
other work (another CI job, a second test, busy loops in a flake hunt) the VM's vCPU
threads also wait their turn. So the factor is the base times the slowdown measured when the
test starts: how many threads want a core (the kernel's count of runnable tasks, sampled a
few times), against the cores there are. It is bounded (MAX_SLOWDOWN), so that a hang is
still caught, and meson's own timeout allows the bound (`harness accel`).
HARNESS_TIMEOUT_FACTOR, or --timeout-factor, forces it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import attrs

from harness.boot.accel import TCG_TIMEOUT_FACTOR, detect
from harness.settings import Settings

MAX_SLOWDOWN = 3  # the most a busy host stretches a timeout: a hang still ends
SAMPLES = 10  # readings of the runnable count, SAMPLE_INTERVAL apart: 50 ms in all
SAMPLE_INTERVAL = 0.005
PROC_STAT = Path("/proc/stat")


@attrs.frozen
class TimeoutFactor:
    """What a declared timeout is multiplied by, and why (the test's first line, result.json)."""

    value: float
    why: str

    @classmethod
    def forced(cls, value: float, source: str) -> TimeoutFactor:
        return cls(value, f"{source}={value:g}")

    def capped(self, bound: float | None) -> TimeoutFactor:
        """At most `bound`, meson's own timeout's (`harness accel` at meson setup)."""
        if bound is None or self.value <= bound:
            return self
        return TimeoutFactor(bound, f"{self.why}; capped at x{bound:g}, the most meson's own timeout allows")


def other_runnable(
    samples: int = SAMPLES, interval: float = SAMPLE_INTERVAL, stat: Path = PROC_STAT
) -> float:
    """The threads, besides this one, that were running or waiting for a core: the average
    of `procs_running` over a few readings (one reading catches a moment, not a load)."""
    total = 0
    for i in range(samples):
        if i:
            time.sleep(interval)
        total += procs_running(stat.read_text()) - 1  # this process, reading
    return max(0.0, total / samples)


def procs_running(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return 1  # no such line (not Linux's /proc/stat): as if only we ran


def slowdown(others: float, threads: int, cores: int) -> float:
    """How much slower than on an idle host a machine of `threads` busy threads runs beside
    `others` runnable threads on `cores` cores (the scheduler shares the cores evenly):
    1 while there is a core for each, at most MAX_SLOWDOWN, in steps of a quarter."""
    share = (others + threads) / max(cores, 1)
    return min(float(MAX_SLOWDOWN), max(1.0, round(share * 4) / 4))


def measured(base: int, threads: int, kind: str) -> TimeoutFactor:
    """The factor for a machine of `threads` vCPU threads starting now, `base` its
    acceleration's (`kind`)."""
    cores = len(os.sched_getaffinity(0)) or 1  # the cores this process may use, not the host's
    others = other_runnable()
    busy = slowdown(others, threads, cores)
    why = f"{kind} x{base}" if base != 1 else kind
    if busy > 1:
        why += f", busy host x{busy:g}: {others:.1f} other runnable threads on {cores} cores"
    return TimeoutFactor(base * busy, why)


def accel_line(settings: Settings) -> str:
    """`harness accel`: KIND FACTOR BOUND REASON. The glue gives meson's own timeouts the
    BOUND, the most a test's timeout can be stretched by: TCG's on a busy host even where
    this host has KVM (an image of another architecture runs under TCG), or more where
    HARNESS_TIMEOUT_FACTOR asks for it at meson setup."""
    accel = detect(None, settings)
    bound = max(TCG_TIMEOUT_FACTOR * MAX_SLOWDOWN, math.ceil(settings.timeout_factor or 0))
    return f"{accel.kind} {accel.timeout_factor} {bound} {accel.reason}"
