"""The image under test, described by its parts (`ImageParts`), and what the harness must
know about it before booting it.

The user names the disk (raw or qcow2, told by its content, any file name, symlinks
allowed) and whichever of the rest they have: kernel, initrd, UKI, `root=`, architecture.
What is not named is found: mkosi writes `NAME.raw` and beside it `NAME.vmlinuz`,
`NAME.initrd` and `NAME.efi` (the UKI), with any dots in NAME (`image_1.2.raw`); the root
partition is the one of the architecture's Discoverable Partitions type; the architecture
comes from the initrd, else the kernel's or the UKI's header (harness.image.initrd).
"""

from __future__ import annotations

import argparse
import re
import uuid
from pathlib import Path

import attrs

from harness.errors import HarnessError
from harness.image.disk import (
    LINUX_FILESYSTEM,
    MBR_LINUX,
    ROOT_PARTITION_TYPES,
    DiskFormat,
    DiskPartition,
    PartitionTable,
    detect_format,
    partition_table,
    raw_partition,
)
from harness.image.initrd import InitrdFacts, kernel_architecture, known_initrd_facts
from harness.image.rootfs import RootFacts, filesystem_ids, known_root_facts, root_facts, unreadable

# Debian's and Go's names for the kernel's (uname -m), which the harness uses.
ARCHITECTURE_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}
ROOT_SPELLINGS = ("PARTUUID=", "PARTLABEL=", "UUID=", "LABEL=", "/dev/")


@attrs.frozen
class ImageParts:
    """An image as the user names it: the disk, and whichever of the rest they give
    (None and "" mean: find it). `root` is the kernel's `root=` value as-is."""

    disk: Path
    kernel: Path | None = None
    initrd: Path | None = None
    uki: Path | None = None
    root: str = ""
    architecture: str = ""
    disk_format: DiskFormat | None = None


@attrs.frozen
class Image:
    path: Path  # the disk, symlinks resolved (an overlay names it as its backing file)
    kernel: Path | None
    initrd: Path | None
    uki: Path | None
    architecture: str
    root: str  # the kernel's root= value ("" where the kernel finds it alone, e.g. a UKI's own)
    esp: DiskPartition | None
    systemd_version: int | None = None  # None: the initrd does not tell
    os_name: str = ""  # PRETTY_NAME of its os-release, e.g. "Debian GNU/Linux 12 (bookworm)"
    initrd_drivers: frozenset[str] | None = None  # see InitrdFacts.drivers
    kernel_drivers: frozenset[str] | None = None  # see InitrdFacts.kernel_drivers
    disk_format: DiskFormat = DiskFormat.RAW
    table: PartitionTable = attrs.field(factory=lambda: PartitionTable("", ()))
    root_partition: DiskPartition | None = None  # the partition `root` names, where the table tells
    initrd_has_systemd: bool = True  # False: initramfs-tools, busybox (no systemd.volatile=)
    root_facts: RootFacts | None = None  # None: the root's partition is not known

    @property
    def has_esp(self) -> bool:
        return self.esp is not None

    @classmethod
    def open(cls, path: Path | ImageParts) -> Image:
        return open_image(path if isinstance(path, ImageParts) else ImageParts(path))


def image_hint(disk: Path) -> str:
    """How the user remakes this image: mkosi's command where it looks like this project's
    mkosi output, their own image build otherwise."""
    if disk.parent.name == "mkosi.output" or (sibling(disk, ".manifest") is not None):
        return "rebuild it: meson compile -C build mkosi"
    return "rebuild or recopy it with the tool that made it (os-harness check-image DISK says what it has)"


def sibling(disk: Path, suffix: str) -> Path | None:
    """mkosi's split-out artifact beside `disk`: NAME.raw -> NAME.vmlinuz, the name cut
    at its last dot only (image_1.2.raw -> image_1.2.vmlinuz); beside a symlink first, then
    beside what it points to."""
    for d in dict.fromkeys((disk, disk.resolve())):
        stem = d.name[: -len(d.suffix)] if d.suffix else d.name
        candidate = d.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def open_image(parts: ImageParts) -> Image:
    given = parts.disk
    if not given.is_file():
        raise HarnessError(
            f"no image at {given}",
            "build it first (meson compile -C build mkosi), or give your disk with -Dimage=PATH",
        )
    disk = given.resolve()
    fmt = detect_format(disk)
    if parts.disk_format and parts.disk_format != fmt:
        raise HarnessError(
            f"{disk} is a {fmt} disk, and the image format given is {parts.disk_format}",
            "leave the format out (the harness tells it by the content), or give the right one",
        )
    kernel = named_part(parts.kernel, "kernel") or sibling(given, ".vmlinuz")
    initrd = named_part(parts.initrd, "initrd") or sibling(given, ".initrd")
    uki = named_part(parts.uki, "UKI") or sibling(given, ".efi")
    table = partition_table(disk, fmt)
    if table.problem:
        raise HarnessError(
            f"{disk} is damaged: {table.problem}", "an interrupted build or copy? " + image_hint(given)
        )
    facts = known_initrd_facts(initrd) if initrd else None
    arch = architecture(parts, facts, kernel, uki)
    root, root_partition = find_root(parts.root, table, arch, given, fmt)
    esp = table.esp
    root_fs = read_root(disk, fmt, root_partition)
    told = root_fs if root_fs and root_fs.readable and root_fs.systemd_version else None
    return Image(
        disk,
        kernel,
        initrd,
        uki,
        arch,
        root,
        esp,
        told.systemd_version if told else facts.systemd_version if facts else None,
        (facts.os_name if facts else "") or (told.os_name if told else ""),
        facts.drivers if facts else None,
        facts.kernel_drivers if facts else None,
        fmt,
        table,
        root_partition,
        facts is not None and facts.systemd_version is not None,
        root_fs,
    )


