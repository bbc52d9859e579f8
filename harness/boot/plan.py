"""The plan of one boot: everything a machine needs to run a test, and nothing about how a
machine does it.

`plan_boot` decides it once, in the core: firmware (the backend resolves `auto`), the
kernel command line, the test unit (rendered once: a cold boot gets it as a credential,
a resumed VM is handed it), credentials, acceleration, timeout, and the boot path: cold,
or resumed from a saved boot where the backend allows it for this test. Backends read the
plan; none renders the test unit again or reaches back into the flow.
"""

from __future__ import annotations

import enum
import uuid
from pathlib import Path
from typing import Protocol

import attrs

from harness.boot.accel import HOST_CPU, Acceleration, detect, vcpus_now
from harness.boot.timeouts import TimeoutFactor, measured
from harness.declaration.credential import Credential
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import BootMode, Firmware, Storage
from harness.guest.reporting import ReportChannel
from harness.guest.units import (
    IMPORT_CREDENTIAL_SINCE,
    boot_options,
    control_credentials,
    emergency_guard,
    guest_credentials,
    payload_credentials,
    render_test_unit,
    testcase_selection,
)
from harness.image.parts import Image
from harness.settings import SaveJournal, Settings


class PlanningBackend(Protocol):
    """What planning a boot asks of a backend (harness/boot/machine.py's `Backend` has it
    all): defined here so that the plan needs nothing of the machines it plans for."""

    report_channel: ReportChannel
    control_device: str

    def firmware(self, declared: Firmware, image: Image) -> Firmware: ...

    def cold_boot_reason(
        self, decl: TestDeclaration, firmware: Firmware, settings: Settings
    ) -> str | None: ...


# What a console log may hold before the machine is stopped (HARNESS_CONSOLE_LIMIT_MB):
# a guest stuck printing in a loop must not fill the disk, nor the report that shows it.
CONSOLE_LIMIT = Settings.defaults().console_limit_mb * 2**20  # bytes


class BootPath(enum.StrEnum):
    """How a test's machine came up: booted from scratch, or resumed from a saved boot."""

    COLD = "cold"
    SNAPSHOT = "snapshot"


@attrs.frozen
class BootPlan:
    """One boot of one test, independent of what runs it."""

    decl: TestDeclaration
    image: Image
    firmware: Firmware = attrs.field(converter=Firmware)  # resolved: never AUTO
    cmdline: tuple[str, ...]  # what the harness and the test add to the kernel command line
    unit: str  # the test unit, rendered for this boot
    test_credentials: tuple[Credential, ...]  # the test's own, and its subtest library
    credentials: tuple[Credential, ...]  # all a cold boot gets: the unit, helpers, the test's
    accel: Acceleration
    timeout: float | None  # None: wait for as long as the person at the console likes
    interactive: bool
    timeout_factor: float = 1  # what the declared timeout was multiplied by (TCG, a busy host)
    timeout_why: str = ""  # how that factor came about
    boot_path: BootPath = BootPath.COLD  # what the plan asks for; the machine says what it did
    cold_reason: str = ""  # why the test cannot resume the booted snapshot
    snapshot_dir: Path | None = None  # where booted snapshots (and containers' root trees) are kept
    run: str = ""  # the `meson test` run: a failed snapshot boot is not retried in it
    whole_journal: bool = False  # the guest sends its whole journal even when the test passed
    console_limit: int = CONSOLE_LIMIT  # bytes of console output before the machine is stopped
    shell: bool = False  # interactive, booted to the default target: the test unit is not started
    settings: Settings = attrs.field(kw_only=True)  # the run's HARNESS_* switches, for the machine

    @property
    def name(self) -> str:
        return self.decl.name


def machine_shape(firmware: Firmware, storage: Storage, tpm: bool, disks: tuple[int, ...]) -> str:
    """What a booted snapshot's machine has that a test resuming it must have too
    (migration needs the same devices): `<firmware>-<storage>`, then `tpm`, then `disks`
    and the extra disks' sizes in bytes. One snapshot is kept per shape."""
    words = [str(firmware), str(storage)]
    words += ["tpm"] if tpm else []
    words += ["disks", *(str(size) for size in disks)] if disks else []
    return "-".join(words)


def declared_shape(decl: TestDeclaration) -> str:
    """The machine shape `decl` asks for, `auto` firmware taken as `linux` (what it
    resolves to for most images)."""
    firmware = Firmware.LINUX if decl.firmware == Firmware.AUTO else decl.firmware
    return machine_shape(firmware, decl.storage, decl.tpm, decl.disks)


USUAL_SHAPE = machine_shape(Firmware.LINUX, Storage.VOLATILE, False, ())


def resume_blocker(decl: TestDeclaration, settings: Settings) -> str | None:
    """What in a declaration keeps a test from resuming a booted snapshot (one per machine
    shape: firmware, storage, TPM, extra disks; booted with nothing added to the command
    line or to QEMU's); None when nothing does."""
    if settings.cold_boot:
        return "HARNESS_COLD_BOOT=1"
    if decl.boot == BootMode.COLD:
        return "the test declares boot: 'cold'"
    if decl.cmdline:
        return "the test adds to the kernel command line"
    if decl.qemu_args:
        return "the test adds QEMU arguments"
    if decl.rtc:
        return "the test sets the real-time clock (rtc: true)"
    return None


