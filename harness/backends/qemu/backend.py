"""The QEMU backend: one VM per test on a copy-on-write overlay of the shared image.

Its parts, one file a job: command.py (QEMU's command line), machine.py (one owned QEMU
process), snapshot.py (the fast path) and agent.py (what its guest agent is sent),
firmware.py (OVMF), credentials.py (SMBIOS, fw_cfg), vsock.py (PID 1's own notify
messages). This file is the backend's face: what a VM here can boot, and which way a
test's VM comes up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from harness.backends.qemu.architectures import require_qemu
from harness.backends.qemu.command import RunFiles, VmConfig
from harness.backends.qemu.firmware import resolve_firmware
from harness.backends.qemu.machine import QemuMachine, make_overlay, private_tmp, running_vm
from harness.backends.qemu.snapshot import booted_snapshot, resumed_vm
from harness.backends.qemu.snapshot_store import SnapshotUnavailable
from harness.boot.machine import LogFile
from harness.boot.plan import BootPath, BootPlan, resume_blocker
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware
from harness.errors import HarnessError
from harness.guest.reporting import VIRTIO_CHANNEL
from harness.guest.units import VIRTIO_CONTROL
from harness.image.parts import Image
from harness.settings import Settings

log = logging.getLogger(__name__)

# What a VM here needs before its root is mounted: the PCI transport, the disk, and the
# console and report ports (virtio-serial).
VM_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_console")
# Without it the root is still found, and the root's udev loads it; the console is then
# the serial port (command.serial_console). Debian's initramfs-tools leaves it out.
LATE_DRIVERS = ("virtio_console",)


def missing_drivers(image: Image) -> list[str]:
    """The drivers of VM_DRIVERS that neither the kernel nor the initrd has; none when the
    initrd does not tell (it carries no modules.builtin)."""
    if image.initrd_drivers is None:
        return []
    return [d for d in VM_DRIVERS if d not in image.initrd_drivers]


class QemuBackend:
    name = "qemu"
    report_channel = VIRTIO_CHANNEL
    features = frozenset({"dut", "uefi", "serial", "tpm", "disks", "secure-boot"})
    can_resume = True
    drives_host_tests = True
    control_device = VIRTIO_CONTROL
    log_files: tuple[LogFile, ...] = (LogFile("qemu-command.txt"), LogFile("screen.png", text=False))

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        return [f for f in decl.requires if f not in self.features]

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        """The firmware to boot `image` with, once it is clear a VM here can boot it."""
        if declared in (Firmware.LINUX, Firmware.AUTO) and image.kernel and image.initrd is None:
            log.info(f"{image.path.name}: a kernel and no initrd: booting the kernel alone (linux-noinitrd)")
            declared = Firmware.LINUX_NOINITRD
        if declared == Firmware.LINUX_NOINITRD and image.kernel_drivers is not None:
            modules = [d for d in VM_DRIVERS if d not in image.kernel_drivers]
            if modules:
                # As systemd's wrapper does: its tests declare linux-noinitrd where they can.
                are = "is a module" if len(modules) == 1 else "are modules"
                log.warning(
                    f"firmware linux-noinitrd: in the kernel of {image.path.name} {', '.join(modules)} {are}, "
                    "not built in (it could not find its disk): booting with its initrd, firmware linux"
                )
                declared = Firmware.LINUX
        missing = missing_drivers(image) if declared != Firmware.LINUX_NOINITRD else []
        late = [d for d in missing if d in LATE_DRIVERS]
        if late:
            log.warning(
                f"the initrd of {image.path.name} has no {', '.join(late)}, and the kernel has it as a "
                "module: the console is the serial port (slower under emulation than hvc0)"
            )
            missing = [d for d in missing if d not in LATE_DRIVERS]
        if missing:
            drivers = f"{', '.join(missing)} driver" + (
                "s, nor are they" if len(missing) > 1 else ", nor is it"
            )
            raise HarnessError(
                f"the initrd of {image.path} has no {drivers} built into the kernel: the VM could not "
                "find its disk or report (it would hang until the timeout)",
                "add the modules to the initrd (mkosi: KernelModulesInitrdInclude=, as in this project's "
                "mkosi.conf; dracut: add_drivers+=; initramfs-tools: a line each in "
                "/etc/initramfs-tools/modules)",
            )
        return resolve_firmware(declared, image)

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, settings: Settings) -> str | None:
        return resume_blocker(decl, settings)

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[QemuMachine]:
        """The test's VM: resumed from the booted snapshot where the plan asks for it and
        the snapshot can be had, else booted cold."""
        require_qemu(plan.image.architecture, plan.settings)  # before a snapshot is made for it
        with contextlib.ExitStack() as stack:
            snapshot = None
            if plan.boot_path is BootPath.SNAPSHOT:
                try:
                    snapshot = stack.enter_context(booted_snapshot(plan))
                except SnapshotUnavailable as e:
                    log.warning(f"{plan.name}: no booted snapshot ({e}); booting cold")
            tmp = stack.enter_context(private_tmp(plan.name))
            files = RunFiles(tmp, log_dir, tmp / "overlay.qcow2")
            if snapshot is not None:
                yield stack.enter_context(resumed_vm(snapshot, plan, files))
                return
            make_overlay(plan.image.path, files.disk, plan.image.disk_format)
            yield stack.enter_context(running_vm(VmConfig.for_plan(plan), files))
