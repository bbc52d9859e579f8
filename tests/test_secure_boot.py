"""firmware 'uefi-secure-boot': what makes an image bootable with Secure Boot enforced
(a signed UKI, a systemd-stub that reads SMBIOS), the SKIP where it is not, and the
machine and firmware QEMU gets for it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from harness.backends.fake import FakeBackend, passing
from harness.backends.qemu.command import qemu_command
from harness.backends.qemu.firmware import Ovmf, secure_boot_vars
from harness.errors import HarnessError
from harness.image.esp import pe_signed, secure_boot_refusal
from harness.image.parts import Image, ImageParts
from harness.settings import Settings
from harness.verdict.results import Status
from harness.wrapper import RunContext, run_test
from tests.helpers import declaration
from tests.images import write_image
from tests.test_qemu_command import FILES, plan

PE_AT = 0x80


def pe_file(certificates: int, magic: int = 0x20B) -> bytes:
    """The headers of a PE file whose certificate table is `certificates` bytes long."""
    header = bytearray(1024)
    header[:2] = b"MZ"
    struct.pack_into("<I", header, 0x3C, PE_AT)
    header[PE_AT : PE_AT + 4] = b"PE\0\0"
    optional = PE_AT + 24
    struct.pack_into("<H", header, optional, magic)
    directories = optional + (112 if magic == 0x20B else 96)
    struct.pack_into("<II", header, directories + 32, 4096 if certificates else 0, certificates)
    return bytes(header)


def test_a_pe_file_is_signed_when_its_certificate_table_is_not_empty():
    assert pe_signed(pe_file(1500))
    assert pe_signed(pe_file(1500, magic=0x10B))  # PE32
    assert not pe_signed(pe_file(0))
    assert not pe_signed(b"MZ not really a UKI")
    assert not pe_signed(pe_file(1500)[:200])  # cut off before its data directories
    assert not pe_signed(b"")


def test_an_image_boots_with_secure_boot_only_signed_and_with_a_stub_reading_smbios(tmp_path):
    image = Image.open(write_image(tmp_path / "unsigned"))
    why = secure_boot_refusal(image)
    assert why and "image.efi is not signed" in why and "-Dsecure-boot=enabled" in why
    signed = tmp_path / "signed"
    signed.mkdir()
    (signed / "image.efi").write_bytes(pe_file(1500))
    assert secure_boot_refusal(Image.open(write_image(signed))) is None
    old = tmp_path / "old"
    old.mkdir()
    (old / "image.efi").write_bytes(pe_file(1500))
    why = secure_boot_refusal(Image.open(write_image(old, systemd_version=252)))
    assert why and "older than 254" in why


@pytest.mark.parametrize(
    "features, why",
    [
        (frozenset({"dut", "secure-boot"}), "image.efi is not signed"),
        (frozenset({"dut"}), "lacks required features: secure-boot"),
    ],
)
def test_an_unsigned_image_or_a_machine_without_secure_boot_skips_before_booting(tmp_path, features, why):
    backend = FakeBackend(passing(), features=features)
    ctx = RunContext(tmp_path / "logs", tmp_path / "build", "run-1", snapshot_dir=tmp_path / "snapshots")
    decl = declaration("--firmware=uefi-secure-boot")
    record = run_test(
        decl,
        ImageParts(write_image(tmp_path / "image")),
        ctx,
        backend,
        Settings.from_environment({"HARNESS_ACCEL": "tcg"}),
    )
    assert record.status == Status.SKIP and why in record.reason
    assert backend.plans == []


def test_the_firmware_key_implies_the_secure_boot_feature():
    assert declaration("--firmware=uefi-secure-boot").requires == ("secure-boot",)
    assert declaration("--firmware=uefi-secure-boot", "--tpm=true").requires == ("tpm", "secure-boot")
    assert declaration("--firmware=uefi").requires == ()


def test_the_machine_has_smm_and_secure_flash_only_with_secure_boot():
    ovmf = Ovmf(Path("/ovmf/CODE.secboot.fd"), Path("/ovmf/VARS.snakeoil.fd"), "test")
    cmd = qemu_command(plan("uefi-secure-boot"), FILES, ovmf, Path("/tmp/h/OVMF_VARS.fd"), None, None, [])
    assert cmd[cmd.index("-machine") + 1].endswith(",smm=on")
    assert "driver=cfi.pflash01,property=secure,value=on" in cmd
    assert "if=pflash,format=raw,readonly=on,file=/ovmf/CODE.secboot.fd" in cmd
    plain = qemu_command(plan("uefi"), FILES, ovmf, Path("/tmp/h/OVMF_VARS.fd"), None, None, [])
    assert "smm=on" not in plain[plain.index("-machine") + 1]
    assert "driver=cfi.pflash01,property=secure,value=on" not in plain


def test_the_variable_store_is_debians_with_its_test_key_or_the_users(tmp_path):
    mine = tmp_path / "VARS.fd"
    mine.write_bytes(b"vars")
    assert secure_boot_vars(Settings.from_environment({"HARNESS_SECURE_BOOT_VARS": str(mine)})) == mine
    with pytest.raises(HarnessError) as e:
        secure_boot_vars(
            Settings.from_environment({"HARNESS_SECURE_BOOT_VARS": str(tmp_path / "missing.fd")})
        )
    assert "missing.fd is not there" in e.value.what and "HARNESS_SECURE_BOOT_VARS" in e.value.fix
