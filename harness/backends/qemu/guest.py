"""What a VM's guest gets besides its disk: the credentials and, on a UEFI boot, the
extra kernel command line, as SMBIOS strings (fw_cfg where the machine has no SMBIOS);
and for systemd-stub before 254, which reads no command line from SMBIOS, a boot disk of
its own carrying it."""

from __future__ import annotations

from harness.backends.qemu.architectures import CONSOLES, smbios_supported
from harness.backends.qemu.command import RunFiles, VmConfig
from harness.backends.qemu.credentials import (
    cmdline_extra_strings,
    fw_cfg_args,
    smbios_args,
    smbios_credential,
)
from harness.declaration.credential import Credential
from harness.errors import HarnessError
from harness.image.disk import DiskFormat
from harness.image.esp import STUB_SMBIOS_SINCE, run_tool, uki_cmdline, write_boot_esp


def boot_esp_args(cfg: VmConfig, files: RunFiles, cmdline: tuple[str, ...]) -> list[str]:
    """A boot disk of its own, ahead of the image, for systemd-stub before 254, which takes
    no command line from SMBIOS: the image's systemd-boot and UKI with one entry carrying
    the harness's command line (root= too: the image's ESP is not the one booted)."""
    image = cfg.image
    if image.uki is None:
        raise HarnessError(
            f"{image.path} has no UKI beside it",
            "give it: -Duki=PATH (mkosi writes NAME.efi beside the disk)",
        )
    esp = image.esp
    if esp is None or image.disk_format != DiskFormat.RAW:
        raise HarnessError(
            f"{image.path}: its systemd-stub ({image.systemd_version}) takes no command line from SMBIOS, and the "
            "harness takes its boot loader from the ESP of a raw disk, which this is not",
            "give the raw disk (qemu-img convert -O raw), or use firmware 'linux'",
        )
    boot_loader = files.tmp / "BOOTX64.EFI"
    run_tool(
        ["mcopy", "-i", f"{image.path}@@{esp.offset}", "::/EFI/BOOT/BOOTX64.EFI", str(boot_loader)],
        "take systemd-boot from the image's ESP",
    )
    root = [f"root={image.root}"] if image.root else []
    line = " ".join([uki_cmdline(image.uki), *root, *cmdline])
    disk = write_boot_esp(files.tmp / "boot-esp.img", boot_loader, image.uki, cfg.name, line)
    return [
        "-drive",
        f"if=none,id=bootesp,file={disk},format=raw,readonly=on",
        "-device",
        "virtio-blk-pci,drive=bootesp,bootindex=0",
    ]


def guest_args(cfg: VmConfig, files: RunFiles, credentials: list[Credential]) -> list[str]:
    """What the guest gets besides its disk: `credentials` and the extra command line of a
    UEFI boot, as SMBIOS strings (fw_cfg where the machine has no SMBIOS), each read by
    QEMU from a private file in `files.tmp`."""
    if not smbios_supported(cfg.image.architecture, cfg.firmware):
        return fw_cfg_args(credentials, files.tmp)
    strings = [smbios_credential(c) for c in credentials]
    if not cfg.firmware.is_uefi():
        return smbios_args(strings, files.tmp)
    # The kernel's messages on the screen too, for the screenshot; the serial console
    # named last stays /dev/console, the one we log.
    extra = ("console=tty0", f"console={CONSOLES[cfg.image.architecture]},115200", *cfg.cmdline)
    args = smbios_args([*strings, *cmdline_extra_strings(extra)], files.tmp)
    if (cfg.image.systemd_version or STUB_SMBIOS_SINCE) < STUB_SMBIOS_SINCE:
        args += boot_esp_args(cfg, files, extra)
    return args
