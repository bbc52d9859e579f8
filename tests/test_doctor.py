"""os-harness check-image: each wall of an image of one's own gets its finding and fix,
and what would cost a whole timeout is refused before a boot."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import attrs
import pytest

from harness.errors import HarnessError
from harness.image.disk import LINUX_FILESYSTEM
from harness.image.doctor import Finding, Verdict, boot_blockers, check, report
from harness.image.parts import Image, ImageParts
from tests.images import gpt
from tests.test_own_images import ROOT, bzimage, debian_initrd, mbr_disk
from tests.test_rootfs import FS_SIZE, OFFSET, disk, usrmerge

SECTOR = 512


def debian_disk(tmp_path: Path, generator: bool = True) -> Path:
    """An ext4 bookworm root (systemd 252) at OFFSET, in a GPT whose one partition has the
    generic Linux type, as an mmdebstrap or wic build makes it."""
    tree = usrmerge(tmp_path / "tree")
    if not generator:
        (tree / "usr/lib/systemd/system-generators/harness-credential-units").unlink()
    path = disk(tmp_path, tree, "debian-12.1.img")
    table = gpt(
        [(LINUX_FILESYSTEM, ROOT, "root", OFFSET // SECTOR, (OFFSET + FS_SIZE) // SECTOR - 1)],
        size=path.stat().st_size,
    )
    with path.open("r+b") as f:  # the table's sectors only: the filesystem stays where it is
        f.write(table[:OFFSET])
        f.seek(len(table) - 33 * SECTOR)
        f.write(table[-33 * SECTOR :])
    return path


def parts(tmp_path: Path, path: Path, **given: object) -> ImageParts:
    (tmp_path / "bzImage").write_bytes(bzimage())
    initrd = debian_initrd(tmp_path / "initrd.img-6.1.0-28-amd64", systemd=False)
    return ImageParts(path, kernel=tmp_path / "bzImage", initrd=initrd, **given)  # type: ignore[arg-type]


def by_part(findings: list[Finding]) -> dict[str, Finding]:
    return {f.part: f for f in findings}


def test_a_whole_debian_image_is_ready_for_direct_kernel_boot(tmp_path):
    text, ready = report(parts(tmp_path, debian_disk(tmp_path), root=f"PARTUUID={ROOT}"))
    assert ready, text
    assert "boots with: linux" in text
    found = by_part(check(parts(tmp_path, tmp_path / "debian-12.1.img", root=f"PARTUUID={ROOT}")))
    assert found["systemd"].verdict == Verdict.OK and "252" in found["systemd"].what
    assert found["root"].what.endswith("ext4 'root', Debian GNU/Linux 12 (bookworm)")
    assert found["initrd"].verdict == Verdict.NOTE and "has no systemd" in found["initrd"].what
    assert found["uefi"].verdict == Verdict.NOTE  # MISSING where no other firmware boots it
    assert found["tools"].verdict == Verdict.NOTE and "stty" in found["tools"].what


def test_a_generic_root_not_given_is_missing_with_the_root_to_give(tmp_path):
    text, ready = report(parts(tmp_path, debian_disk(tmp_path)))
    assert not ready
    assert f"fix: say which is the root: -Droot=PARTUUID={ROOT}" in text


def test_systemd_older_than_256_without_the_generator_is_refused_before_boot(tmp_path):
    p = parts(tmp_path, debian_disk(tmp_path, generator=False), root=f"PARTUUID={ROOT}")
    found = by_part(check(p))
    assert found["systemd"].verdict == Verdict.MISSING
    assert "os-harness guest-files" in found["systemd"].fix
    (blocker,) = boot_blockers(Image.open(p))
    assert "the harness's generator is not installed" in blocker.what
    assert Image.open(p).systemd_version == 252  # from the root: the initrd has no systemd


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (util-linux) is not installed")
def test_an_mbr_disk_lists_its_partitions(tmp_path):
    found = by_part(check(parts(tmp_path, mbr_disk(tmp_path / "board.img"))))
    assert "MBR" in found["disk"].what and "PARTUUID=1234abcd-02" in found["disk"].what
    assert found["root"].fix == "say which is the root: -Droot=PARTUUID=1234abcd-02 (or --root=)"


def test_a_qcow2_is_read_as_well_as_its_raw_disk(tmp_path):
    raw = debian_disk(tmp_path)
    qcow2 = tmp_path / "debian-12.1.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    found = by_part(check(parts(tmp_path, qcow2, root=f"PARTUUID={ROOT}")))
    assert "qcow2, GPT" in found["disk"].what
    assert found["systemd"].verdict == Verdict.OK and "252" in found["systemd"].what
    assert Image.open(parts(tmp_path, qcow2, root=f"PARTUUID={ROOT}")).systemd_version == 252


def test_no_kernel_beside_the_disk_says_how_to_give_it(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(gpt([(LINUX_FILESYSTEM, uuid.uuid4(), "", 2048, 4095)], size=4 << 20))
    found = by_part(check(ImageParts(path)))
    assert found["kernel"].verdict == Verdict.MISSING and "-Dkernel=PATH" in found["kernel"].fix
    assert found["architecture"].verdict == Verdict.MISSING


def test_a_disk_that_is_not_there(tmp_path):
    text, ready = report(ImageParts(tmp_path / "nope.img"))
    assert not ready and "no file at" in text


def test_the_wrapper_refuses_a_root_without_systemd(tmp_path):
    p = parts(tmp_path, debian_disk(tmp_path), root=f"PARTUUID={ROOT}")
    image = Image.open(p)
    assert boot_blockers(image) == [] and image.root_facts is not None
    hollow = attrs.evolve(
        image, root_facts=attrs.evolve(image.root_facts, systemd_version=None, init="/sbin/init")
    )
    with pytest.raises(HarnessError, match="has no systemd; the harness runs each test as a systemd unit"):
        raise boot_blockers(hollow)[0]


def test_systemd_older_than_252_in_the_root_is_refused(tmp_path):
    image = Image.open(parts(tmp_path, debian_disk(tmp_path), root=f"PARTUUID={ROOT}"))
    assert image.root_facts is not None
    old = attrs.evolve(image, root_facts=attrs.evolve(image.root_facts, systemd_version=247))
    (blocker,) = boot_blockers(old)
    assert "has systemd 247; the harness needs 252 or later" in blocker.what


def test_an_esp_without_a_uki_cannot_carry_the_command_line(tmp_path):
    from harness.image.disk import ESP_TYPE

    path = tmp_path / "cloud.img"
    path.write_bytes(
        gpt(
            [(ESP_TYPE, uuid.uuid4(), "", 2048, 4095), (LINUX_FILESYSTEM, ROOT, "", 4096, 6143)], size=4 << 20
        )
    )
    found = by_part(check(ImageParts(path, root=f"PARTUUID={ROOT}", architecture="x86_64")))
    assert found["uefi"].verdict == Verdict.MISSING and "no UKI" in found["uefi"].what
