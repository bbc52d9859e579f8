"""The EFI side of an image: its UKI's command line and signature (can it boot with
Secure Boot enforced?), and boot entries on an EFI system partition, written with mtools
(nothing is mounted): for a board, onto its per-test copy of the image; for a UEFI VM
whose systemd-stub is too old to take the harness's command line from SMBIOS (before
254), onto a small ESP of its own that boots the image's UKI with that command line."""

from __future__ import annotations

import struct
import subprocess
import uuid
import zlib
from pathlib import Path

from harness.errors import HarnessError
from harness.image.disk import ESP_TYPE
from harness.image.parts import Image

ENTRY_NAME = "harness-test.conf"
# systemd-stub takes the extra command line from SMBIOS (io.systemd.stub.kernel-cmdline-extra)
# from 254 on; for older images a UEFI VM boots the UKI from an ESP of its own (below).
STUB_SMBIOS_SINCE = 254


def pe_section(pe: bytes, name: str) -> bytes | None:
    """The contents of section `name` of a PE file (a UKI's .cmdline, say)."""
    if pe[:2] != b"MZ":
        return None
    try:  # a truncated file is no PE: struct.error where a header is cut off
        pe_offset = struct.unpack_from("<I", pe, 0x3C)[0]
        if pe[pe_offset : pe_offset + 4] != b"PE\0\0":
            return None
        sections, optional_size = struct.unpack_from("<H12xH", pe, pe_offset + 6)
        table = pe_offset + 24 + optional_size
        for i in range(sections):
            entry = table + 40 * i
            raw_name = pe[entry : entry + 8].rstrip(b"\0").decode(errors="replace")
            vsize, _, rsize, pointer = struct.unpack_from("<IIII", pe, entry + 8)
            if raw_name == name:
                return pe[pointer : pointer + min(vsize, rsize)]
    except struct.error:
        return None
    return None


def pe_signed(pe: bytes) -> bool:
    """Whether a PE file carries an Authenticode signature: its certificate table (data
    directory 4) is not empty. Whose signature it is, the firmware decides."""
    try:
        pe_offset = struct.unpack_from("<I", pe, 0x3C)[0]
        if pe[:2] != b"MZ" or pe[pe_offset : pe_offset + 4] != b"PE\0\0":
            return False
        optional = pe_offset + 24
        magic = struct.unpack_from("<H", pe, optional)[0]
        directories = optional + (112 if magic == 0x20B else 96)  # PE32+ or PE32
        _, size = struct.unpack_from("<II", pe, directories + 4 * 8)
    except struct.error:
        return False
    return bool(size)


def secure_boot_refusal(image: Image) -> str | None:
    """Why `image` cannot boot with Secure Boot enforced, or None: its UKI must be signed,
    and its systemd-stub must take the harness's command line from SMBIOS (254 and later:
    under Secure Boot a boot entry's options are ignored)."""
    how = (
        "build the image with meson's -Dsecure-boot=enabled (it signs with Debian's test key, whose "
        "variable store the ovmf package ships), or sign it with mkosi's SecureBoot= and point "
        "HARNESS_SECURE_BOOT_VARS at a variable store with your certificate enrolled"
    )
    if image.uki is None:
        return f"firmware 'uefi-secure-boot': there is no UKI beside {image.path} to check; {how}"
    with image.uki.open("rb") as f:
        if not pe_signed(f.read(4096)):  # the certificate table's place is in the headers
            return f"firmware 'uefi-secure-boot': the image's UKI {image.uki.name} is not signed; {how}"
    if image.systemd_version is not None and image.systemd_version < STUB_SMBIOS_SINCE:
        return (
            f"firmware 'uefi-secure-boot': the image's systemd {image.systemd_version} is older than "
            f"{STUB_SMBIOS_SINCE}: its systemd-stub takes no command line from SMBIOS, and under Secure "
            "Boot it ignores a boot entry's, so the harness could not pass the test's"
        )
    return None


def uki_cmdline(uki: Path) -> str:
    data = pe_section(uki.read_bytes(), ".cmdline")
    return data.rstrip(b"\0").decode().strip() if data else ""


