"""`os-harness check-image`: what the harness needs of an image and what this one has,
read without booting it, each missing piece with the fix for that kind of image.

The wrapper runs `boot_blockers` before every boot: what would otherwise cost a whole
timeout (no systemd in the root, the generator missing where systemd is older than 256)
is refused at once, with the same words the doctor prints.
"""

from __future__ import annotations

import enum
from pathlib import Path

import attrs

from harness.errors import HarnessError
from harness.guest.files import GENERATOR_SINCE
from harness.guest.units import MINIMUM_SYSTEMD
from harness.image.disk import MIB, DiskFormat, PartitionTable, detect_format, partition_table
from harness.image.initrd import InitrdFacts, known_initrd_facts
from harness.image.parts import Image, ImageParts, architecture, find_root, named_part, sibling

GUEST_FILES_FIX = (
    "install the harness's guest files during the image build: os-harness guest-files ROOTDIR "
    "(docs/own-image.md has it for mkosi, Yocto, debos and mmdebstrap)"
)
ESSENTIAL_TOOLS = ("sh", "systemctl", "journalctl")  # without these no test unit reports
BOOT_PATHS = ("kernel", "uefi")  # the findings of firmware 'linux' and 'uefi'


class Verdict(enum.StrEnum):
    OK = "ok"
    NOTE = "note"  # works, with a difference the user should know
    MISSING = "MISSING"  # a firmware or a feature cannot work


@attrs.frozen
class Finding:
    part: str
    verdict: Verdict
    what: str
    fix: str = ""


def boot_blockers(image: Image) -> list[HarnessError]:
    """What in the image's root keeps any test from reporting; empty where the root could
    not be read (the doctor says so)."""
    facts = image.root_facts
    if facts is None or not facts.readable:
        return []
    where = f"{image.path}: its root filesystem ({image.root})"
    if facts.systemd_version is None and not facts.init.endswith("/systemd"):
        return [
            HarnessError(
                f"{where} has no systemd; the harness runs each test as a systemd unit",
                "boot an image whose init is systemd (252 or later), or give the right root=",
            )
        ]
    if facts.systemd_version is None:
        return []  # systemd is init, its library where we did not look: the initrd's word stands
    if facts.systemd_version < MINIMUM_SYSTEMD:
        return [
            HarnessError(
                f"{where} has systemd {facts.systemd_version}; the harness needs {MINIMUM_SYSTEMD} or later "
                "(credentials imported from SMBIOS and fw_cfg)",
                "build the image from a newer release, or with a newer systemd (backports)",
            )
        ]
    if facts.systemd_version < GENERATOR_SINCE and not facts.has_generator:
        return [
            HarnessError(
                f"{where} has systemd {facts.systemd_version}, which reads no units from credentials "
                f"before {GENERATOR_SINCE}, and the harness's generator is not installed: the test "
                "unit would never start",
                GUEST_FILES_FIX,
            )
        ]
    return []


def check(parts: ImageParts) -> list[Finding]:
    """Every finding about the image, in the order a user reads them."""
    disk = parts.disk
    if not disk.is_file():
        return [Finding("disk", Verdict.MISSING, f"no file at {disk}", "give the path of the disk image")]
    findings: list[Finding] = []
    try:
        fmt = parts.disk_format or detect_format(disk.resolve())
        table = partition_table(disk.resolve(), fmt)
    except HarnessError as e:
        return [Finding("disk", Verdict.MISSING, e.what, e.fix)]
    findings.append(disk_finding(disk, fmt, table))
    try:
        kernel = named_part(parts.kernel, "kernel") or sibling(disk, ".vmlinuz")
        initrd = named_part(parts.initrd, "initrd") or sibling(disk, ".initrd")
        uki = named_part(parts.uki, "UKI") or sibling(disk, ".efi")
    except HarnessError as e:
        return [*findings, Finding("parts", Verdict.MISSING, e.what, e.fix)]
    try:
        facts = known_initrd_facts(initrd) if initrd else None
    except HarnessError as e:
        return [*findings, Finding("initrd", Verdict.MISSING, e.what, e.fix)]
    findings += boot_part_findings(kernel, initrd, facts)
    findings.append(uefi_finding(table, uki))
    try:
        arch = architecture(parts, facts, kernel, uki)
    except HarnessError as e:
        return [*findings, Finding("architecture", Verdict.MISSING, e.what, e.fix)]
    findings.append(Finding("architecture", Verdict.OK, arch))
    try:
        image = Image.open(attrs.evolve(parts, disk_format=fmt, kernel=kernel, initrd=initrd, uki=uki))
    except HarnessError as e:
        try:
            find_root(parts.root, table, arch, disk, fmt)
        except HarnessError as root_error:
            return [*findings, Finding("root", Verdict.MISSING, root_error.what, root_error.fix)]
        return [*findings, Finding("image", Verdict.MISSING, e.what, e.fix)]
    return alternatives(findings + root_findings(image))


def alternatives(findings: list[Finding]) -> list[Finding]:
    """A firmware that cannot boot the image is only a note where the other one can."""
    if not any(f.part in BOOT_PATHS and f.verdict == Verdict.OK for f in findings):
        return findings
    return [
        attrs.evolve(f, verdict=Verdict.NOTE) if f.part in BOOT_PATHS and f.verdict == Verdict.MISSING else f
        for f in findings
    ]


def disk_finding(disk: Path, fmt: DiskFormat, table: PartitionTable) -> Finding:
    kind = {"gpt": "GPT", "dos": "MBR"}.get(table.kind, "no partition table")
    size = sum(p.size for p in table.partitions) // MIB
    listed = "; ".join(p.describe() for p in table.partitions) or "none"
    if table.problem:
        return Finding("disk", Verdict.MISSING, f"{disk.name}: {fmt}, {kind}, damaged: {table.problem}")
    return Finding("disk", Verdict.OK, f"{disk.name}: {fmt}, {kind}, {size} MiB in partitions: {listed}")