def harness_cmdline(
    decl: TestDeclaration, interactive: bool, shell: bool = False, machine_id: str | None = None
) -> list[str]:
    """What every test's kernel command line gets, ahead of the test's own additions: a
    host-driven test, and a person who asked for a shell, boot the image's default target
    (the test unit is there to start by hand), the others their test unit; a new machine ID
    unless given one (a resumed test keeps its snapshot's)."""
    target = None if decl.host or shell else decl.unit_name
    volatile = decl.storage == Storage.VOLATILE
    return boot_options(target, interactive, volatile, machine_id or uuid.uuid4().hex) + list(decl.cmdline)


def choose_boot_path(
    decl: TestDeclaration,
    image: Image,
    firmware: Firmware,
    backend: PlanningBackend,
    interactive: bool,
    settings: Settings,
) -> tuple[BootPath, str]:
    """Resume a saved boot where the backend allows it for this test; otherwise boot
    cold, and say why."""
    if interactive:
        return BootPath.COLD, "interactive run"
    if image.systemd_version is not None and image.systemd_version < IMPORT_CREDENTIAL_SINCE:
        # A resumed guest finds the test's credentials in /run/credstore, which only
        # ImportCredential= reads.
        return BootPath.COLD, f"the image's systemd {image.systemd_version} has no ImportCredential= (254)"
    why = backend.cold_boot_reason(decl, firmware, settings)
    return (BootPath.COLD, why) if why else (BootPath.SNAPSHOT, "")


def plan_boot(
    decl: TestDeclaration,
    image: Image,
    backend: PlanningBackend,
    interactive: bool,
    timeout_factor: float | None,
    settings: Settings,
    snapshot_dir: Path | None = None,
    run: str = "",
    timeout_bound: float | None = None,
) -> BootPlan:
    on_host_cpu = getattr(backend, "runs_on_host_cpu", False)
    accel = HOST_CPU if on_host_cpu else detect(image.architecture, settings)
    factor = timeout_factor_of(accel, timeout_factor, settings, getattr(backend, "runs_on_boards", False))
    factor = factor.capped(timeout_bound)
    firmware = backend.firmware(decl.firmware, image)
    boot, cold_reason = choose_boot_path(decl, image, firmware, backend, interactive, settings)
    # A sanitizer build (HARNESS_SANITIZERS=1): every process's reports reach the gate.
    whole_journal = settings.save_journal is SaveJournal.ALWAYS or settings.sanitizers
    shell = interactive and settings.shell
    if snapshot_dir is None:
        boot, cold_reason = BootPath.COLD, "no directory for snapshots"
    channel = backend.report_channel
    if decl.host:  # no test unit: the control agent takes the host's commands
        unit = ""
        boot_credentials = (
            *control_credentials(image.systemd_version, backend.control_device),
            *emergency_guard(channel),
        )
    else:
        unit = render_test_unit(
            decl,
            interactive,
            channel,
            whole_journal,
            image.systemd_version,
            testcase_selection(settings),
            shell,
        )
        boot_credentials = tuple(guest_credentials(decl, unit, interactive, channel, shell))
    test_credentials = (*decl.credentials, *payload_credentials(decl))
    return BootPlan(
        decl=decl,
        image=image,
        firmware=firmware,
        cmdline=tuple(harness_cmdline(decl, interactive, shell)),
        unit=unit,
        test_credentials=test_credentials,
        credentials=(*boot_credentials, *decl.credentials),
        accel=accel,
        timeout=None if interactive else round(decl.timeout * factor.value, 1),
        interactive=interactive,
        timeout_factor=factor.value,
        timeout_why=factor.why,
        boot_path=boot,
        cold_reason=cold_reason,
        snapshot_dir=snapshot_dir,
        run=run,
        whole_journal=whole_journal,
        console_limit=console_limit(settings),
        shell=shell,
        settings=settings,
    )


def timeout_factor_of(
    accel: Acceleration, given: float | None, settings: Settings, boards: bool = False
) -> TimeoutFactor:
    """HARNESS_TIMEOUT_FACTOR's, else --timeout-factor's, else as measured (timeouts.py). A
    container has nothing to accelerate: its timeouts are the declared ones. A board runs
    at its own speed, which this host's load says nothing of: it gets this host's base,
    as before measuring."""
    if settings.timeout_factor is not None:
        return TimeoutFactor.forced(settings.timeout_factor, "HARNESS_TIMEOUT_FACTOR")
    if accel is HOST_CPU:
        return TimeoutFactor(1, "a container, on the host's CPU")
    if given is not None:
        return TimeoutFactor.forced(given, "--timeout-factor")
    if boards:
        base = detect(None, settings)
        return TimeoutFactor(
            base.timeout_factor, f"this host's ({base.kind}): a board's load is not measured here"
        )
    return measured(accel.timeout_factor, vcpus_now(settings), accel.kind)


def console_limit(settings: Settings) -> int:
    """Bytes of console output before the machine is stopped (HARNESS_CONSOLE_LIMIT_MB)."""
    return settings.console_limit_mb * 2**20
