"""QEMU's whole command line for a test's VM, as pure functions of what the VM is
(`VmConfig`) and where its files live (`RunFiles`): the machine, disk, firmware, console
and report ports, and the credentials the guest gets. The virtual worker's board and
tools/bench build theirs from the same pieces.
"""

from __future__ import annotations

import datetime
import functools
import re
import shutil
import subprocess
from pathlib import Path

import attrs

from harness.backends.qemu.architectures import (
    CONSOLES,
    MACHINES,
    VMGENID_MACHINES,
    loads_kernel_through_uefi,
    qemu_binary,
)
from harness.backends.qemu.early_console import EARLY_FILE
from harness.backends.qemu.firmware import Ovmf
from harness.boot.accel import FULL_VCPUS, Acceleration
from harness.boot.plan import BootPlan
from harness.declaration.credential import Credential
from harness.declaration.keys import Firmware
from harness.guest.reporting import JOURNAL_PORT, NOTIFY_PORT
from harness.guest.units import CONTROL_PORT
from harness.image.parts import Image
from harness.settings import Settings

VIRTIO_CONSOLE = "hvc0"
AGENT_PORT = "io.harness.agent"  # the fast path's agent reads its test here (guest/agent.sh)


@attrs.frozen
class RunFiles:
    """Where one VM's files live: `tmp` is private and removed afterwards, `logs` is kept,
    `disk` is the overlay the VM writes (in `tmp`, or in a snapshot being made)."""

    tmp: Path
    logs: Path
    disk: Path

    @property
    def qmp(self) -> Path:
        return self.tmp / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.tmp / "agent.sock"

    @property
    def tpm(self) -> Path:
        return self.tmp / "tpm.sock"

    @property
    def control(self) -> Path:
        return self.tmp / "control.sock"

    def extra_disk(self, number: int) -> Path:
        """The test's extra disk `number` (from 1): a sparse file, gone with the VM."""
        return self.tmp / f"disk-{number}.raw"

    @property
    def console_input(self) -> Path:
        return self.tmp / "console.sock"

    @property
    def early_console(self) -> Path:
        """The UART's output on a boot whose console is hvc0 (early_console.py)."""
        return self.tmp / EARLY_FILE

    @property
    def notify(self) -> Path:
        return self.tmp / "notify.port"

    @property
    def console(self) -> Path:
        return self.logs / "console.log"

    @property
    def journal_export(self) -> Path:
        return self.logs / "journal.export"

    @property
    def screenshot(self) -> Path:
        return self.logs / "screen.png"


@attrs.frozen
class VmConfig:
    """What decides a VM's devices and what its guest gets at boot. A booted snapshot and
    every VM resumed from it have the same devices, as migration requires; what the guest
    gets at boot (command line, credentials) is read again only when it reboots."""

    name: str  # names the temporary directory
    image: Image
    firmware: Firmware = attrs.field(converter=Firmware)  # resolved: never AUTO
    accel: Acceleration
    cmdline: tuple[str, ...]  # what the harness and the test add to the kernel command line
    credentials: tuple[Credential, ...]
    interactive: bool = False
    qemu_args: tuple[str, ...] = ()
    agent: bool = False  # the fast path's agent port (and no vsock: a snapshot cannot keep a CID)
    control: bool = False  # a host-driven test: its control port, and a console to type on
    tpm: bool = False  # a TPM 2.0 device, its swtpm's socket in the private directory
    rtc: bool = False  # the RTC set to the host's UTC time when QEMU starts
    disks: tuple[int, ...] = ()  # the extra disks' sizes in bytes
    settings: Settings = attrs.field(kw_only=True)  # the run's switches: HARNESS_QEMU, _VCPUS, ...

    @classmethod
    def for_plan(cls, plan: BootPlan) -> VmConfig:
        return cls(
            plan.name,
            plan.image,
            plan.firmware,
            plan.accel,
            plan.cmdline,
            plan.credentials,
            plan.interactive,
            plan.decl.qemu_args,
            control=plan.decl.host is not None,
            tpm=plan.decl.tpm,
            rtc=plan.decl.rtc,
            disks=plan.decl.disks,
            settings=plan.settings,
        )


def qemu_major(binary: str) -> int:
    """The major version of a QEMU binary, by name or path (0 when it cannot tell)."""
    return _qemu_major(shutil.which(binary) or binary)


@functools.cache
def _qemu_major(binary: str) -> int:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return 0
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else 0