def boot_entry(title: str, uki_name: str, cmdline: str) -> str:
    return f"title {title}\nefi /EFI/Linux/{uki_name}\noptions {cmdline}\n"


def run_tool(cmd: list[str], what: str, stdin: str | None = None) -> str:
    try:
        result = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise HarnessError(
            f"{cmd[0]} is not installed, needed to {what}",
            "install mtools and e2fsprogs (Debian: apt-get install mtools e2fsprogs; a checkout: tools/setup)",
        ) from None
    if result.returncode != 0:
        raise HarnessError(f"could not {what}: {cmd[0]}: {result.stderr.strip()[-300:]}")
    return result.stdout


ESP_START = 1 << 20  # bytes: where the ESP begins on the boot disk, as partitioning tools place it


def write_gpt_disk(dest: Path, esp_bytes: int) -> None:
    """A disk of one EFI system partition at ESP_START: a protective MBR and both GPT
    headers, as UEFI firmware checks them (CRCs included). systemd-boot reports the
    partition's UUID (LoaderDevicePartUUID), which a superfloppy FAT image has none of."""
    sector = 512
    entries_sectors = 128 * 128 // sector
    total = (ESP_START + esp_bytes) // sector + 2048
    first, last = ESP_START // sector, (ESP_START + esp_bytes) // sector - 1
    entries = bytearray(128 * 128)
    entries[:128] = (
        ESP_TYPE.bytes_le
        + uuid.uuid4().bytes_le
        + struct.pack("<QQQ", first, last, 0)
        + "esp".encode("utf-16-le").ljust(72, b"\0")
    )
    disk_guid = uuid.uuid4().bytes_le

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = struct.pack(
            "<8sIIIIQQQQ16sQIII",
            b"EFI PART",
            0x10000,
            92,
            0,
            0,
            current,
            backup,
            34,
            total - entries_sectors - 2,
            disk_guid,
            entries_lba,
            128,
            128,
            zlib.crc32(entries),
        )
        return fields[:16] + struct.pack("<I", zlib.crc32(fields)) + fields[20:]

    mbr = bytearray(sector)
    mbr[446:462] = struct.pack(
        "<B3sB3sII", 0, b"\0\2\0", 0xEE, b"\xff\xff\xff", 1, min(total - 1, 0xFFFFFFFF)
    )
    mbr[510:512] = b"\x55\xaa"
    with dest.open("wb") as f:
        f.truncate(total * sector)
        for lba, data in (
            (0, bytes(mbr)),
            (1, header(1, total - 1, 2)),
            (2, bytes(entries)),
            (total - 1 - entries_sectors, bytes(entries)),
            (total - 1, header(total - 1, 1, total - 1 - entries_sectors)),
        ):
            f.seek(lba * sector)
            f.write(data)


def write_boot_esp(dest: Path, boot_loader: Path, uki: Path, title: str, cmdline: str) -> Path:
    """A GPT disk whose ESP holds `boot_loader` (systemd-boot) as the removable-media
    loader, the UKI, and one entry, the default, that starts the UKI with `cmdline`."""
    size_mib = (uki.stat().st_size + boot_loader.stat().st_size) // (1 << 20) + 8
    write_gpt_disk(dest, size_mib << 20)
    fat = f"{dest}@@{ESP_START}"
    run_tool(
        ["mformat", "-i", fat, "-T", str(size_mib * 2048), "-h", "64", "-s", "32", "::"], "make the boot ESP"
    )
    for directory in ("::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader", "::/loader/entries"):
        run_tool(["mmd", "-i", fat, directory], "make the boot ESP")
    entry, loader = dest.with_name(ENTRY_NAME), dest.with_name("loader.conf")
    entry.write_text(boot_entry(title, "harness.efi", cmdline))
    loader.write_text(f"default {ENTRY_NAME}\ntimeout 0\n")
    for source, target in (
        (boot_loader, "::/EFI/BOOT/BOOTX64.EFI"),
        (uki, "::/EFI/Linux/harness.efi"),
        (entry, f"::/loader/entries/{ENTRY_NAME}"),
        (loader, "::/loader/loader.conf"),
    ):
        run_tool(["mcopy", "-o", "-i", fat, str(source), target], "fill the boot ESP")
    return dest
