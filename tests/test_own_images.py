"""Images the harness did not build (issue 32's walls): each opens, or is refused before
boot with a message naming the image's part and what to do."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
import zstandard

from harness.errors import HarnessError
from harness.image.disk import ESP_TYPE, LINUX_FILESYSTEM, DiskFormat
from harness.image.initrd import initrd_facts, kernel_architecture
from harness.image.parts import Image, ImageParts
from tests.images import cpio, gpt, initrd_core, write_image

ROOT = uuid.UUID("6f0b1c2a-0000-4000-8000-000000000001")


def bzimage(x86_64: bool = True) -> bytes:
    """The bytes of an x86 kernel's header that tell what it is."""
    head = bytearray(0x1000)
    head[:2] = b"MZ"
    head[0x202:0x206] = b"HdrS"
    head[0x236] = 1 if x86_64 else 0
    return bytes(head)


def generic_root_disk(path: Path) -> Path:
    """A GPT whose only partition has the generic Linux type, as wic and cloud images make."""
    path.write_bytes(gpt([(LINUX_FILESYSTEM, ROOT, "rootfs", 2048, 4095)], size=4 << 20))
    return path


def mbr_disk(path: Path, disk_id: int = 0x1234ABCD) -> Path:
    """An MBR disk: a FAT boot partition and a Linux root, as many board images are."""
    disk = bytearray(8 << 20)
    struct.pack_into("<I", disk, 0x1B8, disk_id)
    for i, (kind, start, count) in enumerate([(0x0C, 2048, 4096), (0x83, 6144, 8192)]):
        struct.pack_into("<B3sB3sII", disk, 0x1BE + 16 * i, 0, b"\0\0\0", kind, b"\0\0\0", start, count)
    disk[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(disk))
    return path


def debian_initrd(path: Path, systemd: bool = True) -> Path:
    """An initrd as initramfs-tools builds it with *-microcode installed: an uncompressed
    early-microcode archive first, the compressed main archive after it."""
    early = cpio([("kernel/x86/microcode/GenuineIntel.bin", b"\x01" * 100, 0o100644)])
    main = initrd_core(252, "Debian GNU/Linux 12 (bookworm)")
    if not systemd:
        main = [f for f in main if "libsystemd-shared" not in f[0]]
    path.write_bytes(early + bytes(512) + zstandard.ZstdCompressor().compress(cpio(main)))
    return path


def test_an_early_microcode_archive_first_is_read_past(tmp_path):
    facts = initrd_facts(debian_initrd(tmp_path / "initrd.img-6.1.0-28-cloud-amd64"))
    assert facts.architecture == "x86_64" and facts.systemd_version == 252
    assert facts.os_name == "Debian GNU/Linux 12 (bookworm)"


def test_an_initrd_without_systemd_says_so(tmp_path):
    image = Image.open(
        ImageParts(
            generic_root_disk(tmp_path / "disk.img"),
            initrd=debian_initrd(tmp_path / "initrd.img", systemd=False),
            root=f"PARTUUID={ROOT}",
        )
    )
    assert not image.initrd_has_systemd and image.systemd_version is None


def test_a_name_with_dots_finds_its_own_kernel_and_initrd(tmp_path):
    write_image(tmp_path)
    for suffix in (".raw", ".vmlinuz", ".initrd", ".efi"):
        (tmp_path / f"image{suffix}").rename(tmp_path / f"image_1.2{suffix}")
    image = Image.open(tmp_path / "image_1.2.raw")
    assert image.initrd == tmp_path / "image_1.2.initrd" and image.kernel == tmp_path / "image_1.2.vmlinuz"


def test_a_symlink_of_another_name_finds_the_parts_beside_its_target(tmp_path):
    write_image(tmp_path / "out")
    (tmp_path / "myos.img").symlink_to(tmp_path / "out" / "image.raw")
    image = Image.open(tmp_path / "myos.img")
    assert image.path == tmp_path / "out" / "image.raw" and image.initrd == tmp_path / "out" / "image.initrd"