def serial_console(cfg: VmConfig) -> bool:
    """Whether the console is the UART rather than hvc0: for UEFI boots, and for a direct
    kernel boot whose initrd has no virtio_console (Debian's initramfs-tools leaves it out,
    and its init gives up when /dev/console cannot be opened)."""
    drivers = cfg.image.initrd_drivers if cfg.firmware == Firmware.LINUX else None
    return cfg.firmware.is_uefi() or (drivers is not None and "virtio_console" not in drivers)


def kernel_cmdline(cfg: VmConfig) -> list[str]:
    """The whole command line of a direct kernel boot."""
    uart = f"console={CONSOLES[cfg.image.architecture]},115200"
    # On hvc0, the UART too, first: the kernel's lines before hvc0 is backed (early_console.py).
    base = [uart] if serial_console(cfg) else [uart, f"console={VIRTIO_CONSOLE}"]
    if cfg.image.root:
        base = [f"root={cfg.image.root}", *base]
    return [*base, *cfg.cmdline]


def machine_args(
    arch: str, accel: Acceleration, settings: Settings, vcpus: int = FULL_VCPUS, secure_boot: bool = False
) -> list[str]:
    """QEMU and the machine every VM of the harness is: the same for a test's VM and the
    virtual worker's board. `secure_boot`: OVMF's Secure Boot build keeps its variables
    where only its SMM code may write them, so an x86 machine has SMM and secure flash."""
    machine = MACHINES[arch]
    if machine == "q35":
        machine += ",hpet=off"  # the HPET costs time under emulation and nothing needs it
    # On x86 only: an ARM machine's firmware keeps its variables without SMM.
    smm = secure_boot and machine.startswith("q35")
    if smm:
        machine += ",smm=on"
    secure_flash = ["-global", "driver=cfi.pflash01,property=secure,value=on"] if smm else []
    binary = qemu_binary(arch, settings)
    return [
        binary,
        "-machine",
        machine,
        *secure_flash,
        "-accel",
        accel.kind,
        *accel.cpu_args(qemu_major(binary), vcpus),
        "-m",
        "1536M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-object",
        "rng-random,filename=/dev/urandom,id=rng0",
        "-device",
        "virtio-rng-pci,rng=rng0",
        # The guest hands back the memory it frees: a test's QEMU holds what is in use.
        "-device",
        "virtio-balloon-pci,free-page-reporting=on",
    ]


def disk_args(disk: Path, disk_format: str) -> list[str]:
    return [
        "-drive",
        f"if=none,id=root,file={disk},format={disk_format},discard=unmap,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=root,bootindex=1",
    ]


EXTRA_DISK_SERIAL = "harness-disk-{number}"  # the guest's /dev/disk/by-id/virtio-harness-disk-N


def extra_disk_args(cfg: VmConfig, files: RunFiles) -> list[str]:
    """The test's extra disks (files.extra_disk), after the root disk, with serials the
    guest can find them by."""
    args = []
    for number in range(1, len(cfg.disks) + 1):
        serial = EXTRA_DISK_SERIAL.format(number=number)
        args += [
            "-drive",
            f"if=none,id=disk{number},file={files.extra_disk(number)},format=raw,discard=unmap,cache=unsafe",
            "-device",
            f"virtio-blk-pci,drive=disk{number},serial={serial}",
        ]
    return args


def uefi_args(ovmf: Ovmf, nvram: Path) -> list[str]:
    return [
        "-drive",
        f"if=pflash,format=raw,readonly=on,file={ovmf.code}",
        "-drive",
        f"if=pflash,format=raw,file={nvram}",
    ]


