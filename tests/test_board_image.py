"""The board image: the shared image plus the boot entry on the ESP and the test's units
and credentials in the root, written at the partitions' offsets for either sector size."""

import subprocess
from pathlib import Path

import pytest

from harness.backends.board.image import build_board_image
from harness.declaration.credential import Credential
from harness.errors import HarnessError
from harness.image.disk import ESP_TYPE, ROOT_PARTITION_TYPES, read_gpt
from harness.image.esp import ENTRY_NAME, pe_section
from tests.images import write_bootable_image, write_image


def partition_offsets(image: Path) -> tuple[int, int]:
    with image.open("rb") as f:
        parts = read_gpt(f)
    esp = next(p for p in parts if p.type_uuid == ESP_TYPE)
    root = next(p for p in parts if p.type_uuid == ROOT_PARTITION_TYPES["x86_64"])
    return esp.offset, root.offset


@pytest.mark.parametrize("sector", [512, 4096])
def test_entry_units_and_credentials_land_in_the_copy(tmp_path, sector):
    shared = write_bootable_image(tmp_path / "image", sector)
    before = shared.read_bytes()
    creds = [
        Credential("systemd.extra-unit.TEST-99-UNIT.service", b"[Service]\nExecStart=true\n"),
        Credential("systemd.unit-dropin.emergency.target~guard", b"[Unit]\n"),
        Credential("greeting", b"hello"),
    ]
    work = tmp_path / "work"
    work.mkdir()
    board = build_board_image(
        shared, shared.with_suffix(".efi"), "TEST-99-UNIT", ["harness.marker=1"], creds, work
    )
    assert shared.read_bytes() == before, "the shared image was written"
    esp, root = partition_offsets(board)
    entry = subprocess.run(
        ["mtype", "-i", f"{board}@@{esp}", f"::/loader/entries/{ENTRY_NAME}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "efi /EFI/Linux/image.efi" in entry and "options harness.marker=1" in entry

    def cat(path: str) -> bytes:
        return subprocess.run(
            ["debugfs", "-R", f"cat {path}", f"{board}?offset={root}"], capture_output=True, check=True
        ).stdout

    assert cat("/etc/systemd/system/TEST-99-UNIT.service") == b"[Service]\nExecStart=true\n"
    assert cat("/etc/systemd/system/emergency.target.d/guard.conf") == b"[Unit]\n"
    assert cat("/etc/credstore/greeting") == b"hello"


def test_an_image_without_file_systems_is_an_error_naming_it(tmp_path):
    image = write_image(tmp_path / "image")
    with pytest.raises(HarnessError, match="list the UKIs on the ESP"):
        build_board_image(image, image.with_suffix(".efi"), "TEST-99-UNIT", [], [], tmp_path)


def test_an_image_without_a_uki_cannot_boot_a_board(tmp_path):
    image = write_image(tmp_path / "image")
    with pytest.raises(HarnessError, match="needs an ESP, a root partition and a UKI"):
        build_board_image(image, None, "TEST-99-UNIT", [], [], tmp_path)


def test_a_truncated_pe_has_no_sections():
    assert pe_section(b"MZ too short", ".cmdline") is None
    assert pe_section(b"MZ" + bytes(58) + b"\xff\xff\x00\x00", ".cmdline") is None


def test_the_boot_esp_is_a_gpt_disk_firmware_accepts(tmp_path):
    from harness.image.disk import gpt_problem
    from harness.image.esp import ESP_START, write_boot_esp

    (tmp_path / "BOOTX64.EFI").write_bytes(b"MZ systemd-boot")
    (tmp_path / "image.efi").write_bytes(b"MZ a UKI" * 1000)
    disk = write_boot_esp(
        tmp_path / "boot.img", tmp_path / "BOOTX64.EFI", tmp_path / "image.efi", "T", "root=X quiet"
    )
    with disk.open("rb") as f:
        (esp,) = read_gpt(f)
        assert gpt_problem(f, disk.stat().st_size) is None
    assert esp.type_uuid == ESP_TYPE and esp.offset == ESP_START
    assert disk.read_bytes()[510:512] == b"\x55\xaa"  # the protective MBR
    entry = subprocess.run(
        ["mtype", "-i", f"{disk}@@{ESP_START}", f"::/loader/entries/{ENTRY_NAME}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "efi /EFI/Linux/harness.efi" in entry and "options root=X quiet" in entry


def test_a_uefi_image_without_its_boot_loader_is_refused_before_booting(tmp_path):
    from harness.backends.qemu.firmware import resolve_firmware
    from harness.declaration.keys import Firmware
    from harness.image.parts import Image
    from tests.images import write_split_artifacts

    shared = write_bootable_image(tmp_path / "image", 512)
    write_split_artifacts(tmp_path / "image")
    image = Image.open(shared)
    with pytest.raises(HarnessError, match=r"has no /EFI/BOOT/BOOTX64\.EFI, which the firmware starts"):
        resolve_firmware(Firmware.UEFI, image)
    assert resolve_firmware(Firmware.LINUX, image) == Firmware.LINUX
    esp, _ = partition_offsets(shared)
    loader = tmp_path / "BOOTX64.EFI"
    loader.write_bytes(b"MZ systemd-boot")
    subprocess.run(["mmd", "-i", f"{shared}@@{esp}", "::/EFI/BOOT"], check=True)
    subprocess.run(["mcopy", "-i", f"{shared}@@{esp}", str(loader), "::/EFI/BOOT/BOOTX64.EFI"], check=True)
    assert resolve_firmware(Firmware.UEFI, image) == Firmware.UEFI
