import io
import struct
import uuid

import pytest
import zstandard

from harness.image import ROOT_PARTITION_TYPES, cpio_files, elf_architecture, initrd_architecture, read_gpt


def gpt(partitions, sector=512):
    """A minimal GPT disk: header at LBA 1, entries at LBA 2."""
    entries = b""
    for type_uuid, part_uuid, label in partitions:
        e = type_uuid.bytes_le + part_uuid.bytes_le + struct.pack("<QQQ", 2048, 4095, 0)
        entries += e + label.encode("utf-16-le").ljust(72, b"\0")
    entries = entries.ljust(128 * 128, b"\0")
    header = b"EFI PART" + struct.pack("<IIIIQQQQ", 0x10000, 92, 0, 0, 1, 0, 34, 0) + bytes(16)
    header += struct.pack("<QII", 2, 128, 128)
    disk = bytearray(sector * 40)
    disk[sector:sector + len(header)] = header
    disk[2 * sector:2 * sector + len(entries)] = entries
    return io.BytesIO(bytes(disk))


@pytest.mark.parametrize("sector", [512, 4096])
def test_gpt_finds_root_partition(sector):
    root = uuid.uuid4()
    esp = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    parts = read_gpt(gpt([(esp, uuid.uuid4(), "esp"), (ROOT_PARTITION_TYPES["x86_64"], root, "root-x86-64")], sector))
    assert [p.label for p in parts] == ["esp", "root-x86-64"]
    assert parts[1].part_uuid == root and parts[1].type_uuid == ROOT_PARTITION_TYPES["x86_64"]


def test_not_a_gpt():
    with pytest.raises(ValueError):
        read_gpt(io.BytesIO(bytes(8192)))


def elf(machine: int) -> bytes:
    # ELF64 little-endian header, e_machine at offset 18.
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0)
    return header


def cpio(files):
    out = b""
    for i, (name, data, mode) in enumerate(files + [("TRAILER!!!", b"", 0)]):
        n = name.encode() + b"\0"
        fields = [i, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(n), 0]
        entry = b"070701" + b"".join(b"%08X" % f for f in fields) + n
        entry += b"\0" * (-len(entry) % 4) + data + b"\0" * (-len(data) % 4)
        out += entry
    return out


def test_arch_from_first_elf_in_compressed_initrd(tmp_path):
    archive = cpio([("etc/os-release", b"ID=debian\n", 0o100644), ("usr/lib/systemd/systemd", elf(183), 0o100755),
                    ("usr/bin/x86", elf(62), 0o100755)])
    assert [n for n, _ in cpio_files(archive)] == ["etc/os-release", "usr/lib/systemd/systemd", "usr/bin/x86"]
    initrd = tmp_path / "image.initrd"
    initrd.write_bytes(zstandard.ZstdCompressor().compress(archive))
    assert initrd_architecture(initrd) == "aarch64"


def test_elf_architecture():
    assert elf_architecture(elf(62)) == "x86_64"
    assert elf_architecture(b"#!/bin/sh\n") is None
