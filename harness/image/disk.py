"""A disk image's format and partition table: raw or qcow2, GPT or MBR.

The GPT is read here, not by sfdisk: util-linux before 2.39 takes a file's sectors as
512 bytes, and mkosi makes 4 KiB-sector disks; our reader also tells a half-copied disk
(its backup header) from a whole one. An MBR (DOS) disk, extended partitions and all, is
read with `sfdisk --json`. A qcow2's tables are read from a sparse stand-in of its first
and last MiB (`qemu-img dd`); `qemu-img info` names any other format.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import attrs

from harness.errors import HarnessError

# Discoverable Partitions Specification: root partition type per architecture.
ROOT_PARTITION_TYPES = {
    "x86_64": uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
    "aarch64": uuid.UUID("b921b045-1df0-41c3-af44-4c6f280d3fae"),
    "riscv64": uuid.UUID("72ec70a6-cf74-40e6-bd49-4bda08e8f224"),
    "i386": uuid.UUID("44479540-f297-41b2-9af7-d131d5f0458a"),
}


ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")


@attrs.frozen
class Partition:
    type_uuid: uuid.UUID
    part_uuid: uuid.UUID
    first_lba: int
    last_lba: int
    label: str
    sector_size: int = 512  # the GPT's logical sector: LBAs count these

    @property
    def offset(self) -> int:
        """Where the partition starts in the disk, in bytes."""
        return self.first_lba * self.sector_size


def _gpt_header(f: BinaryIO) -> tuple[bytes, int]:
    """The primary GPT header and the sector size it was found at."""
    for sector in (512, 4096):
        f.seek(sector)
        header = f.read(92)
        if header[:8] == b"EFI PART":
            return header, sector
    raise ValueError("no GPT header (neither at 512 nor at 4096 bytes)")


def gpt_problem(f: BinaryIO, size: int) -> str | None:
    """What is wrong with the disk's GPT as a whole, or None: a file shorter than its
    partition table says (an interrupted copy) or a backup header that does not match
    the primary one (a damaged or half-written disk)."""
    header, sector = _gpt_header(f)
    backup_lba, _, last_usable = struct.unpack_from("<QQQ", header, 32)
    needed = (max(backup_lba, last_usable) + 1) * sector
    if size < needed:
        return f"it is {size} bytes, shorter than its partition table says ({needed} bytes)"
    f.seek(backup_lba * sector)
    backup = f.read(92)
    if backup[:8] != b"EFI PART":
        return f"its backup GPT header (sector {backup_lba}) is missing"
    entries_crc, backup_crc = header[88:92], backup[88:92]
    if struct.unpack_from("<Q", backup, 32)[0] != 1 or entries_crc != backup_crc:
        return "its backup GPT header does not match the primary one"
    return None


def read_gpt(f: BinaryIO) -> list[Partition]:
    """The used entries of a GUID partition table, for 512- or 4096-byte sectors."""
    header, sector = _gpt_header(f)
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    f.seek(entries_lba * sector)
    table = f.read(count * entry_size)
    partitions = []
    for i in range(count):
        e = table[i * entry_size : (i + 1) * entry_size]
        if len(e) < 128 or e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        label = e[56:128].decode("utf-16-le", "replace").rstrip("\0")
        partitions.append(
            Partition(uuid.UUID(bytes_le=e[:16]), uuid.UUID(bytes_le=e[16:32]), first, last, label, sector)
        )
    return partitions


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


QCOW2_MAGIC = b"QFI\xfb"


LINUX_FILESYSTEM = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")  # GPT's generic Linux type


MBR_LINUX = "83"
MBR_ESP = "ef"


MIB = 1024 * 1024


@attrs.frozen
class DiskPartition:
    """A partition of either kind of table, as the kernel names it."""

    number: int  # vdaN
    partuuid: str  # GPT: the entry's GUID; MBR: DISKID-NN, the kernel's spelling
    type: str  # GPT: the type GUID; MBR: the type byte in hex ("83")
    label: str  # GPT's partition name; "" on MBR
    offset: int  # bytes
    size: int  # bytes

    def describe(self) -> str:
        names = {str(LINUX_FILESYSTEM): "Linux filesystem", MBR_LINUX: "Linux", str(ESP_TYPE): "ESP"}
        names |= {str(t): f"{arch} root" for arch, t in ROOT_PARTITION_TYPES.items()}
        kind = names.get(self.type, f"type {self.type}")
        label = f" '{self.label}'" if self.label else ""
        return f"partition {self.number}{label} ({kind}, {self.size // MIB} MiB, PARTUUID={self.partuuid})"


@attrs.frozen
class PartitionTable:
    kind: str  # "gpt", "dos", or "" (no table: a bare filesystem)
    partitions: tuple[DiskPartition, ...]
    problem: str | None = None  # what is wrong with the table as a whole (gpt_problem)

    def find(self, type_uuid: uuid.UUID) -> list[DiskPartition]:
        return [p for p in self.partitions if p.type == str(type_uuid)]

    @property
    def esp(self) -> DiskPartition | None:
        """The EFI system partition: GPT's type, or MBR's 0xef."""
        return next((p for p in self.partitions if p.type in (str(ESP_TYPE), MBR_ESP)), None)


# What a disk image downloaded or deployed compressed starts with, and what decompresses it.
COMPRESSIONS = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}


def detect_format(disk: Path) -> DiskFormat:
    """raw or qcow2, by content (the name says nothing: .img, .wic, .raw are all raw); a
    boot sector's signature says raw without asking qemu-img."""
    with disk.open("rb") as f:
        head = f.read(512)
    if head[:4] == QCOW2_MAGIC:
        return DiskFormat.QCOW2
    for magic, tool in COMPRESSIONS.items():
        if head.startswith(magic):
            raise HarnessError(
                f"{disk} is compressed ({tool}), and the harness boots a disk image itself",
                f"decompress it first: {tool} -dk {disk}" if tool != "gzip" else f"gunzip -k {disk}",
            )
    if head[510:512] == b"\x55\xaa":
        return DiskFormat.RAW
    info = qemu_img_info(disk)
    name = str(info.get("format", "raw"))
    if name == "raw":
        return DiskFormat.RAW
    raise HarnessError(
        f"{disk} is a {name} disk image, and the harness boots raw and qcow2 disks",
        f"convert it: qemu-img convert -O qcow2 {disk} {disk.with_suffix('.qcow2')}",
    )


