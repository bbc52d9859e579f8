"""What every way of running a test provides: a Backend boots a plan into a Machine; the
core watches the machine (harness/boot/watch.py), powers it off, and takes the console log
and what the guest reported.

The QEMU backend implements it for VMs, the autokit and LAVA backends for boards, so the
wrapper's flow (declare -> plan -> boot -> collect -> classify -> report) is one.
"""

from __future__ import annotations

import enum
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import attrs

from harness.boot.plan import BootPath, BootPlan
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware
from harness.guest.reporting import ReportChannel
from harness.host.controls import Controls
from harness.image.parts import Image
from harness.settings import Settings
from harness.verdict.notify import GuestReport


class EndingKind(enum.StrEnum):
    EXITED = "exited"  # the machine stopped by itself, or the guest said all it will say
    TIMEOUT = "timeout"
    PANIC = "panic"
    MAINTENANCE = "maintenance"  # the boot fell into rescue or emergency mode: the test never starts
    CONSOLE_FLOOD = "console flood"  # stopped: the guest wrote more than the console limit
    INFRASTRUCTURE = "infrastructure"  # what runs the machine failed (a lab's job, not the test)


@attrs.frozen
class Ending:
    """How a run stopped, before anyone interprets what the guest said."""

    kind: EndingKind
    machine_status: int | None = None  # e.g. QEMU's exit status; negative: killed by that signal
    detail: str = ""


@attrs.frozen
class Look:
    """What one look at a running machine showed the watch."""

    report: GuestReport  # everything the guest said so far
    console: bytes = b""  # console output new since the last look
    written: int = 0  # console bytes so far, those past the limit included
    stopped: Ending | None = None  # the machine ended by itself (QEMU exited, a job finished)
    started: bool = True  # the test's time runs (a lab's job: from the device's first line)


@attrs.frozen
class WatchRules:
    """How a machine is watched: the policy is the core's, these are its settings."""

    poll: float = 0.2  # s between two looks
    # The guest's last word (Notify.DONE) ends the watch: a machine thrown away after the
    # test need not be waited for until it shuts down.
    end_at_last_word: bool = True
    # Once the test unit ended: s the machine may still take to stop by itself or say its
    # last word, after which the guest's word is the verdict. None: up to the deadline.
    finish_grace: float | None = None


@attrs.frozen
class LogFile:
    """A file a backend writes into the test's log directory."""

    name: str
    text: bool = True  # secrets are masked in text files (not in a PNG or an archive)


class Machine(Protocol):
    # Read-only for the core, so a machine may hold them or work them out (the fake one's).
    @property
    def boot_path(self) -> BootPath:
        """How it really came up (a failed snapshot falls back to cold)."""

    @property
    def boot_timeline(self) -> str | None:
        """The boot's timeline when it happened elsewhere (a snapshot's)."""

    @property
    def job_url(self) -> str:
        """Where a lab shows the run (a LAVA job's page); empty on this host."""

    @property
    def console_log(self) -> Path:
        """console.log in the test's log directory."""

    watch_rules: WatchRules
    display_name: str  # how a message names it: "the VM", "the board", "the LAVA job"

    def look(self) -> Look:
        """Read what is new on the console and the report channel; never blocks for long."""

    def power_off(self, orderly: bool) -> None:
        """Stop the machine: asked nicely first when `orderly`, forced when that fails."""

    def collect(self) -> GuestReport:
        """What the guest reported; call once the machine has stopped."""

    def failure_detail(self) -> str:
        """What the machine itself said about a crash (e.g. QEMU's stderr), for errors."""

    def controls(self) -> Controls:
        """What a host-driven test drives it with (backends whose `drives_host_tests`)."""


class Backend(Protocol):
    name: str
    report_channel: ReportChannel  # where the guest's units report
    can_resume: bool  # offers the fast path (a booted snapshot)
    log_files: tuple[LogFile, ...]  # what its machines write beside console.log
    drives_host_tests: bool  # its machines can be driven by a host-driven test (Machine.controls)
    control_device: str  # where the guest's control agent reads the host's commands

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        """The declared `requires` features this backend's machine lacks."""

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        """How the machine will boot the image, given what the test declared."""

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, settings: Settings) -> str | None:
        """Why this test must boot cold here, or None when it may resume a saved boot."""

    def boot(self, plan: BootPlan, log_dir: Path) -> AbstractContextManager[Machine]:
        """Start the machine; on leaving the context nothing it started is left running."""
