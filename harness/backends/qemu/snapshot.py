"""The fast path: boot the shared image once, save the booted VM, resume a copy per test.

Under emulation most of a test's minute is the boot. So the first eligible test of a run
boots the image to a point where a small agent (guest/agent.sh) waits on a virtio-serial
port, and saves the whole VM (QEMU migration to a file, plus the disk overlay it wrote).
Every eligible test then starts QEMU from that state on its own fresh overlay and sends
the agent one script (agent.py): set the clock, reseed the entropy pool, install the test
unit and its credentials, start the unit. The unit is the same as on a cold boot and
reports over the same channel, so TAP, subtests, journal, timeline and report do not
change.

A test is eligible when nothing it declares changes what happens before the agent runs
(`plan.resume_blocker` says why not). There is one snapshot per machine shape
(`plan.machine_shape`), made when the first test of that shape needs it: its firmware (a UEFI
snapshot keeps OVMF's variables; each test resumes a copy), its storage (a persistent
snapshot boots without the volatile overlay), its TPM (its state travels in the saved VM
into each test's own swtpm) and its extra disks (each test gets new empty ones). A
host-driven test resumes too: the agent starts its control agent instead of a test unit.
A resumed test's QEMU is given the command line and credentials the test's cold boot
would get (they are not part of the saved state), and the snapshot's machine ID: a
reboot inside the test is the test's own cold boot, on its own overlay, as the same
machine. A snapshot is keyed to the image, the harness's own files and QEMU; it
lives in the build directory and is shared by parallel `meson test` processes under file
locks (snapshot_store.py). What the guest can still tell: the machine-id and boot ID are
the snapshot boot's (journald and D-Bus take them when PID 1 starts; a new one per test
would split its journal), as are the TPM's seeds, and until a reboot /proc/cmdline names
the agent's unit.

This file holds the whole path: `booted_snapshot` (made by `make_snapshot` when missing;
snapshot_store.py keys, shares and replaces them), `resumed_vm` (a test's VM from it,
handed its test). How the VM's state is written and read is `StateFormat`'s.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import attrs

from harness.backends.qemu.agent import AGENT_UNIT, agent_credentials, handed_test
from harness.backends.qemu.architectures import MACHINES, has_uefi, qemu_binary
from harness.backends.qemu.command import RunFiles, VmConfig, machine_alias, qemu_major
from harness.backends.qemu.early_console import RESUMED_MARK
from harness.backends.qemu.firmware import NVRAM_NAME, find_ovmf
from harness.backends.qemu.machine import QemuMachine, make_overlay, private_tmp, running_vm
from harness.backends.qemu.qmp import qmp_errors
from harness.backends.qemu.snapshot_store import (
    Snapshot,
    SnapshotUnavailable,
    shared_snapshot,
    snapshot_key,
    snapshot_machine_id,
)
from harness.boot.accel import Acceleration
from harness.boot.plan import BootPlan, harness_cmdline, machine_shape
from harness.boot.watch import watch
from harness.deadline import Deadline
from harness.declaration.keys import Firmware, Storage
from harness.errors import HarnessError
from harness.guest.reporting import VIRTIO_CHANNEL
from harness.guest.units import boot_options, emergency_guard
from harness.image.parts import Image
from harness.settings import Settings
from harness.verdict.notify import Notify
from harness.verdict.timeline import decode_timeline

log = logging.getLogger(__name__)

SNAPSHOT_BOOT_TIMEOUT = 120  # seconds with KVM, for the boot to the agent
RESUME_TIMEOUT = 60  # seconds QEMU may take to load the saved state
SAVE_TIMEOUT = 300  # seconds QEMU may take to write it (~350 MB)
MAPPED_RAM_SINCE = 9  # the QEMU major version with mapped-ram migration


class StateFormat(StrEnum):
    """How the saved VM is written and read back. A migration stream must be parsed from
    its start to its end before the VM runs (0.5 s for the trixie image under TCG); with
    mapped-ram every page has its place in the file and is read in one pass (0.1 s), into
    the VM's own memory, so parallel tests share nothing but the file, which none writes.
    (A RAM file mapped copy-on-write loads in 0.02 s, but every page the guest then
    touches is a fault: the test ran 0.4 s slower, measured.)"""

    STREAM = "stream"  # QEMU before 9
    MAPPED_RAM = "mapped-ram"

    @classmethod
    def for_qemu(cls, major: int) -> StateFormat:
        return cls.MAPPED_RAM if major >= MAPPED_RAM_SINCE else cls.STREAM

    def capabilities(self) -> list[dict[str, Any]]:
        """migrate-set-capabilities' argument, the same on saving and on loading."""
        return [{"capability": "mapped-ram", "state": True}] if self == StateFormat.MAPPED_RAM else []

    def uri(self, state: Path, saving: bool) -> str:
        if self == StateFormat.MAPPED_RAM:
            return f"file:{state}"
        return ("exec:cat >" if saving else "exec:cat ") + shlex.quote(str(state))