def test_a_generic_linux_root_is_refused_with_the_root_to_give(tmp_path):
    disk = generic_root_disk(tmp_path / "core-image-minimal.wic")
    initrd = debian_initrd(tmp_path / "initrd")
    with pytest.raises(HarnessError) as e:
        Image.open(ImageParts(disk, initrd=initrd))
    assert "has no root partition of the x86_64 root type" in e.value.what
    assert f"partition 1 'rootfs' (Linux filesystem, 1 MiB, PARTUUID={ROOT})" in e.value.what
    assert e.value.fix == f"say which is the root: -Droot=PARTUUID={ROOT} (or --root=)"
    image = Image.open(ImageParts(disk, initrd=initrd, root=f"PARTUUID={ROOT}"))
    assert (
        image.root == f"PARTUUID={ROOT}" and image.root_partition and image.root_partition.offset == 1 << 20
    )


def test_a_root_that_is_not_on_the_disk_is_refused_naming_the_partitions(tmp_path):
    disk = generic_root_disk(tmp_path / "disk.img")
    with pytest.raises(HarnessError, match=f"has no partition PARTUUID=0000.*PARTUUID={ROOT}"):
        Image.open(ImageParts(disk, initrd=debian_initrd(tmp_path / "i"), root="PARTUUID=0000"))
    with pytest.raises(HarnessError, match="is not a root= the kernel reads"):
        Image.open(ImageParts(disk, initrd=debian_initrd(tmp_path / "i"), root="vda2"))
    image = Image.open(ImageParts(disk, initrd=debian_initrd(tmp_path / "i"), root="LABEL=root"))
    assert image.root == "LABEL=root" and image.root_partition is None


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (util-linux) is not installed")
def test_an_mbr_disk_boots_with_its_root_given(tmp_path):
    disk = mbr_disk(tmp_path / "board.img")
    with pytest.raises(HarnessError) as e:
        Image.open(ImageParts(disk, initrd=debian_initrd(tmp_path / "i")))
    assert "(MBR: partition 1 (type c, 2 MiB, PARTUUID=1234abcd-01)" in e.value.what
    assert e.value.fix == "say which is the root: -Droot=PARTUUID=1234abcd-02 (or --root=)"
    image = Image.open(ImageParts(disk, initrd=debian_initrd(tmp_path / "i"), root="PARTUUID=1234abcd-02"))
    assert image.table.kind == "dos" and image.root_partition and image.root_partition.offset == 6144 * 512
    assert image.esp is None


def test_a_qcow2_disk_is_told_by_its_content_whatever_its_name(tmp_path):
    raw = write_image(tmp_path / "raw")
    qcow2 = tmp_path / "raw" / "image.img"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    image = Image.open(ImageParts(qcow2, initrd=tmp_path / "raw" / "image.initrd"))
    assert image.disk_format == DiskFormat.QCOW2
    assert image.root == "PARTUUID=0f0e0d0c-0b0a-0908-0706-050403020100" and image.esp is not None
    assert not list(tmp_path.glob("**/piece-*")), "the stand-in's pieces are left behind"


def test_another_format_is_refused_with_the_conversion(tmp_path):
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "8M"], check=True)
    with pytest.raises(HarnessError, match="is a vmdk disk image") as e:
        Image.open(vmdk)
    assert e.value.fix.startswith("convert it: qemu-img convert -O qcow2")


def test_no_initrd_boots_the_kernel_alone_and_the_kernel_tells_the_architecture(tmp_path, caplog):
    from harness.backends.qemu.backend import QemuBackend
    from harness.declaration.keys import Firmware

    caplog.set_level("INFO")
    disk = generic_root_disk(tmp_path / "disk.img")
    (tmp_path / "bzImage").write_bytes(bzimage())
    image = Image.open(ImageParts(disk, kernel=tmp_path / "bzImage", root="/dev/vda1"))
    assert image.architecture == "x86_64" and image.initrd is None
    assert QemuBackend().firmware(Firmware.LINUX, image) == Firmware.LINUX_NOINITRD
    assert "a kernel and no initrd" in caplog.text


def test_nothing_to_tell_the_architecture_asks_for_it(tmp_path):
    disk = generic_root_disk(tmp_path / "disk.img")
    with pytest.raises(HarnessError, match="cannot tell the architecture") as e:
        Image.open(ImageParts(disk, root="/dev/vda1"))
    assert "-Darchitecture=x86_64" in e.value.fix
    assert Image.open(ImageParts(disk, root="/dev/vda1", architecture="x86_64")).architecture == "x86_64"


