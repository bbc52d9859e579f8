import io
import uuid

import pytest
import zstandard
from images import cpio, elf, gpt

from harness.image import ROOT_PARTITION_TYPES, cpio_files, elf_architecture, initrd_architecture, read_gpt


@pytest.mark.parametrize("sector", [512, 4096])
def test_gpt_finds_root_partition(sector):
    root = uuid.uuid4()
    esp = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    parts = read_gpt(
        io.BytesIO(
            gpt(
                [
                    (esp, uuid.uuid4(), "esp", 2048, 4095),
                    (ROOT_PARTITION_TYPES["x86_64"], root, "root-x86-64", 4096, 8191),
                ],
                sector,
            )
        )
    )
    assert [p.label for p in parts] == ["esp", "root-x86-64"]
    assert parts[1].part_uuid == root and parts[1].type_uuid == ROOT_PARTITION_TYPES["x86_64"]
    assert parts[1].offset == 4096 * sector


def test_not_a_gpt():
    with pytest.raises(ValueError):
        read_gpt(io.BytesIO(bytes(8192)))


def test_arch_from_first_elf_in_compressed_initrd(tmp_path):
    archive = cpio(
        [
            ("etc/os-release", b"ID=debian\n", 0o100644),
            ("usr/lib/systemd/systemd", elf(183), 0o100755),
            ("usr/bin/x86", elf(62), 0o100755),
        ]
    )
    assert [n for n, _ in cpio_files(archive)] == ["etc/os-release", "usr/lib/systemd/systemd", "usr/bin/x86"]
    initrd = tmp_path / "image.initrd"
    initrd.write_bytes(zstandard.ZstdCompressor().compress(archive))
    assert initrd_architecture(initrd) == "aarch64"


def test_elf_architecture():
    assert elf_architecture(elf(62)) == "x86_64"
    assert elf_architecture(b"#!/bin/sh\n") is None
