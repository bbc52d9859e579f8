"""A backend with no machine: it plays a scripted ending, so the flow of `run_test`
(skip, requirements, plan, wait, power off, collect, classify, record) is tested in
milliseconds for every way a run can end. labgrid keeps its fake driver for the same
reason.

For host-driven tests the fake machine's `controls()` is a `FakeGuest`: a control agent
that runs each command with the host's own sh (in a directory of its own), boots again
when rebooted or powered on, and can be told to stop answering.

A `Script` says what the "guest" reported (notify lines, as a VM's port would carry
them), how the machine stopped, and optionally an exception the wait raises (Ctrl-C, a
crash of the machine). The backend keeps every plan it was given and whether each
machine was powered off and left, so tests can check that nothing is left running.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from harness.boot.machine import Ending, EndingKind, LogFile, Look, WatchRules
from harness.boot.plan import BootPath, BootPlan
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware
from harness.guest.reporting import CORE_DUMPS_EXPORT, VIRTIO_CHANNEL
from harness.guest.units import VIRTIO_CONTROL
from harness.host.driven_machine import BOOT_ID_COMMAND
from harness.image.parts import Image
from harness.settings import Settings
from harness.verdict.notify import GuestReport

FAKE_FEATURES = frozenset({"dut", "serial"})


@attrs.frozen
class Script:
    """What the fake machine does between boot and collect."""

    report: bytes = b""  # what the guest said, in notify KEY=VALUE lines
    ending: Ending = attrs.field(factory=lambda: Ending(EndingKind.EXITED, 0))
    raises: BaseException | None = None  # raised by wait(), as Ctrl-C or a crash would
    detail: str = ""  # what the machine said about a crash (QEMU's stderr)
    console: bytes = b""
    boot_path: BootPath | None = None  # None: what the plan asked for
    # the guest's journal, as it arrives on its port (host-driven: the core dumps it keeps)
    journal_export: bytes = b""
    job_url: str = ""  # as a lab's machine gives it
    answers: int | None = None  # host-driven: commands the guest answers before it goes silent
    comes_up: bool = True  # host-driven: the first boot answers


def guest_said(*lines: str) -> bytes:
    """Notify lines as the guest writes them: `guest_said("READY=1", "EXIT_STATUS=123")`."""
    return "".join(f"{line}\n" for line in lines).encode()


def passing(exit_status: int = 123) -> Script:
    return Script(guest_said("READY=1", f"EXIT_STATUS={exit_status}"))


REBOOT = "systemctl --no-block reboot"


@attrs.define
class FakeGuest:
    """The control agent of a fake machine (guest/control.sh's protocol), in-process."""

    console_log: Path
    root: Path  # where its commands run
    answers: int | None = None  # commands answered before it stops answering; None: all
    comes_up: bool = True
    announces: bool = True  # False: its boots' H lines are lost on the way
    answers_reboot: bool = True  # False: the shutdown stops it before it answers a reboot
    core_dumps: bytes = b""  # the core dumps its journal keeps, in journal export format
    powered: bool = True
    boots: int = 0
    stopped: str | None = None  # why it can no longer be driven
    typed: bytearray = attrs.Factory(bytearray)  # what was sent to its console
    ran: list[str] = attrs.Factory(list)  # the commands it was sent
    qmp_calls: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    _out: bytearray = attrs.Factory(bytearray)

    def __attrs_post_init__(self) -> None:
        if self.comes_up:
            self._boot()

    def _boot(self) -> None:
        self.boots += 1
        with self.console_log.open("ab") as f:
            f.write(f"fake boot {self.boots}\n".encode())
        if self.announces:
            self._out += f"H boot-{self.boots}\n".encode()

    def send(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            words = line.split(" ")
            if not self.powered or not self.boots or len(words) != 4 or words[0] != "C":
                continue
            if self.answers is not None:
                if self.answers == 0:
                    continue  # silent from here on
                self.answers -= 1
            script = base64.b64decode(words[3]).decode()
            self.ran.append(script)
            status, out, err = self._run(script, float(words[2]))
            if script != REBOOT or self.answers_reboot:
                self._out += b"R %s %d %s %s\n" % (
                    words[1].encode(),
                    status,
                    base64.b64encode(out),
                    base64.b64encode(err),
                )
            if script == REBOOT:
                self._boot()

    def _run(self, script: str, timeout: float) -> tuple[int, bytes, bytes]:
        if script == REBOOT:
            return 0, b"", b""
        if script == CORE_DUMPS_EXPORT:
            return 0, self.core_dumps, b""
        if script == BOOT_ID_COMMAND:
            return 0, f"boot-{self.boots}\n".encode(), b""
        try:
            done = subprocess.run(["sh", "-c", script], cwd=self.root, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124, b"", b""
        return done.returncode, done.stdout, done.stderr

    def receive(self, timeout: float) -> bytes:
        if not self._out:
            time.sleep(min(timeout, 0.01))
        out, self._out = bytes(self._out), bytearray()
        return out

    def send_console(self, data: bytes) -> None:
        self.typed += data

    def power_off(self) -> None:
        self.powered = False
        self._out.clear()

    def power_on(self) -> None:
        self.powered = True
        self._boot()

    def gone(self) -> str | None:
        return self.stopped

    def qmp(self, command: str, arguments: dict[str, Any]) -> Any:
        self.qmp_calls.append((command, arguments))
        return {}


@attrs.define
class FakeMachine:
    script: Script
    plan: BootPlan
    log_dir: Path
    powered_off: list[bool] = attrs.Factory(list)  # `orderly` of every power_off()
    collected: bool = False
    guest: FakeGuest | None = None  # made when a host-driven test asks for the controls
    display_name = "the fake machine"
    watch_rules = WatchRules(poll=0)

    @property
    def console_log(self) -> Path:
        return self.log_dir / "console.log"

    @property
    def boot_path(self) -> BootPath:
        return self.script.boot_path or self.plan.boot_path

    @property
    def boot_timeline(self) -> str | None:
        return None

    @property
    def job_url(self) -> str:
        return self.script.job_url

    def look(self) -> Look:
        """The whole script at the first look: what the guest said, and how it ended."""
        self.console_log.write_bytes(self.script.console)
        if self.script.raises is not None:
            raise self.script.raises
        report = GuestReport()
        report.add(self.script.report)
        console = self.script.console
        return Look(report, console, len(console), stopped=self.script.ending)

    def power_off(self, orderly: bool) -> None:
        self.powered_off.append(orderly)

    def collect(self) -> GuestReport:
        self.collected = True
        if self.script.journal_export:
            (self.log_dir / "journal.export").write_bytes(self.script.journal_export)
        report = GuestReport()
        report.add(self.script.report)
        return report

    def failure_detail(self) -> str:
        return self.script.detail

    def controls(self) -> FakeGuest:
        if self.guest is None:
            root = self.log_dir / "fake-guest"
            root.mkdir(exist_ok=True)
            self.guest = FakeGuest(
                self.console_log,
                root,
                self.script.answers,
                self.script.comes_up,
                core_dumps=self.script.journal_export,
            )
        return self.guest


@attrs.define
class FakeBackend:
    script: Script | list[Script] = attrs.Factory(passing)  # a list: one per boot, the last repeats
    features: frozenset[str] = FAKE_FEATURES
    name: str = "fake"
    report_channel = VIRTIO_CHANNEL
    log_files: tuple[LogFile, ...] = ()
    drives_host_tests: bool = True
    control_device: str = VIRTIO_CONTROL
    can_resume: bool = True
    plans: list[BootPlan] = attrs.Factory(list)
    machines: list[FakeMachine] = attrs.Factory(list)
    running: int = 0  # machines booted and not yet left: 0 after every run

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        return [f for f in decl.requires if f not in self.features]

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        return Firmware.LINUX if declared == Firmware.AUTO else declared

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, settings: Settings) -> str | None:
        return "the test declares boot: 'cold'" if decl.boot == "cold" else None

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[FakeMachine]:
        scripts = self.script if isinstance(self.script, list) else [self.script]
        machine = FakeMachine(scripts[min(len(self.plans), len(scripts) - 1)], plan, log_dir)
        self.plans.append(plan)
        self.machines.append(machine)
        self.running += 1
        try:
            yield machine
        finally:
            self.running -= 1