def read_root(disk: Path, fmt: DiskFormat, partition: DiskPartition | None) -> RootFacts | None:
    """What the root filesystem holds (harness.image.rootfs), where the partition is known."""
    if partition is None:
        return None
    if fmt == DiskFormat.RAW:
        return known_root_facts(disk, partition.offset, partition.size)
    return known_root_facts(disk, partition.offset, partition.size, lambda: qcow2_root_facts(disk, partition))


def qcow2_root_facts(disk: Path, partition: DiskPartition) -> RootFacts:
    """root_facts of a qcow2's partition, through a sparse raw copy of it alone: seconds,
    once per qcow2 file (known_root_facts keeps them)."""
    where = f"partition {partition.number} of {disk}"
    try:
        with raw_partition(disk, partition) as copy:
            facts = root_facts(copy, 0, partition.size)
    except HarnessError as e:
        return unreadable(f"could not copy {where} to read it: {e.what}")
    return attrs.evolve(facts, reason=facts.reason.replace(f"byte 0 of {copy}", where))


def named_part(path: Path | None, what: str) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise HarnessError(f"the {what} {path} does not exist", f"give the path of the image's {what}")
    return path.resolve()


def architecture(parts: ImageParts, facts: InitrdFacts | None, kernel: Path | None, uki: Path | None) -> str:
    """The image's architecture: the initrd's binaries, else the kernel's or the UKI's
    header; the user's word where given, which must agree."""
    found, source = (facts.architecture if facts else None), "initrd"
    for name, header in (("kernel", kernel), ("UKI", uki)):
        if found is None and header is not None:
            found, source = kernel_architecture(header), name
    given = ARCHITECTURE_ALIASES.get(parts.architecture, parts.architecture)
    if given and given not in ROOT_PARTITION_TYPES:
        raise HarnessError(
            f"architecture '{parts.architecture}' is none the harness knows",
            f"give one of {', '.join(ROOT_PARTITION_TYPES)} (the kernel's names: uname -m)",
        )
    if given and found and given != found:
        raise HarnessError(
            f"{parts.disk}: the architecture given is {given}, and its {source} is {found}",
            "give the architecture the image was built for, or leave it out",
        )
    if given:
        return given
    if found:
        return found
    raise HarnessError(
        f"cannot tell the architecture of {parts.disk}: no initrd, kernel or UKI says it",
        "give it: -Darchitecture=x86_64 (or --architecture=)",
    )


def find_root(
    given: str, table: PartitionTable, arch: str, disk: Path, fmt: DiskFormat = DiskFormat.RAW
) -> tuple[str, DiskPartition | None]:
    """The root= value and the partition it names: the user's, else the partition whose
    type is the architecture's Discoverable Partitions root type."""
    if given:
        if not given.startswith(ROOT_SPELLINGS):
            raise HarnessError(
                f"root '{given}' is not a root= the kernel reads",
                "spell it PARTUUID=..., PARTLABEL=..., UUID=..., LABEL=... or /dev/vdaN",
            )
        if given.startswith(("/dev/sd", "/dev/hd", "/dev/mmcblk", "/dev/nvme")):
            raise HarnessError(
                f"root '{given}': in the harness's VM the disk is virtio's, /dev/vda",
                "give its partition as /dev/vdaN, or better PARTUUID=... (os-harness check-image lists them)",
            )
        named = named_partition(given, table, disk, fmt)
        if given.startswith(("PARTUUID=", "PARTLABEL=", "/dev/vd")) and named is None:
            raise HarnessError(
                f"{disk} has no partition {given}; it has: "
                + ("; ".join(p.describe() for p in table.partitions) or "no partition table"),
                "give one of those as root",
            )
        return given, named
    roots = table.find(ROOT_PARTITION_TYPES.get(arch, uuid.UUID(int=0)))
    if roots:
        return f"PARTUUID={roots[0].partuuid}", roots[0]
    foreign = [a for a, t in ROOT_PARTITION_TYPES.items() if a != arch and table.find(t)]
    if foreign:
        raise HarnessError(
            f"{disk}: its kernel or initrd is {arch} but the root partition is for {foreign[0]}",
            "the image's architecture is inconsistent: rebuild it with one architecture",
        )
    raise HarnessError(root_missing(table, arch, disk), root_fix(table))