def state_format(image: Image, settings: Settings) -> StateFormat:
    binary = shutil.which(qemu_binary(image.architecture, settings)) or ""
    return StateFormat.for_qemu(qemu_major(binary))


def snapshot_config(
    image: Image,
    accel: Acceleration,
    firmware: Firmware,
    storage: Storage,
    tpm: bool = False,
    disks: tuple[int, ...] = (),
    machine_id: str | None = None,
    *,
    settings: Settings,
) -> VmConfig:
    """The VM of one machine shape that boots to the agent and is saved: what every
    eligible test of that firmware, storage, TPM and extra disks resumes."""
    volatile = storage == Storage.VOLATILE
    return VmConfig(
        name="snapshot",
        image=image,
        firmware=firmware,
        accel=accel,
        cmdline=tuple(boot_options(AGENT_UNIT, interactive=False, volatile=volatile, machine_id=machine_id)),
        credentials=(*agent_credentials(), *emergency_guard(VIRTIO_CHANNEL)),
        agent=True,
        tpm=tpm,
        disks=disks,
        settings=settings,
    )


def plan_snapshot_config(plan: BootPlan, machine_id: str | None = None) -> VmConfig:
    d = plan.decl
    return snapshot_config(
        plan.image, plan.accel, plan.firmware, d.storage, d.tpm, d.disks, machine_id, settings=plan.settings
    )


def resumed_config(plan: BootPlan, snapshot: Snapshot) -> VmConfig:
    """A resumed test's VM: the snapshot's devices, as migration requires, and what the
    test's cold boot would get at boot (command line, credentials; no part of the saved
    state), with the snapshot's machine ID, so that a reboot inside the test boots as the
    test's own cold boot would, as the same machine."""
    return attrs.evolve(
        plan_snapshot_config(plan),
        cmdline=tuple(harness_cmdline(plan.decl, interactive=False, machine_id=snapshot.machine_id)),
        credentials=plan.credentials,
        control=plan.decl.host is not None,
    )


