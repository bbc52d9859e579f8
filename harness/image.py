"""The shared image and what the harness must know about it before booting it.

mkosi writes `NAME.raw` (the GPT disk) and, beside it, the split-out `NAME.vmlinuz`,
`NAME.initrd` and `NAME.efi` (the UKI). The root partition (for direct kernel boot's
`root=`) comes from the GPT; the architecture comes from the ELF binaries in the initrd,
because the image itself is an ext4 root the host cannot read without mounting it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import uuid
from collections.abc import Iterator
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
ELF_MACHINES = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64", "EM_RISCV": "riscv64", "EM_386": "i386"}


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


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _decompress(data: bytes) -> bytes:
    """One xz or gzip stream, or the data as it is (zstd: initrd_archives)."""
    if data[:6] == b"\xfd7zXZ\x00":
        import lzma

        return lzma.LZMADecompressor().decompress(data)
    if data[:2] == b"\x1f\x8b":
        import gzip

        return gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    return data


def initrd_archives(data: bytes) -> Iterator[bytes]:
    """The cpio archives of an initrd: mkosi appends the kernel's modules as a
    zstd-compressed archive of their own; other compressions are read as one archive."""
    while data:
        if data[:4] != ZSTD_MAGIC:
            yield _decompress(data)
            return
        import zstandard

        frame = zstandard.ZstdDecompressor().decompressobj()
        yield frame.decompress(data)
        data = frame.unused_data.lstrip(b"\0")


def cpio_files(archive: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, content) of the regular files of a newc cpio archive, up to its trailer."""
    pos = 0
    while archive[pos : pos + 6] in (b"070701", b"070702"):
        fields = [int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = archive[name_start : name_start + namesize - 1].decode(errors="replace")
        data_start = (name_start + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return
        if mode & 0o170000 == 0o100000:
            yield name, archive[data_start : data_start + size]
        pos = (data_start + size + 3) & ~3


def elf_architecture(blob: bytes) -> str | None:
    if blob[:4] != b"\x7fELF":
        return None
    from elftools.elf.elffile import ELFFile  # here: most runs read cached facts, not ELF files

    return ELF_MACHINES.get(ELFFile(io.BytesIO(blob)).header["e_machine"])


SYSTEMD_SHARED = re.compile(r"libsystemd-shared-(\d+)[.\w-]*\.so$")


MODULE = re.compile(r"/([^/]+)\.ko(\.(xz|zst|gz))?$")  # a module's file in the initrd
BUILTIN = re.compile(r"/([^/\n]+)\.ko$", re.MULTILINE)  # a line of modules.builtin


@attrs.frozen
class InitrdFacts:
    """What the initrd tells of the image; it is built from the image's own packages, so
    it speaks for the image."""

    architecture: str  # of the first ELF binary
    systemd_version: int | None  # from libsystemd-shared-NNN.so (every systemd since 241)
    os_name: str  # PRETTY_NAME of os-release
    # The drivers there before the root is mounted: built into the kernel (its
    # modules.builtin) or modules in the initrd; None if the initrd carries no
    # modules.builtin to tell.
    drivers: frozenset[str] | None
    kernel_drivers: frozenset[str] | None = None  # those built into the kernel alone


def initrd_facts(initrd: Path) -> InitrdFacts:
    arch, version, os_name = None, None, ""
    modules: set[str] = set()
    builtin: set[str] | None = None
    for archive in initrd_archives(initrd.read_bytes()):
        for name, content in cpio_files(archive):
            arch = arch or elf_architecture(content)
            found = SYSTEMD_SHARED.search(name)
            version = version or (int(found.group(1)) if found else None)
            if name in ("usr/lib/os-release", "etc/os-release") and not os_name:
                os_name = pretty_name(content)
            if module := MODULE.search(name):
                modules.add(driver_name(module.group(1)))
            if name.endswith("/modules.builtin"):
                builtin = (builtin or set()) | {
                    driver_name(m.group(1)) for m in BUILTIN.finditer(content.decode(errors="replace"))
                }
    if arch is None:
        raise HarnessError(
            f"found no ELF binary in {initrd} to tell the image's architecture",
            "rebuild the image: meson compile -C build mkosi",
        )
    if builtin is None:
        return InitrdFacts(arch, version, os_name, None)
    return InitrdFacts(arch, version, os_name, frozenset(modules | builtin), frozenset(builtin))


def known_initrd_facts(initrd: Path) -> InitrdFacts:
    """`initrd_facts`, kept beside the initrd in a hidden file: reading them decompresses
    the whole initrd (0.16 s in every test), and the initrd changes only with a rebuild,
    which makes a new file. Where the file cannot be written, they are read every time."""
    cache = initrd.with_name(f".{initrd.name}.harness-facts.json")
    st = initrd.stat()
    identity = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(cache.read_text())
        if known["identity"] == identity:
            return InitrdFacts(
                str(known["architecture"]),
                known["systemd_version"],
                str(known["os_name"]),
                *(None if known[k] is None else frozenset(known[k]) for k in ("drivers", "kernel_drivers")),
            )
    facts = initrd_facts(initrd)
    record = {
        "identity": identity,
        **attrs.asdict(facts, value_serializer=lambda _, __, v: sorted(v) if isinstance(v, frozenset) else v),
    }
    partial = cache.with_name(f"{cache.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        partial.write_text(json.dumps(record))
        os.replace(partial, cache)
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)
    return facts


def driver_name(module: str) -> str:
    return module.replace("-", "_")  # the kernel treats both alike


def pretty_name(os_release: bytes) -> str:
    fields = dict(
        line.partition("=")[::2] for line in os_release.decode(errors="replace").splitlines() if "=" in line
    )
    return (fields.get("PRETTY_NAME") or fields.get("NAME") or "").strip().strip("\"'")


def initrd_architecture(initrd: Path) -> str:
    return initrd_facts(initrd).architecture


@attrs.frozen
class Image:
    path: Path
    kernel: Path | None
    initrd: Path | None
    uki: Path | None
    architecture: str
    root_partuuid: uuid.UUID | None
    has_esp: bool
    systemd_version: int | None = None  # None: the initrd does not tell
    os_name: str = ""  # PRETTY_NAME of its os-release, e.g. "Debian GNU/Linux 12 (bookworm)"
    initrd_drivers: frozenset[str] | None = None  # see InitrdFacts.drivers
    kernel_drivers: frozenset[str] | None = None  # see InitrdFacts.kernel_drivers

    @classmethod
    def open(cls, path: Path) -> Image:
        path = path.resolve() if path.exists() else path
        if not path.is_file():
            raise HarnessError(f"no image at {path}", "build it first: meson compile -C build mkosi")
        stem = path.with_suffix("")
        kernel, initrd, uki = (
            p if p.is_file() else None
            for p in (stem.with_suffix(".vmlinuz"), stem.with_suffix(".initrd"), stem.with_suffix(".efi"))
        )
        try:
            with path.open("rb") as f:
                partitions = read_gpt(f)
                problem = gpt_problem(f, path.stat().st_size)
        except (OSError, ValueError, struct.error) as e:
            raise HarnessError(
                f"{path} is not a GPT disk image ({e})",
                "point the harness at the .raw disk mkosi built (Format=disk)",
            ) from None
        if initrd is None:
            raise HarnessError(
                f"{path} has no initrd beside it ({stem.with_suffix('.initrd').name})",
                "build with mkosi's default SplitArtifacts (kernel, initrd, uki)",
            )
        if problem:
            raise HarnessError(
                f"{path} is damaged: {problem}",
                "an interrupted build or copy? rebuild it: meson compile -C build mkosi",
            )
        facts = known_initrd_facts(initrd)
        arch = facts.architecture
        roots = [p for p in partitions if p.type_uuid == ROOT_PARTITION_TYPES.get(arch)]
        foreign = [
            a
            for a, t in ROOT_PARTITION_TYPES.items()
            if a != arch and any(p.type_uuid == t for p in partitions)
        ]
        if not roots and foreign:
            raise HarnessError(
                f"{path}: the initrd is {arch} but the root partition is for {foreign[0]}",
                "the image's architecture is inconsistent: rebuild it with one Architecture=",
            )
        if not roots:
            raise HarnessError(
                f"{path} has no {arch} root partition (type {ROOT_PARTITION_TYPES.get(arch)})",
                "build a disk image with a root partition (mkosi Format=disk)",
            )
        return cls(
            path,
            kernel,
            initrd,
            uki,
            arch,
            roots[0].part_uuid if roots else None,
            any(p.type_uuid == ESP_TYPE for p in partitions),
            facts.systemd_version,
            facts.os_name,
            facts.drivers,
            facts.kernel_drivers,
        )
