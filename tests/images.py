"""Small synthetic disk images for the unit tests: a GPT (512- or 4096-byte sectors), an
initrd whose ELF binary tells the architecture, and, where a test needs real file
systems, an ESP (mtools) and an ext4 root (mke2fs) at their partitions' offsets."""

from __future__ import annotations

import gzip
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

from harness.image.disk import ESP_TYPE, ROOT_PARTITION_TYPES

MIB = 1 << 20
EM_X86_64 = 62


def gpt(
    partitions: list[tuple[uuid.UUID, uuid.UUID, str, int, int]], sector: int = 512, size: int = 0
) -> bytes:
    """A GPT disk of `size` bytes (at least 128 sectors) as partitioning tools write it:
    header at LBA 1 and entries at LBA 2, their backups at the end of the disk;
    `partitions` are (type, uuid, label, first LBA, last LBA)."""
    entries = b""
    for type_uuid, part_uuid, label, first, last in partitions:
        e = type_uuid.bytes_le + part_uuid.bytes_le + struct.pack("<QQQ", first, last, 0)
        entries += e + label.encode("utf-16-le").ljust(72, b"\0")
    entries = entries.ljust(128 * 128, b"\0")
    disk = bytearray(max(size, sector * 128))
    last_lba = len(disk) // sector - 1
    entry_sectors = len(entries) // sector
    backup_entries = last_lba - entry_sectors

    def header(current: int, alternate: int, entries_lba: int) -> bytes:
        fields = struct.pack(
            "<IIIIQQQQ", 0x10000, 92, 0, 0, current, alternate, 2 + entry_sectors, backup_entries - 1
        )
        return (
            b"EFI PART"
            + fields
            + bytes(16)
            + struct.pack("<QIII", entries_lba, 128, 128, zlib.crc32(entries))
        )

    writes = [
        (1, header(1, last_lba, 2)),
        (2, entries),
        (backup_entries, entries),
        (last_lba, header(last_lba, 1, backup_entries)),
    ]
    for at, data in writes:
        disk[at * sector : at * sector + len(data)] = data
    return bytes(disk)


def elf(machine: int) -> bytes:
    # ELF64 little-endian header, e_machine at offset 18.
    return (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    )


def cpio(files: list[tuple[str, bytes, int]]) -> bytes:
    out = b""
    for i, (name, data, mode) in enumerate([*files, ("TRAILER!!!", b"", 0)]):
        n = name.encode() + b"\0"
        fields = [i, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0]
        entry = b"070701" + b"".join(b"%08X" % f for f in fields) + n
        entry += b"\0" * (-len(entry) % 4) + data + b"\0" * (-len(data) % 4)
        out += entry
    return out


def write_image(directory: Path, sector: int = 512, systemd_version: int = 257) -> Path:
    """image.raw (a GPT with an ESP and an x86-64 root) with the split-out kernel,
    initrd and UKI beside it: enough for Image.open, nothing boots."""
    directory.mkdir(parents=True, exist_ok=True)
    root = uuid.UUID("0f0e0d0c-0b0a-0908-0706-050403020100")
    parts = [
        (ESP_TYPE, uuid.uuid4(), "esp", 34, 35),
        (ROOT_PARTITION_TYPES["x86_64"], root, "root-x86-64", 36, 37),
    ]
    (directory / "image.raw").write_bytes(gpt(parts, sector))
    write_split_artifacts(directory, systemd_version)
    return directory / "image.raw"


def write_bootable_image(directory: Path, sector: int) -> Path:
    """image.raw with a FAT ESP holding /EFI/Linux/image.efi and an ext4 root holding
    /etc/systemd/system: what build_board_image writes into."""
    directory.mkdir(parents=True, exist_ok=True)
    esp_at, esp_size, root_at, root_size = 1 * MIB, 8 * MIB, 9 * MIB, 8 * MIB
    esp, root = directory / "esp.img", directory / "root.img"
    subprocess.run(
        ["mformat", "-C", "-i", str(esp), "-T", str(esp_size // 512), "-h", "16", "-s", "32", "::"],
        check=True,
    )
    for d in ("::/EFI", "::/EFI/Linux", "::/loader", "::/loader/entries"):
        subprocess.run(["mmd", "-i", str(esp), d], check=True)
    uki = directory / "image.efi"
    uki.write_bytes(b"MZ not really a UKI")
    subprocess.run(["mcopy", "-i", str(esp), str(uki), "::/EFI/Linux/image.efi"], check=True)
    tree = directory / "root"
    (tree / "etc" / "systemd" / "system").mkdir(parents=True)
    # what harness.image.rootfs looks for: systemd (new enough for no generator) as PID 1
    (tree / "usr" / "lib" / "systemd").mkdir(parents=True)
    (tree / "usr" / "lib" / "systemd" / "libsystemd-shared-257.so").write_bytes(b"")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(root), f"{root_size // 1024}k"], check=True)
    parts = [
        (ESP_TYPE, uuid.uuid4(), "esp", esp_at // sector, (esp_at + esp_size) // sector - 1),
        (
            ROOT_PARTITION_TYPES["x86_64"],
            uuid.uuid4(),
            "root-x86-64",
            root_at // sector,
            (root_at + root_size) // sector - 1,
        ),
    ]
    disk = bytearray(gpt(parts, sector, root_at + root_size + MIB))
    disk[esp_at : esp_at + esp_size] = esp.read_bytes()
    disk[root_at : root_at + root_size] = root.read_bytes()
    image = directory / "image.raw"
    image.write_bytes(bytes(disk))
    return image


def initrd_core(systemd_version: int, pretty_name: str) -> list[tuple[str, bytes, int]]:
    """The files of an initrd that tell about the image: an ELF binary, systemd's library
    (its version in the name) and os-release."""
    return [
        ("usr/lib/systemd/systemd", elf(EM_X86_64), 0o100755),
        (f"usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-{systemd_version}.so", b"", 0o100644),
        ("usr/lib/os-release", f'PRETTY_NAME="{pretty_name}"\nID=debian\n'.encode(), 0o100644),
    ]


def write_split_artifacts(directory: Path, systemd_version: int = 257) -> None:
    """What mkosi writes beside the disk: kernel, initrd (whose ELF binary, systemd library
    and os-release tell about the image) and UKI."""
    initrd = initrd_core(systemd_version, "Debian GNU/Linux 13 (trixie)")
    (directory / "image.initrd").write_bytes(gzip.compress(cpio(initrd)))
    (directory / "image.vmlinuz").write_bytes(b"kernel")
    if not (directory / "image.efi").exists():
        (directory / "image.efi").write_bytes(b"MZ not really a UKI")


def write_initrd_with_modules(directory: Path, modules: list[str], builtin: list[str]) -> None:
    """image.initrd as mkosi writes it: the initrd, then the kernel's modules as an archive
    of their own (its `modules` files, and modules.builtin naming `builtin`), each
    zstd-compressed."""
    import zstandard

    kver = "usr/lib/modules/6.1.0-test"
    main = cpio(initrd_core(252, "Debian GNU/Linux 12 (bookworm)"))
    kmods = cpio(
        [
            *[(f"{kver}/kernel/drivers/{m}.ko.xz", b"module", 0o100644) for m in modules],
            (
                f"{kver}/modules.builtin",
                "".join(f"kernel/drivers/{m}.ko\n" for m in builtin).encode(),
                0o100644,
            ),
        ]
    )
    zstd = zstandard.ZstdCompressor()
    (directory / "image.initrd").write_bytes(zstd.compress(main) + zstd.compress(kmods))