def booted_snapshot(plan: BootPlan) -> contextlib.AbstractContextManager[Snapshot]:
    """The booted snapshot of `plan`'s image and machine shape, made first if needed, held
    while in use."""
    assert plan.snapshot_dir is not None
    binary = shutil.which(qemu_binary(plan.image.architecture, plan.settings)) or ""
    image = plan.image
    files = [image.path, image.kernel, image.initrd, Path(binary)]
    if has_uefi(image.architecture, plan.firmware):  # new firmware, or other enrolled keys: a new snapshot
        arch = image.architecture
        ovmf = find_ovmf(
            arch, machine_alias(binary, MACHINES[arch]), plan.settings, plan.firmware.is_secure_boot()
        )
        files += [ovmf.code, ovmf.vars_template]
    swtpm = shutil.which("swtpm")
    if plan.decl.tpm and swtpm:  # the TPM's state travels in the snapshot, in swtpm's own format
        files.append(Path(swtpm))
    shape = machine_shape(plan.firmware, plan.decl.storage, plan.decl.tpm, plan.decl.disks)
    key = snapshot_key(
        shape,
        [
            plan.accel.kind,
            *plan.accel.cpu_args(qemu_major(binary)),
            binary,
            state_format(image, plan.settings),
            f"root={image.root}",  # the same disk booted with another root= is another machine
        ],
        [p for p in files if p is not None],
    )
    # The boot is the agent's: the test's own timeout does not apply to it, but a busy
    # host's slowdown does (and TCG's, even where a test's factor was forced lower).
    timeout = SNAPSHOT_BOOT_TIMEOUT * max(plan.accel.timeout_factor, plan.timeout_factor)

    def make(dest: Path) -> None:
        log.info(
            f"{plan.name}: booting {image.path.name} once to save it as the booted snapshot "
            f"{dest.parent / key} (machine shape {shape}: the other eligible tests of that shape "
            "resume it)"
        )
        make_snapshot(plan_snapshot_config(plan, snapshot_machine_id(key)), dest, timeout, plan.console_limit)

    return shared_snapshot(plan.snapshot_dir, key, plan.run, make)


def make_snapshot(cfg: VmConfig, dest: Path, timeout: float, console_limit: int) -> None:
    """Boot `cfg` until its agent waits, then save the VM into `dest` (state + disk)."""
    with private_tmp(cfg.name) as tmp:
        files = RunFiles(tmp, dest, Snapshot(dest).disk)
        make_overlay(cfg.image.path, files.disk, cfg.image.disk_format)
        with running_vm(cfg, files) as machine, socket.socket(socket.AF_UNIX) as agent:
            # Connected, the agent's port blocks its read instead of ending it at once:
            # the VM is saved waiting in read(), and a resumed copy, connected before it
            # loads, reads its test the moment it runs, without a poll's delay.
            try:
                connect_agent(machine, agent, Deadline.after(SNAPSHOT_BOOT_TIMEOUT))
            except OSError as e:
                raise SnapshotUnavailable(
                    f"the snapshot boot failed: {machine.failure_detail() or e}"
                ) from None
            ending = watch(machine, timeout, console_limit)
            report = machine.collect()
            if report.last(Notify.AGENT_READY) != "1":
                why = {
                    "timeout": f"timed out after {timeout:.0f} s",
                    "panic": f"kernel panic: {ending.detail}",
                }.get(
                    ending.kind,
                    f"QEMU exited with status {ending.machine_status}: {machine.failure_detail()}",
                )
                raise SnapshotUnavailable(f"the snapshot boot failed: {why}")
            timeline = decode_timeline(report.last(Notify.TIMELINE))
            if timeline:
                Snapshot(dest).timeline.write_text(timeline)
            save_state(machine, Snapshot(dest).state, state_format(cfg.image, cfg.settings))
        if has_uefi(cfg.image.architecture, cfg.firmware):  # QEMU has quit: the store is as the VM left it
            shutil.copyfile(tmp / NVRAM_NAME, Snapshot(dest).nvram)


def save_state(machine: QemuMachine, state: Path, form: StateFormat) -> None:
    """Stop the VM, write its memory and device state to `state`, and quit QEMU."""
    with machine.qmp.session(30) as qmp:
        qmp.cmd("stop")
        qmp.cmd("migrate-set-capabilities", capabilities=form.capabilities())
        qmp.cmd("migrate", uri=form.uri(state, saving=True))

        def saved() -> bool:
            status = qmp.cmd("query-migrate")
            assert isinstance(status, dict)
            if status.get("status") in ("failed", "cancelled"):
                raise SnapshotUnavailable(f"QEMU could not save the VM: {status.get('error-desc', status)}")
            return status.get("status") == "completed"

        if not Deadline.after(SAVE_TIMEOUT).wait_for(saved, 0.1):
            raise SnapshotUnavailable(f"QEMU took more than {SAVE_TIMEOUT} s to save the VM")
        qmp.cmd("quit")
    with contextlib.suppress(subprocess.TimeoutExpired):
        machine.proc.wait(timeout=10)