def test_an_architecture_given_that_disagrees_is_refused(tmp_path):
    disk = generic_root_disk(tmp_path / "disk.img")
    with pytest.raises(HarnessError, match="the architecture given is aarch64, and its initrd is x86_64"):
        Image.open(
            ImageParts(disk, initrd=debian_initrd(tmp_path / "i"), root="/dev/vda1", architecture="aarch64")
        )


@pytest.mark.parametrize(
    ("head", "arch"),
    [
        (bzimage(), "x86_64"),
        (bzimage(x86_64=False), "i386"),
        (bytes(0x38) + b"ARM\x64" + bytes(64), "aarch64"),
        (gzip.compress(bytes(0x38) + b"ARM\x64" + bytes(64)), "aarch64"),
        (bytes(0x38) + b"RSC\x05" + bytes(64), "riscv64"),
        (
            b"MZ"
            + bytes(0x3A)
            + struct.pack("<I", 0x80)
            + bytes(0x40)
            + b"PE\0\0"
            + struct.pack("<H", 0xAA64),
            "aarch64",
        ),
        (b"not a kernel" * 10, None),
    ],
)
def test_the_kernels_header_tells_its_architecture(tmp_path, head, arch):
    (tmp_path / "kernel").write_bytes(head)
    assert kernel_architecture(tmp_path / "kernel") == arch


def test_a_missing_part_that_was_named_is_an_error(tmp_path):
    disk = write_image(tmp_path)
    with pytest.raises(HarnessError, match=r"the initrd .*nope does not exist"):
        Image.open(ImageParts(disk, initrd=tmp_path / "nope"))


def test_an_esp_in_a_gpt_with_a_generic_root(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(
        gpt(
            [(ESP_TYPE, uuid.uuid4(), "esp", 2048, 4095), (LINUX_FILESYSTEM, ROOT, "", 4096, 6143)],
            size=4 << 20,
        )
    )
    image = Image.open(ImageParts(disk, initrd=debian_initrd(tmp_path / "i"), root=f"PARTUUID={ROOT}"))
    assert image.has_esp and image.esp and image.esp.number == 1


def test_mkosis_output_directory_gives_its_one_disk_even_with_an_image_version(tmp_path):
    from harness.image.parts import disk_path

    write_image(tmp_path)
    (tmp_path / "image.raw").rename(tmp_path / "image_1.2.raw")
    (tmp_path / "image.raw").symlink_to("image_1.2.raw")
    assert disk_path(tmp_path) == tmp_path / "image_1.2.raw"
    (tmp_path / "other.raw").write_bytes(b"")
    with pytest.raises(HarnessError, match=r"holds 2 \.raw disk images"):
        disk_path(tmp_path)


def test_a_hand_run_is_told_its_own_command_to_rerun(tmp_path):
    from harness.verdict.results import Outcome, Status
    from harness.wrapper import RunContext
    from tests.helpers import declaration

    decl = declaration(name="TEST-90-HAND")
    failed = Outcome(Status.FAIL, "it failed")
    by_hand = RunContext(tmp_path, None, "r", command=("os-harness", "run", "--image=my os.img"))
    assert by_hand.rerun_commands(decl, failed, None) == ["os-harness run '--image=my os.img'"]
    by_meson = RunContext(tmp_path, tmp_path / "build", "r")
    assert by_meson.rerun_commands(decl, failed, None) == [
        f"meson test -C {tmp_path}/build --interactive TEST-90-HAND"
    ]


def test_systemd_tests_from_an_installed_package_say_they_need_a_checkout(tmp_path, monkeypatch):
    import harness.project.systemd_tests

    monkeypatch.setattr(harness.project.systemd_tests, "ROOT", tmp_path)
    with pytest.raises(HarnessError, match="are laid out from a checkout of os-harness") as e:
        harness.project.systemd_tests._download("trixie", tmp_path / "apt", tmp_path / "src")
    assert "clone of os-harness" in e.value.fix


def test_every_guest_file_is_in_the_package():
    from harness.guest.files import GUEST_DIR, GUEST_FILES

    assert all(f.source.is_file() and f.source.parent == GUEST_DIR for f in GUEST_FILES)


def test_a_truncated_initrd_is_an_error_naming_it(tmp_path):
    initrd = tmp_path / "initrd.img"  # as initramfs-tools gzips it, cut short by a copy
    initrd.write_bytes(gzip.compress(cpio(initrd_core(252, "Debian GNU/Linux 12 (bookworm)")))[:-200])
    with pytest.raises(HarnessError, match=r"cannot read the initrd .*initrd.img: EOFError") as e:
        initrd_facts(initrd)
    assert "-Dinitrd=" in e.value.fix


def test_a_compressed_disk_is_refused_with_the_command_that_decompresses_it(tmp_path):
    import lzma

    (tmp_path / "core-image.wic.xz").write_bytes(lzma.compress(b"\0" * 4096))
    with pytest.raises(HarnessError, match=r"is compressed \(xz\)") as e:
        Image.open(tmp_path / "core-image.wic.xz")
    assert e.value.fix == f"decompress it first: xz -dk {tmp_path / 'core-image.wic.xz'}"


def test_a_format_given_that_is_not_the_disks_is_refused(tmp_path):
    disk = write_image(tmp_path)
    with pytest.raises(HarnessError, match="is a raw disk, and the image format given is qcow2"):
        Image.open(ImageParts(disk, disk_format=DiskFormat.QCOW2))


def test_architecture_names_debian_uses_are_taken_and_unknown_ones_refused(tmp_path):
    disk = generic_root_disk(tmp_path / "disk.img")
    assert Image.open(ImageParts(disk, root="/dev/vda1", architecture="amd64")).architecture == "x86_64"
    with pytest.raises(HarnessError, match="architecture 'armv7l' is none the harness knows"):
        Image.open(ImageParts(disk, root="/dev/vda1", architecture="armv7l"))


def test_root_by_device_number_and_a_sata_name_refused(tmp_path):
    disk = generic_root_disk(tmp_path / "disk.img")
    image = Image.open(ImageParts(disk, root="/dev/vda1", architecture="x86_64"))
    assert image.root_partition and image.root_partition.number == 1
    with pytest.raises(HarnessError, match="has no partition /dev/vda3"):
        Image.open(ImageParts(disk, root="/dev/vda3", architecture="x86_64"))
    with pytest.raises(HarnessError, match="the disk is virtio's, /dev/vda"):
        Image.open(ImageParts(disk, root="/dev/sda1", architecture="x86_64"))


def test_a_grown_qcow2_keeps_its_backup_gpt_where_its_header_says(tmp_path):
    disk = generic_root_disk(tmp_path / "disk.img")  # 4 MiB, backup GPT in its last MiB
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(qcow2)], check=True)
    subprocess.run(["qemu-img", "resize", "-q", str(qcow2), "20M"], check=True)  # as a cloud image is grown
    image = Image.open(ImageParts(qcow2, root=f"PARTUUID={ROOT}", architecture="x86_64"))
    assert image.disk_format == DiskFormat.QCOW2 and image.root_partition is not None