def qemu_command(
    cfg: VmConfig,
    files: RunFiles,
    ovmf: Ovmf | None,
    nvram: Path | None,
    vsock_cid: int | None,
    vhost_fd: int | None,
    guest_args: list[str],
    resuming: bool = False,
    vcpus: int = FULL_VCPUS,
) -> list[str]:
    """QEMU's argument vector for `cfg`; `guest_args` carry credentials and extras;
    `resuming`: QEMU loads a saved VM instead of booting, once QMP's migrate-incoming
    (snapshot.hand_over) says where it is and how it was saved."""
    disk_format = cfg.image.disk_format if files.disk == cfg.image.path else "qcow2"
    cmd = [
        *machine_args(cfg.image.architecture, cfg.accel, cfg.settings, vcpus, cfg.firmware.is_secure_boot()),
        *disk_args(files.disk, disk_format),
        *extra_disk_args(cfg, files),
        "-qmp",
        f"unix:{files.qmp},server=on,wait=off",
    ]
    # A resumed VM's console.log begins with its snapshot's boot (snapshot.resumed_vm).
    logappend = ",logappend=on" if resuming else ""
    if cfg.interactive:
        cmd += ["-chardev", f"stdio,id=console,mux=on,signal=off,logfile={files.console}{logappend}"]
    elif cfg.control:  # logged as always, and a socket to type on
        cmd += [
            "-chardev",
            f"socket,id=console,path={files.console_input},server=on,wait=off,logfile={files.console}{logappend}",
        ]
    else:
        cmd += ["-chardev", f"file,id=console,path={files.console}{',append=on' if resuming else ''}"]
    cmd += ["-device", "virtio-serial-pci,id=vser0"]
    if serial_console(cfg):
        cmd += ["-serial", "chardev:console"]
    else:
        cmd += ["-device", "virtconsole,chardev=console"]
        cmd += ["-chardev", f"file,id=early,path={files.early_console}", "-serial", "chardev:early"]
    cmd += [
        "-chardev",
        f"file,id=notify,path={files.notify}",
        "-device",
        f"virtserialport,chardev=notify,name={NOTIFY_PORT}",
        "-chardev",
        f"file,id=journal,path={files.journal_export}",
        "-device",
        f"virtserialport,chardev=journal,name={JOURNAL_PORT}",
    ]
    if cfg.agent:
        cmd += [
            "-chardev",
            f"socket,id=agent,path={files.agent},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=agent,name={AGENT_PORT}",
        ]
        if cfg.image.architecture in VMGENID_MACHINES:
            # A resumed VM gets a new generation ID, and the guest kernel reseeds its RNG
            # (elsewhere it mixes in virtio-rng's bytes as it goes).
            cmd += ["-device", "vmgenid,guid=auto"]
    if cfg.control or cfg.agent:  # a snapshot has the port, for the host-driven tests resumed from it
        cmd += [
            "-chardev",
            f"socket,id=control,path={files.control},server=on,wait=off",
            "-device",
            f"virtserialport,chardev=control,name={CONTROL_PORT}",
        ]
    if vsock_cid is not None:
        cmd += ["-device", f"vhost-vsock-pci,guest-cid={vsock_cid},vhostfd={vhost_fd}"]
    if cfg.rtc:
        now = datetime.datetime.now(datetime.UTC)
        cmd += ["-rtc", f"base={now:%Y-%m-%dT%H:%M:%S}"]
    if cfg.tpm:
        # CRB is the TPM 2.0 interface of x86 (q35); other machines take the TIS one.
        device = "tpm-crb" if cfg.image.architecture == "x86_64" else "tpm-tis-device"
        cmd += [
            "-chardev",
            f"socket,id=tpm,path={files.tpm}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=tpm",
            "-device",
            f"{device},tpmdev=tpm0",
        ]
    if cfg.firmware.is_uefi():
        assert ovmf and nvram
        cmd += [*uefi_args(ovmf, nvram), "-device", "VGA"]  # a screen, for the report's screenshot
    else:
        if loads_kernel_through_uefi(cfg.image.architecture, cfg.firmware):
            assert ovmf and nvram
            cmd += uefi_args(ovmf, nvram)
        assert cfg.image.kernel
        cmd += ["-kernel", str(cfg.image.kernel), "-append", " ".join(kernel_cmdline(cfg))]
        if cfg.firmware == Firmware.LINUX:
            assert cfg.image.initrd
            cmd += ["-initrd", str(cfg.image.initrd)]
    if resuming:
        cmd += ["-incoming", "defer"]
    return cmd + guest_args + list(cfg.qemu_args)


def machine_alias(binary: str, machine: str) -> str:
    """The versioned machine type behind an alias (q35 -> pc-q35-7.2), for firmware matching."""
    out = subprocess.run([binary, "-machine", "help"], capture_output=True, text=True).stdout
    return resolve_machine_alias(out, machine)


def resolve_machine_alias(help_text: str, machine: str) -> str:
    for line in help_text.splitlines():
        words = line.split()
        if words and words[0] == machine and "(alias of" in line:
            return line.rsplit("(alias of", 1)[1].strip(" )")
    return machine