def qemu_img_info(disk: Path) -> dict[str, object]:
    info: dict[str, object] = json.loads(
        qemu_img(["info", "--output=json", str(disk)], disk, "is it a disk image?", timeout=60)
    )
    return info


def partition_table(disk: Path, fmt: DiskFormat) -> PartitionTable:
    if fmt == DiskFormat.RAW:
        return read_table(disk)
    with tempfile.TemporaryDirectory(prefix="harness-table-") as tmp:
        return read_table(qcow2_stand_in(disk, Path(tmp) / "tables.raw"))


def qemu_img(args: list[str], disk: Path, fix: str = "is the qcow2 whole?", timeout: int = 600) -> str:
    """Run qemu-img on `disk`, and what it printed; its failure is the image's, said with
    qemu-img's words."""
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(
            f"qemu-img could not read {disk}: {e}", "install qemu-img (Debian: apt-get install qemu-utils)"
        ) from None
    if done.returncode != 0:
        raise HarnessError(f"qemu-img could not read {disk}: {done.stderr.strip()}", fix)
    return done.stdout


EXTENDED = (0x05, 0x0F, 0x85)  # MBR types of an extended partition, whose EBRs chain the logical ones


def qcow2_stand_in(disk: Path, out: Path) -> Path:
    """A sparse raw file of the qcow2's virtual size holding only the MiBs with partition
    tables: the first; a GPT's backup, where its primary header says (a grown disk keeps
    it there); an MBR's chain of extended boot records."""
    size = int(str(qemu_img_info(disk)["virtual-size"]))
    with out.open("wb") as new:
        new.truncate(size)
    copied: set[int] = set()

    def have(offset: int) -> None:
        mib = min(offset, size - 1) // MIB
        if mib not in copied:
            piece = out.with_name(f"piece-{mib}")
            # qemu-img dd counts its blocks from the start of the disk, skipped ones too.
            dd = ["dd", "-f", "qcow2", "-O", "raw", "bs=1M", f"skip={mib}", f"count={mib + 1}"]
            qemu_img([*dd, f"if={disk}", f"of={piece}"], disk)
            with out.open("r+b") as stand_in:
                stand_in.seek(mib * MIB)
                stand_in.write(piece.read_bytes()[: size - mib * MIB])
            piece.unlink()
            copied.add(mib)

    def read(offset: int, length: int) -> bytes:
        have(offset)
        with out.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    have(0)
    with out.open("rb") as f:
        try:
            header, sector = _gpt_header(f)
        except ValueError:
            _follow_ebrs(read)
            return out
    backup = struct.unpack_from("<Q", header, 32)[0] * sector
    for offset in (backup - 128 * 128, backup):  # its entries, then its header
        have(max(offset, 0))
    return out


