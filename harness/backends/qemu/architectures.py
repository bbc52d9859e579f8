"""What differs between the architectures a VM can be: QEMU's binary and machine for each,
the UART its firmware prints to, which devices the machine has, and whether its kernel
finds SMBIOS without UEFI. Adding an architecture starts here (docs/matrix.md).
"""

from __future__ import annotations

import shutil

from harness.declaration.keys import Firmware
from harness.errors import HarnessError
from harness.settings import Settings

QEMU_BINARIES = {
    "x86_64": "qemu-system-x86_64",
    "aarch64": "qemu-system-aarch64",
    "riscv64": "qemu-system-riscv64",
    "i386": "qemu-system-i386",
}
MACHINES = {"x86_64": "q35", "i386": "q35", "aarch64": "virt", "riscv64": "virt"}
# The UART each machine's firmware and boot loader print to (UEFI boots log it); a direct
# kernel boot logs the virtio console hvc0 instead: an emulated UART costs an exit to QEMU
# per character, which under TCG is seconds of a boot.
CONSOLES = {"x86_64": "ttyS0", "i386": "ttyS0", "aarch64": "ttyAMA0", "riscv64": "ttyS0"}
VMGENID_MACHINES = ("x86_64", "i386")  # QEMU's vmgenid device is an ACPI one of q35's


SMBIOS_WITHOUT_UEFI = ("x86_64", "i386")  # SeaBIOS publishes it too; elsewhere only UEFI does


def loads_kernel_through_uefi(arch: str, firmware: Firmware) -> bool:
    """A direct kernel boot where the kernel finds SMBIOS only through UEFI (aarch64,
    riscv64): the UEFI firmware starts the kernel QEMU hands it (-kernel, -initrd,
    -append: the same boot), and the guest gets its credentials by SMBIOS as on x86.
    Without it they would go through fw_cfg, whose names stop at 55 bytes, too short for
    `systemd.extra-unit.NAME.service`."""
    return firmware.is_linux() and arch not in SMBIOS_WITHOUT_UEFI


def has_uefi(arch: str, firmware: Firmware) -> bool:
    """Whether the VM runs UEFI firmware: to boot the disk, or to start the kernel."""
    return firmware.is_uefi() or loads_kernel_through_uefi(arch, firmware)


def smbios_supported(arch: str, firmware: Firmware) -> bool:
    return arch in SMBIOS_WITHOUT_UEFI or has_uefi(arch, firmware)


# Debian's packages of each QEMU, for the error that names what to install.
QEMU_PACKAGES = {
    "x86_64": "qemu-system-x86",
    "i386": "qemu-system-x86",
    "aarch64": "qemu-system-arm and qemu-efi-aarch64",
    "riscv64": "qemu-system-misc",
}


def qemu_binary(arch: str, settings: Settings) -> str:
    """QEMU for the image's architecture: HARNESS_QEMU when set, else the one on PATH."""
    return settings.qemu or QEMU_BINARIES[arch]


def require_qemu(arch: str, settings: Settings) -> str:
    """The QEMU binary for `arch`, or an error naming what to install (before any boot)."""
    binary = qemu_binary(arch, settings) if arch in QEMU_BINARIES or settings.qemu else None
    if binary is None:
        raise HarnessError(
            f"the image is {arch}, which the harness has no QEMU machine for",
            f"boot an image of {', '.join(QEMU_BINARIES)}, or name a QEMU binary in HARNESS_QEMU",
        )
    if shutil.which(binary) is None:
        raise HarnessError(
            f"the image is {arch} and {binary} is not installed",
            f"install it (Debian: {QEMU_PACKAGES.get(arch, 'qemu-system')}; a checkout: tools/setup),"
            " or name another binary in HARNESS_QEMU",
        )
    return binary