@contextlib.contextmanager
def resumed_vm(snapshot: Snapshot, plan: BootPlan, files: RunFiles) -> Iterator[QemuMachine]:
    """A VM of `plan`'s test resumed from `snapshot` on its own overlay, its agent handed
    the test; on leaving, QEMU and the agent's connection are gone."""
    make_overlay(snapshot.disk, files.disk, backing_format="qcow2")
    # The test's console.log begins with the boot it resumes; QEMU appends to it.
    if snapshot.console.is_file():
        shutil.copyfile(snapshot.console, files.console)
        with files.console.open("ab") as f:
            f.write(b"\n" + RESUMED_MARK + b"; the test resumes it]\n")
    timeline = snapshot.timeline.read_text() if snapshot.timeline.is_file() else None
    cfg = resumed_config(plan, snapshot)
    nvram = snapshot.nvram if has_uefi(cfg.image.architecture, cfg.firmware) else None
    with (
        running_vm(cfg, files, resuming=True, boot_timeline=timeline, nvram_template=nvram) as machine,
        socket.socket(socket.AF_UNIX) as agent,
    ):
        hand_over(machine, agent, handed_test(plan), snapshot.state, state_format(plan.image, plan.settings))
        yield machine


def connect_agent(machine: QemuMachine, agent: socket.socket, deadline: Deadline) -> None:
    """Connect to the agent's port once QEMU listens there (its socket file appears a
    moment before it does)."""

    def connected() -> bool:
        if machine.proc.poll() is not None:
            raise OSError("QEMU exited before it listened on the agent's port")
        try:
            agent.connect(str(machine.files.agent))
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            return False

    if not deadline.wait_for(connected, 0.005):
        raise OSError("QEMU did not listen on the agent's port in time")


def hand_over(
    machine: QemuMachine, agent: socket.socket, message: bytes, state: Path, form: StateFormat
) -> None:
    """Connect to the agent's port, have QEMU (started with `-incoming defer`) load the
    saved `state`, let the VM run (it was saved stopped, so it loads paused) and send the
    agent its test. Connected before the load, the port is as it was in the snapshot, so
    the agent's read, blocked there, takes the test at once. The test goes once the VM
    runs: QEMU reads the port no sooner, and a large one would fill the socket. One QMP
    connection does it all: each new one costs a round of greetings."""
    fix = "rerun with HARNESS_COLD_BOOT=1; if it persists, remove the snapshot directory"
    deadline = Deadline.after(RESUME_TIMEOUT)
    try:
        connect_agent(machine, agent, deadline)
        # QMP's monitor may come up after the chardevs: wait until it answers.
        if not deadline.wait_for(
            lambda: machine.proc.poll() is not None or machine.qmp.run_state() is not None, 0.005
        ):
            raise OSError("QMP did not answer in time")
        with machine.qmp.session(RESUME_TIMEOUT) as qmp:
            qmp.cmd("migrate-set-capabilities", capabilities=form.capabilities())
            qmp.cmd("migrate-incoming", uri=form.uri(state, saving=False))

            def loaded() -> bool:
                status = qmp.cmd("query-status")
                return isinstance(status, dict) and status.get("status") != "inmigrate"

            if not deadline.wait_for(loaded, 0.01):
                raise OSError(f"it took more than {RESUME_TIMEOUT} s")
            qmp.cmd("cont")
        agent.sendall(message)
    except qmp_errors() as e:
        raise HarnessError(
            f"QEMU did not resume the booted snapshot: {machine.failure_detail() or e}", fix
        ) from None