def boot_part_findings(kernel: Path | None, initrd: Path | None, facts: InitrdFacts | None) -> list[Finding]:
    found = [
        Finding("kernel", Verdict.OK, str(kernel))
        if kernel
        else Finding(
            "kernel",
            Verdict.MISSING,
            "none beside the disk: firmware 'linux' (direct kernel boot, the fastest) cannot boot it",
            "give it: -Dkernel=PATH (or --kernel=); Debian and Yocto name it vmlinuz-VERSION or bzImage/Image",
        )
    ]
    if initrd is None:
        found.append(
            Finding("initrd", Verdict.NOTE, "none: the kernel boots alone and must have the root's drivers")
        )
    elif facts is not None and facts.systemd_version is None:
        found.append(
            Finding(
                "initrd",
                Verdict.NOTE,
                f"{initrd} has no systemd (initramfs-tools, dracut without systemd, busybox): storage "
                "'volatile' keeps the test's writes until the VM ends instead of discarding them at a "
                "reboot (systemd.volatile= is the initrd's job), and the systemd version comes from the root",
            )
        )
    else:
        version = facts.systemd_version if facts else None
        found.append(Finding("initrd", Verdict.OK, f"{initrd} (systemd {version})"))
    return found


def uefi_finding(table: PartitionTable, uki: Path | None) -> Finding:
    if table.esp is None:
        return Finding(
            "uefi",
            Verdict.MISSING,
            "no EFI system partition: firmware 'uefi' cannot boot it",
            "add an ESP with systemd-boot and a UKI, or use firmware 'linux'",
        )
    if uki is None:
        return Finding(
            "uefi",
            Verdict.MISSING,
            "an EFI system partition, and no UKI: through GRUB or a boot entry of its own the test's "
            "kernel command line does not arrive (systemd-stub 254 or later reads it from SMBIOS), "
            "and the test unit would not start",
            "give the image's UKI (-Duki=PATH; mkosi writes NAME.efi beside the disk), or use firmware 'linux'",
        )
    return Finding("uefi", Verdict.OK, f"an EFI system partition and the UKI {uki}")


def root_findings(image: Image) -> list[Finding]:
    facts = image.root_facts
    where = f"root={image.root}"
    if facts is None:
        return [
            Finding("root", Verdict.NOTE, f"{where}: the partition it names is not in the table, not read")
        ]
    if not facts.readable:
        return [
            Finding(
                "root",
                Verdict.NOTE,
                f"{where}: {facts.filesystem or 'no filesystem'}, not read: {facts.reason}",
            )
        ]
    found = [
        Finding(
            "root",
            Verdict.OK,
            f"{where}: {facts.filesystem} '{facts.label}', {facts.os_name or 'no os-release'}",
        )
    ]
    blockers = boot_blockers(image)
    for blocker in blockers:
        found.append(Finding("systemd", Verdict.MISSING, blocker.what, blocker.fix))
    if not blockers:
        needed = facts.has_generator and (facts.systemd_version or 0) < GENERATOR_SINCE
        generator = (
            f", the harness's generator installed (systemd < {GENERATOR_SINCE} needs it)" if needed else ""
        )
        version = facts.systemd_version or "(its version not found)"
        found.append(Finding("systemd", Verdict.OK, f"{version}, init {facts.init}{generator}"))
    if facts.init and not facts.init.endswith("/systemd"):
        found.append(
            Finding(
                "init",
                Verdict.NOTE,
                f"/sbin/init is {facts.init}, not systemd: the test unit starts only if it starts systemd",
                "boot systemd as init (init= on the command line, or /sbin/init -> systemd)",
            )
        )
    essential = [t for t in facts.missing_tools if t in ESSENTIAL_TOOLS]
    others = [t for t in facts.missing_tools if t not in ESSENTIAL_TOOLS]
    if essential:
        found.append(
            Finding("tools", Verdict.MISSING, f"missing: {', '.join(essential)}", "install them in the image")
        )
    if others:
        found.append(
            Finding(
                "tools",
                Verdict.NOTE,
                f"not in the image: {', '.join(others)} (the harness's guest scripts use them: "
                "host-driven tests, extra-trees or subtests may fail)",
                "install them in the image (coreutils, gzip, tar, util-linux)",
            )
        )
    if not facts.has_udev:
        found.append(
            Finding(
                "udev",
                Verdict.NOTE,
                "no systemd-udevd: /dev/disk/by-* links and extra disks by serial are missing",
            )
        )
    return found


def report(parts: ImageParts) -> tuple[str, bool]:
    """The doctor's text, and whether the image can boot a test."""
    findings = check(parts)
    width = max(len(f.part) for f in findings)
    lines = [f"os-harness check-image {parts.disk}"]
    for f in findings:
        lines.append(f"  {f.verdict:<7} {f.part:<{width}}  {f.what}")
        if f.fix and f.verdict != Verdict.OK:
            lines.append(f"  {'':<7} {'':<{width}}  fix: {f.fix}")
    boots = [firmware for firmware, part in (("linux", "kernel"), ("uefi", "uefi")) if ok(findings, part)]
    fatal = any(f.verdict == Verdict.MISSING and f.part not in ("kernel", "uefi") for f in findings)
    ready = bool(boots) and not fatal
    lines.append(f"  boots with: {', '.join(boots)}" if ready else "  not ready: fix what is MISSING above")
    return "\n".join(lines), ready


def ok(findings: list[Finding], part: str) -> bool:
    return any(f.part == part and f.verdict == Verdict.OK for f in findings)