def _follow_ebrs(read: Callable[[int, int], bytes]) -> None:
    """Read an MBR's extended boot records one after the other (`read` copies each in)."""
    entries = read(0x1BE, 64)
    starts = [
        struct.unpack_from("<I", entries, 16 * i + 8)[0] for i in range(4) if entries[16 * i + 4] in EXTENDED
    ]
    if not starts:
        return
    extended = ebr = starts[0]
    for _ in range(128):  # a loop in the chain ends here
        link = read(ebr * 512 + 0x1CE, 16)
        if len(link) < 16 or link[4] not in EXTENDED or not struct.unpack_from("<I", link, 8)[0]:
            return
        ebr = extended + struct.unpack_from("<I", link, 8)[0]


@contextlib.contextmanager
def raw_partition(disk: Path, partition: DiskPartition) -> Iterator[Path]:
    """A sparse raw copy of one partition of a qcow2 (qemu-img's raw driver over it, at the
    partition's offset), for tools that read raw files only; removed afterwards."""
    source = (
        f"driver=raw,offset={partition.offset},size={partition.size},"
        f"file.driver=qcow2,file.file.filename={str(disk).replace(',', ',,')}"
    )
    with tempfile.TemporaryDirectory(prefix="harness-partition-") as tmp:
        copy = Path(tmp) / f"partition-{partition.number}.raw"
        qemu_img(["convert", "-O", "raw", "--image-opts", source, str(copy)], disk)
        yield copy


def read_table(disk: Path) -> PartitionTable:
    with disk.open("rb") as f:
        with contextlib.suppress(ValueError):
            gpt = read_gpt(f)
            problem = gpt_problem(f, disk.stat().st_size)
            return PartitionTable("gpt", tuple(gpt_partition(i, p) for i, p in enumerate(gpt, 1)), problem)
        f.seek(510)
        if f.read(2) != b"\x55\xaa":
            return PartitionTable("", ())
    return read_mbr(disk)


def gpt_partition(number: int, p: Partition) -> DiskPartition:
    return DiskPartition(
        number,
        str(p.part_uuid),
        str(p.type_uuid),
        p.label,
        p.offset,
        (p.last_lba - p.first_lba + 1) * p.sector_size,
    )


def read_mbr(disk: Path) -> PartitionTable:
    """An MBR (DOS) table through sfdisk, which knows extended and logical partitions."""
    try:
        done = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(
            f"{disk} has an MBR partition table, which the harness reads with sfdisk, and sfdisk failed: {e}",
            "install util-linux's sfdisk (Debian: apt-get install fdisk)",
        ) from None
    if done.returncode != 0 or not done.stdout.strip():
        return PartitionTable("", ())  # a boot sector with no table sfdisk knows: a bare filesystem
    table = json.loads(done.stdout)["partitiontable"]
    if table.get("label") != "dos":  # sfdisk read a GPT ours could not: its primary header is broken
        return PartitionTable("gpt", (), "its primary GPT header is damaged (sfdisk fell back on the backup)")
    sector = int(table.get("sectorsize", 512))
    disk_id = str(table.get("id", "0x0"))[2:].lower().rjust(8, "0")
    partitions = []
    for p in table.get("partitions", []):
        number = int(re.sub(r"^.*?(\d+)$", r"\1", p["node"]))
        partitions.append(
            DiskPartition(
                number,
                f"{disk_id}-{number:02x}",
                str(p["type"]).lower(),
                "",
                p["start"] * sector,
                p["size"] * sector,
            )
        )
    return PartitionTable("dos", tuple(partitions))