def extended_mbr_disk(path: Path) -> Path:
    """An MBR disk as balenaOS-style boards have them: a boot partition, then an extended
    one (beyond the first MiB) whose boot records chain two logical partitions."""
    disk = bytearray(16 << 20)
    struct.pack_into("<I", disk, 0x1B8, 0x0BA1E0A5)

    def entry(at: int, kind: int, start: int, count: int) -> None:
        struct.pack_into("<B3sB3sII", disk, at, 0, b"\0\0\0", kind, b"\0\0\0", start, count)

    entry(0x1BE, 0x0C, 2048, 4096)
    extended = 8192  # 4 MiB in
    entry(0x1BE + 16, 0x05, extended, 16384)
    disk[510:512] = b"\x55\xaa"
    for i, (ebr, next_ebr) in enumerate([(extended, extended + 8192), (extended + 8192, 0)]):
        at = ebr * 512
        entry(at + 0x1BE, 0x83, 2048, 4096)  # relative to this record
        if next_ebr:
            entry(at + 0x1BE + 16, 0x05, next_ebr - extended, 8192)  # relative to the extended partition
        disk[at + 510 : at + 512] = b"\x55\xaa"
        assert i < 2
    path.write_bytes(bytes(disk))
    return path


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (util-linux) is not installed")
def test_logical_partitions_are_found_in_a_raw_disk_and_in_its_qcow2(tmp_path):
    raw = extended_mbr_disk(tmp_path / "board.img")
    qcow2 = tmp_path / "board.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    for disk in (raw, qcow2):
        image = Image.open(ImageParts(disk, root="PARTUUID=0ba1e0a5-06", architecture="x86_64"))
        assert image.root_partition and image.root_partition.number == 6, disk
        assert image.root_partition.offset == (8192 + 8192 + 2048) * 512
