"""What every way of running a test provides: boot a plan, wait for the end, power off,
and hand over the console log and what the guest reported.

The QEMU backend implements it for VMs; a hardware backend implements the same for
boards, so the wrapper's flow (declare -> boot -> collect -> classify -> report) is one.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import attrs

from harness.accel import Acceleration
from harness.declaration import Credential, Firmware, TestDeclaration
from harness.guest.units import ReportChannel
from harness.image import Image
from harness.notify import GuestReport


class BootPath(enum.StrEnum):
    """How a test's machine came up: booted from scratch, or resumed from a saved boot."""

    COLD = "cold"
    SNAPSHOT = "snapshot"


class EndingKind(enum.StrEnum):
    EXITED = "exited"  # the machine stopped by itself
    TIMEOUT = "timeout"
    PANIC = "panic"
    CONSOLE_FLOOD = "console flood"  # stopped: the guest wrote more than the console limit
    INFRASTRUCTURE = "infrastructure"  # what runs the machine failed (a lab's job, not the test)


# What a console log may hold before the machine is stopped (HARNESS_CONSOLE_LIMIT_MB):
# a guest stuck printing in a loop must not fill the disk, nor the report that shows it.
CONSOLE_LIMIT = 64 * 2**20


PANIC_MARKERS = (b"Kernel panic - not syncing", b"---[ end Kernel panic")


def panic_line(console: bytes) -> str | None:
    """The kernel's panic line, if the console text shows one."""
    for marker in PANIC_MARKERS:
        at = console.find(marker)
        if at >= 0:
            return console[at:].split(b"\n")[0].decode(errors="replace").strip()
    return None


def cut_log(path: Path, limit: int) -> None:
    """Cut a log the machine no longer writes to `limit` bytes, and say so at its end."""
    with path.open("r+b") as f:
        f.truncate(limit)
        f.seek(0, 2)
        f.write(f"\n[harness: the log is cut here, at {limit // 2**20} MB; the guest wrote more]\n".encode())


@attrs.frozen
class BootPlan:
    """One boot of one test, independent of what runs it."""

    decl: TestDeclaration
    image: Image
    firmware: Firmware = attrs.field(converter=Firmware)  # resolved: never AUTO
    cmdline: tuple[str, ...]  # what the harness and the test add to the kernel command line
    credentials: tuple[Credential, ...]
    accel: Acceleration
    timeout: float | None  # None: wait for as long as the person at the console likes
    interactive: bool
    boot: BootPath = BootPath.COLD  # what the plan asks for; the machine says what it did
    cold_reason: str = ""  # why the test cannot resume the booted snapshot
    snapshot_dir: Path | None = None  # where booted snapshots are kept
    attempt: str = ""  # the `meson test` run: a failed snapshot boot is not retried in it
    whole_journal: bool = False  # the guest sends its whole journal even when the test passed
    console_limit: int = CONSOLE_LIMIT  # bytes of console output before the machine is stopped


@attrs.frozen
class Ending:
    """How a run stopped, before anyone interprets what the guest said."""

    kind: EndingKind
    machine_status: int | None = None  # e.g. QEMU's exit status; negative: killed by that signal
    detail: str = ""


class Machine(Protocol):
    boot_path: BootPath  # how it really came up (a failed snapshot falls back to cold)
    boot_timeline: str | None  # the boot's timeline when it happened elsewhere (a snapshot's)
    job_url: str  # where a lab shows the run (a LAVA job's page); empty on this host

    def wait(self, timeout: float | None) -> Ending:
        """Block until the machine stops by itself, panics, or `timeout` seconds pass."""

    def power_off(self, orderly: bool) -> None:
        """Stop the machine: asked nicely first when `orderly`, forced when that fails."""

    def collect(self) -> GuestReport:
        """What the guest reported; call once the machine has stopped."""

    def failure_detail(self) -> str:
        """What the machine itself said about a crash (e.g. QEMU's stderr), for errors."""


class Backend(Protocol):
    name: str
    report_channel: ReportChannel  # where the guest's units report
    can_resume: bool  # offers the fast path (a booted snapshot)

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        """The declared `requires` features this backend's machine lacks."""

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        """How the machine will boot the image, given what the test declared."""

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, env: dict[str, str]) -> str | None:
        """Why this test must boot cold here, or None when it may resume a saved boot."""

    def boot(self, plan: BootPlan, log_dir: Path) -> AbstractContextManager[Machine]:
        """Start the machine; on leaving the context nothing it started is left running."""
