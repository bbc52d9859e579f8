import io
import uuid

import pytest
import zstandard

from harness.errors import HarnessError
from harness.image.disk import ESP_TYPE, ROOT_PARTITION_TYPES, read_gpt
from harness.image.initrd import cpio_files, elf_architecture, initrd_facts
from harness.image.parts import Image
from tests.images import cpio, elf, gpt, write_image, write_initrd_with_modules


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
    assert initrd_facts(initrd).architecture == "aarch64"


def test_elf_architecture():
    assert elf_architecture(elf(62)) == "x86_64"
    assert elf_architecture(b"#!/bin/sh\n") is None


@pytest.mark.parametrize("sector", [512, 4096])
def test_a_whole_image_opens_and_tells_its_systemd(tmp_path, sector):
    image = Image.open(write_image(tmp_path, sector))
    assert (
        image.architecture == "x86_64"
        and image.has_esp
        and image.root == "PARTUUID=0f0e0d0c-0b0a-0908-0706-050403020100"
    )
    assert image.systemd_version == 257
    assert image.os_name == "Debian GNU/Linux 13 (trixie)"


def test_a_truncated_image_is_an_error_naming_the_file(tmp_path):
    path = write_image(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(
        HarnessError, match=r"image.raw is damaged: it is \d+ bytes, shorter than its partition"
    ):
        Image.open(path)


def test_a_backup_gpt_that_disagrees_is_an_error(tmp_path):
    path = write_image(tmp_path)
    data = bytearray(path.read_bytes())
    data[-512 + 88 : -512 + 92] = b"\0\0\0\0"  # the backup header's entries CRC
    path.write_bytes(bytes(data))
    with pytest.raises(HarnessError, match="backup GPT header does not match"):
        Image.open(path)


def test_no_root_partition_is_an_error(tmp_path):
    write_image(tmp_path)
    (tmp_path / "image.raw").write_bytes(gpt([(ESP_TYPE, uuid.uuid4(), "esp", 34, 35)]))
    with pytest.raises(HarnessError, match="has no root partition of the x86_64 root type"):
        Image.open(tmp_path / "image.raw")


def test_not_a_disk_image_is_an_error(tmp_path):
    write_image(tmp_path)
    (tmp_path / "image.raw").write_text("#!/bin/sh\n" * 1000)
    with pytest.raises(HarnessError, match="has no partition table, so no root partition"):
        Image.open(tmp_path / "image.raw")


def test_an_image_with_too_old_a_systemd_is_refused_before_booting(tmp_path):
    from harness.wrapper import check_systemd

    image = Image.open(write_image(tmp_path, systemd_version=251))
    assert image.systemd_version == 251
    with pytest.raises(HarnessError, match="its systemd is 251; the harness needs 252 or later"):
        check_systemd(image)


def test_the_initrd_tells_which_drivers_are_there_before_the_root(tmp_path):
    write_image(tmp_path)
    write_initrd_with_modules(tmp_path, ["block/virtio_blk", "virtio/virtio-pci"], ["char/virtio_console"])
    image = Image.open(tmp_path / "image.raw")
    assert image.systemd_version == 252 and image.os_name == "Debian GNU/Linux 12 (bookworm)"
    assert image.initrd_drivers == frozenset({"virtio_blk", "virtio_pci", "virtio_console"})


def test_an_initrd_without_modules_builtin_tells_no_drivers(tmp_path):
    image = Image.open(write_image(tmp_path))
    assert image.initrd_drivers is None


def test_linux_noinitrd_boots_with_the_initrd_where_the_kernel_has_the_drivers_as_modules(tmp_path, caplog):
    from harness.backends.qemu.backend import QemuBackend
    from harness.declaration.keys import Firmware

    write_image(tmp_path)
    write_initrd_with_modules(tmp_path, ["block/virtio_blk"], ["virtio/virtio-pci", "char/virtio_console"])
    image = Image.open(tmp_path / "image.raw")
    assert image.kernel_drivers == frozenset({"virtio_pci", "virtio_console"})
    assert QemuBackend().firmware(Firmware.LINUX_NOINITRD, image) == Firmware.LINUX
    assert "in the kernel of image.raw virtio_blk is a module, not built in" in caplog.text
    write_initrd_with_modules(tmp_path, [], ["block/virtio_blk", "virtio/virtio-pci", "char/virtio_console"])
    assert (
        QemuBackend().firmware(Firmware.LINUX_NOINITRD, Image.open(tmp_path / "image.raw"))
        == Firmware.LINUX_NOINITRD
    )


def test_the_initrds_facts_are_kept_beside_it_until_it_changes(tmp_path, monkeypatch):
    import harness.image.initrd

    write_image(tmp_path)
    write_initrd_with_modules(tmp_path, ["block/virtio_blk"], ["char/virtio_console"])
    first = Image.open(tmp_path / "image.raw")
    assert (tmp_path / ".image.initrd.harness-facts.json").is_file()
    monkeypatch.setattr(harness.image.initrd, "initrd_facts", lambda _: pytest.fail("read the initrd again"))
    assert Image.open(tmp_path / "image.raw") == first
    monkeypatch.undo()
    (tmp_path / "image.initrd").unlink()  # a rebuild: a new file
    write_initrd_with_modules(tmp_path, [], ["block/virtio_blk", "char/virtio_console"])
    assert Image.open(tmp_path / "image.raw").kernel_drivers == frozenset({"virtio_blk", "virtio_console"})


def test_an_unwritable_directory_only_costs_the_cache(tmp_path):
    write_image(tmp_path)
    (tmp_path / ".image.initrd.harness-facts.json").mkdir()  # cannot be replaced by a file
    first = Image.open(tmp_path / "image.raw")
    assert Image.open(tmp_path / "image.raw") == first
    assert sorted(p.name for p in tmp_path.iterdir() if "facts" in p.name) == [
        ".image.initrd.harness-facts.json"
    ]
