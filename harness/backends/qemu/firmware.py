"""Choosing how the image boots: the firmware kind, and OVMF for UEFI.

UEFI firmware is found the way QEMU's management tools find it: through the JSON
descriptors in the firmware directories (interface "uefi", a target for our
architecture and machine type, a flash mapping with an NVRAM template).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from harness.declaration.keys import Firmware
from harness.errors import HarnessError
from harness.image.disk import DiskFormat
from harness.image.parts import Image
from harness.settings import Settings

# A QEMU firmware descriptor (docs/interop/firmware.json), as parsed JSON.
Descriptor = dict[str, Any]
DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))


@attrs.frozen
class Ovmf:
    code: Path
    vars_template: Path
    description: str


def resolve_firmware(declared: Firmware, image: Image) -> Firmware:
    """`auto` boots the split-out kernel directly when there is one (no firmware to
    emulate: the fastest boot), and through UEFI otherwise."""
    if declared == Firmware.AUTO:
        return Firmware.LINUX if image.kernel else Firmware.UEFI
    if declared.is_linux() and image.kernel is None:
        raise HarnessError(
            f"firmware '{declared}' needs a kernel, and there is none beside {image.path}",
            "give the image's kernel (-Dkernel=PATH, --kernel=), or use firmware 'uefi'",
        )
    if declared.is_uefi() and not image.has_esp:
        raise HarnessError(
            f"firmware '{declared}' needs an EFI system partition in {image.path}, and there is none",
            "use firmware 'linux' (with -Dkernel=), or add an ESP (mkosi: Bootable=yes)",
        )
    missing = missing_boot_loader(image) if declared.is_uefi() else None
    if missing:
        raise HarnessError(
            f"firmware '{declared}': the EFI system partition of {image.path} has no {missing}, which the "
            "firmware starts (it would wait in its shell until the timeout)",
            "install a boot loader there (systemd-boot or GRUB as the removable-media path; mkosi: "
            "Bootable=yes), or use firmware 'linux'",
        )
    return declared


# What UEFI firmware starts from a disk it has no boot entry for (a fresh VM's NVRAM has none).
REMOVABLE_LOADERS = {
    "x86_64": "BOOTX64.EFI",
    "aarch64": "BOOTAA64.EFI",
    "i386": "BOOTIA32.EFI",
    "riscv64": "BOOTRISCV64.EFI",
}


def missing_boot_loader(image: Image) -> str | None:
    """The removable-media boot loader's path when the image's ESP lacks it; None when it
    is there, or when mtools (tools/setup installs them) are not around to tell."""
    loader = REMOVABLE_LOADERS.get(image.architecture)
    esp = image.esp
    if loader is None or shutil.which("mdir") is None or esp is None or image.disk_format != DiskFormat.RAW:
        return None
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{image.path}@@{esp.offset}", "::/EFI/BOOT"], capture_output=True, text=True
    ).stdout
    return None if f"/{loader}".lower() in listing.lower() else f"/EFI/BOOT/{loader}"


def select_ovmf(
    descriptors: list[tuple[Path, Descriptor]], arch: str, machine: str, secure_boot: bool = False
) -> Ovmf | None:
    """The first descriptor (in file-name order, as QEMU's tools read them) that fits."""
    for path, d in sorted(descriptors, key=lambda pd: pd[0].name):
        if "uefi" not in d.get("interface-types", []):
            continue
        mapping = d.get("mapping", {})
        if mapping.get("device") != "flash" or "nvram-template" not in mapping:
            continue
        features = d.get("features", [])
        if ("secure-boot" in features) != secure_boot or ("enrolled-keys" in features and not secure_boot):
            continue
        if not any(
            t.get("architecture") == arch and any(fnmatch.fnmatch(machine, m) for m in t.get("machines", []))
            for t in d.get("targets", [])
        ):
            continue
        return Ovmf(
            Path(mapping["executable"]["filename"]),
            Path(mapping["nvram-template"]["filename"]),
            d.get("description", path.name),
        )
    return None


def read_descriptors(dirs: Iterable[Path] = DESCRIPTOR_DIRS) -> list[tuple[Path, Descriptor]]:
    found: dict[str, tuple[Path, Descriptor]] = {}
    for directory in dirs:  # an /etc file shadows a /usr/share file of the same name
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
            if path.name not in found:
                try:
                    found[path.name] = (path, json.loads(path.read_text()))
                except (OSError, ValueError):
                    continue
    return list(found.values())


def find_ovmf(arch: str, machine: str, settings: Settings, secure_boot: bool = False) -> Ovmf:
    """OVMF for the machine; with `secure_boot`, its build that enforces Secure Boot
    (SMM), started with a variable store that has the image's signing key enrolled."""
    ovmf = select_ovmf(read_descriptors(), arch, machine, secure_boot)
    if ovmf is None:
        kind = "UEFI firmware with Secure Boot" if secure_boot else "UEFI firmware"
        raise HarnessError(
            f"no {kind} for {arch} ({machine}) in {', '.join(map(str, DESCRIPTOR_DIRS))}",
            "install OVMF (Debian: apt-get install ovmf), or use firmware 'linux'",
        )
    if secure_boot:
        ovmf = attrs.evolve(ovmf, vars_template=secure_boot_vars(settings, arch))
    return ovmf


# Debian's ovmf and qemu-efi-aarch64 packages: a variable store with their test key
# ("snakeoil") enrolled as PK, KEK and db, the key meson signs the image with (-Dsecure-boot).
SNAKEOIL_VARS = {
    "x86_64": Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"),
    "aarch64": Path("/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd"),
}


def secure_boot_vars(settings: Settings, arch: str = "x86_64") -> Path:
    """The variable store a Secure Boot VM starts from: HARNESS_SECURE_BOOT_VARS, or
    Debian's with its test key enrolled."""
    path = settings.secure_boot_vars or SNAKEOIL_VARS.get(arch)
    if path is None or not path.is_file():
        missing = f"{path} is not there" if path else f"Debian ships none for {arch}"
        raise HarnessError(
            f"firmware 'uefi-secure-boot' needs a UEFI variable store with the image's signing key "
            f"enrolled, and {missing}",
            "install Debian's ovmf or qemu-efi-aarch64 package (tools/setup does), or set HARNESS_SECURE_BOOT_VARS to "
            "a variable store with your certificate enrolled (virt-fw-vars --enroll-cert)",
        )
    return path


NVRAM_NAME = "OVMF_VARS.fd"


def copy_nvram(ovmf: Ovmf, directory: Path, template: Path | None = None) -> Path:
    """Every VM gets its own copy of the variable store, as OVMF ships it or as `template`
    (a booted snapshot's) holds it: it writes to it."""
    target = directory / NVRAM_NAME
    shutil.copyfile(template or ovmf.vars_template, target)
    return target