def named_partition(root: str, table: PartitionTable, disk: Path, fmt: DiskFormat) -> DiskPartition | None:
    """The partition a root= names: by PARTUUID or PARTLABEL, by its number (/dev/vdaN:
    the VM's disk is virtio's), or by its filesystem's UUID or LABEL (blkid, raw disks)."""
    if device := re.fullmatch(r"/dev/vd[a-z](\d*)", root):
        if not device.group(1):  # the whole disk: a bare filesystem
            return None if table.kind else DiskPartition(0, "", "", "", 0, disk.stat().st_size)
        return next((p for p in table.partitions if p.number == int(device.group(1))), None)
    for p in table.partitions:
        if root.lower() in (f"partuuid={p.partuuid}", f"partlabel={p.label.lower()}"):
            return p
    if root.startswith(("UUID=", "LABEL=")) and fmt == DiskFormat.RAW:
        for p in table.partitions:
            fs_uuid, label = filesystem_ids(disk, p.offset, p.size)
            if root in (f"UUID={fs_uuid}", f"LABEL={label}"):
                return p
    return None


def root_missing(table: PartitionTable, arch: str, disk: Path) -> str:
    if not table.kind:
        return f"{disk} has no partition table, so no root partition to find"
    kind = "GPT" if table.kind == "gpt" else "MBR"
    found = "; ".join(p.describe() for p in table.partitions) or "no partitions"
    typed = (
        f"of the {arch} root type {ROOT_PARTITION_TYPES.get(arch)}" if table.kind == "gpt" else "it can tell"
    )
    return f"{disk} has no root partition {typed} ({kind}: {found})"


def root_fix(table: PartitionTable) -> str:
    linux = [p for p in table.partitions if p.type in (str(LINUX_FILESYSTEM), MBR_LINUX)]
    if len(linux) == 1:
        return f"say which is the root: -Droot=PARTUUID={linux[0].partuuid} (or --root=)"
    if not table.kind:
        return "a bare filesystem boots as a disk: -Droot=/dev/vda (or --root=)"
    return (
        "say which is the root: -Droot=PARTUUID=... (or --root=), as the image's kernel command line has it"
    )


# The options that name an image's parts besides its disk (add_image_options).
IMAGE_PARTS = ("kernel", "initrd", "uki", "root", "architecture", "image-format")


def add_image_options(p: argparse.ArgumentParser, disk_positional: bool = False) -> None:
    """The image by its parts: the disk (--image, or a positional `image` for the doctor),
    and what the harness would otherwise find beside it or in it (empty: find it)."""
    what = (
        "the disk image: raw or qcow2, any name (mkosi's NAME.raw, a .wic, a cloud image); "
        "or a directory holding one .raw (mkosi's output directory)"
    )
    if disk_positional:
        p.add_argument("image", help=what)
    else:
        p.add_argument("--image", required=True, help=what)
    p.add_argument("--kernel", default="", help="the kernel (default: NAME.vmlinuz beside the disk)")
    p.add_argument(
        "--initrd", default="", help="the initrd (default: NAME.initrd beside the disk; none: boot without)"
    )
    p.add_argument("--uki", default="", help="the unified kernel image (default: NAME.efi beside the disk)")
    p.add_argument(
        "--root",
        default="",
        help="root= as the image's kernel wants it: PARTUUID=..., LABEL=..., /dev/vda2 (default: the "
        "partition of the architecture's root type)",
    )
    p.add_argument(
        "--architecture", default="", help="x86_64, aarch64, ... (default: from the initrd or kernel)"
    )
    p.add_argument(
        "--image-format",
        default="",
        choices=["", "raw", "qcow2"],
        help="the disk's format (default: by its content)",
    )


def image_parts_of(o: argparse.Namespace) -> ImageParts:
    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return ImageParts(
        disk=disk_path(Path(o.image)),
        kernel=path(o.kernel),
        initrd=path(o.initrd),
        uki=path(o.uki),
        root=o.root or "",
        architecture=o.architecture or "",
        disk_format=DiskFormat(o.image_format) if o.image_format else None,
    )


def disk_path(given: Path) -> Path:
    """The disk a --image names: the file, or the one .raw of a directory (mkosi's output,
    where with ImageVersion= NAME.raw is a symlink to NAME_VERSION.raw: one disk)."""
    if not given.is_dir():
        return given
    disks: dict[Path, Path] = {}
    for raw in sorted(given.glob("*.raw"), key=lambda p: (p.is_symlink(), p.name)):
        disks.setdefault(raw.resolve(), raw)  # the file itself before the links to it
    if len(disks) != 1:
        raise HarnessError(
            f"{given} holds {len(disks)} .raw disk images, and the harness takes one",
            "name the disk itself: -Dimage=PATH (or --image=PATH)",
        )
    return next(iter(disks.values()))
