"""The QEMU backend: one VM per test on a copy-on-write overlay of the shared image."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from harness.accel import Acceleration
from harness.backend import CONSOLE_LIMIT, BootPath, BootPlan, Ending, EndingKind, cut_log, panic_line
from harness.backends.qemu.credentials import (
    cmdline_extra_strings,
    fw_cfg_args,
    smbios_args,
    smbios_credential,
)
from harness.backends.qemu.firmware import Ovmf, copy_nvram, find_ovmf, resolve_firmware
from harness.backends.qemu.snapshot import (
    AGENT_PORT,
    AGENT_READY,
    AGENT_UNIT,
    SEED_BYTES,
    Snapshot,
    SnapshotUnavailable,
    agent_credentials,
    agent_message,
    ineligibility,
    resume_script,
    shared_snapshot,
    snapshot_key,
)
from harness.backends.qemu.vsock import VMADDR_CID_HOST, VsockNotifyListener, reserve_cid, vsock_available
from harness.declaration import Credential, Firmware, TestDeclaration
from harness.errors import HarnessError
from harness.esp import run_tool, uki_cmdline, write_boot_esp
from harness.guest.units import (
    DONE,
    JOURNAL_PORT,
    NOTIFY_PORT,
    VIRTIO_CHANNEL,
    boot_options,
    emergency_guard,
    render_test_unit,
    testcases_credential,
)
from harness.image import ESP_TYPE, Image, read_gpt
from harness.notify import GuestReport, read_port_file
from harness.timeline import decode_timeline

log = logging.getLogger(__name__)

QEMU_BINARIES = {
    "x86_64": "qemu-system-x86_64",
    "aarch64": "qemu-system-aarch64",
    "riscv64": "qemu-system-riscv64",
    "i386": "qemu-system-i386",
}
MACHINES = {"x86_64": "q35", "i386": "q35", "aarch64": "virt", "riscv64": "virt"}
# The UART each machine's firmware and boot loader print to (UEFI boots log it); a direct
# kernel boot logs the virtio console hvc0 instead: an emulated UART costs an exit to QEMU
# per character, which under TCG is seconds of a boot.
CONSOLES = {"x86_64": "ttyS0", "i386": "ttyS0", "aarch64": "ttyAMA0", "riscv64": "ttyS0"}
VIRTIO_CONSOLE = "hvc0"
# systemd-stub takes the extra command line from SMBIOS (io.systemd.stub.kernel-cmdline-extra)
# from 254 on; for older images the harness boots the UKI from an ESP of its own.
STUB_SMBIOS_SINCE = 254
SNAPSHOT_BOOT_TIMEOUT = 120  # seconds with KVM, for the boot to the agent
POWERDOWN_GRACE = 30.0  # seconds an orderly shutdown may take under emulation
SCREENSHOT_INTERVAL = 10.0  # seconds between screenshots while a UEFI test runs
CONSOLE_READ = 16 * 2**20  # bytes of console output looked at (for a panic) per poll, at most


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
    every VM resumed from it share one, so their QEMU command lines match, as migration
    requires; only the files differ."""

    name: str  # names the temporary directory
    image: Image
    firmware: Firmware = attrs.field(converter=Firmware)  # resolved: never AUTO
    accel: Acceleration
    cmdline: tuple[str, ...]  # what the harness and the test add to the kernel command line
    credentials: tuple[Credential, ...]
    interactive: bool = False
    qemu_args: tuple[str, ...] = ()
    agent: bool = False  # the fast path's agent port (and no vsock: a snapshot cannot keep a CID)

    @classmethod
    def for_plan(cls, plan: BootPlan) -> VmConfig:
        return cls(
            plan.decl.name,
            plan.image,
            plan.firmware,
            plan.accel,
            plan.cmdline,
            plan.credentials,
            plan.interactive,
            plan.decl.qemu_args,
        )


def smbios_supported(arch: str, firmware: Firmware) -> bool:
    # On x86 SeaBIOS and OVMF both publish SMBIOS; on other machines only UEFI does.
    return arch in ("x86_64", "i386") or firmware.is_uefi()


def qemu_binary(arch: str, env: Mapping[str, str] = os.environ) -> str:
    """QEMU for the image's architecture: HARNESS_QEMU when set, else the one on PATH."""
    return env.get("HARNESS_QEMU") or QEMU_BINARIES[arch]


@functools.cache
def qemu_major(binary: str) -> int:
    """The major version of a QEMU binary (0 when it cannot tell)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return 0
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else 0


def kernel_cmdline(cfg: VmConfig) -> list[str]:
    """The whole command line of a direct kernel boot."""
    base = [f"console={VIRTIO_CONSOLE}"]
    if cfg.image.root_partuuid:
        base = [f"root=PARTUUID={cfg.image.root_partuuid}", *base]
    return [*base, *cfg.cmdline]


def machine_args(arch: str, accel: Acceleration) -> list[str]:
    """QEMU and the machine every VM of the harness is: the same for a test's VM and the
    virtual worker's board."""
    machine = MACHINES[arch]
    if machine == "q35":
        machine += ",hpet=off"  # the HPET costs time under emulation and nothing needs it
    binary = qemu_binary(arch)
    return [
        binary,
        "-machine",
        machine,
        "-accel",
        accel.kind,
        *accel.cpu_args(qemu_major(binary)),
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


def uefi_args(ovmf: Ovmf, nvram: Path) -> list[str]:
    return [
        "-drive",
        f"if=pflash,format=raw,readonly=on,file={ovmf.code}",
        "-drive",
        f"if=pflash,format=raw,file={nvram}",
    ]


def boot_esp_args(cfg: VmConfig, files: RunFiles, cmdline: tuple[str, ...]) -> list[str]:
    """A boot disk of its own, ahead of the image, for systemd-stub before 254, which takes
    no command line from SMBIOS: the image's systemd-boot and UKI with one entry carrying
    the harness's command line (root= too: the image's ESP is not the one booted)."""
    image = cfg.image
    if image.uki is None:
        raise HarnessError(f"{image.path} has no UKI beside it", "build with mkosi's default SplitArtifacts")
    with image.path.open("rb") as f:
        esp = next(p for p in read_gpt(f) if p.type_uuid == ESP_TYPE)
    boot_loader = files.tmp / "BOOTX64.EFI"
    run_tool(
        ["mcopy", "-i", f"{image.path}@@{esp.offset}", "::/EFI/BOOT/BOOTX64.EFI", str(boot_loader)],
        "take systemd-boot from the image's ESP",
    )
    line = " ".join([uki_cmdline(image.uki), f"root=PARTUUID={image.root_partuuid}", *cmdline])
    disk = write_boot_esp(files.tmp / "boot-esp.img", boot_loader, image.uki, cfg.name, line)
    return [
        "-drive",
        f"if=none,id=bootesp,file={disk},format=raw,readonly=on",
        "-device",
        "virtio-blk-pci,drive=bootesp,bootindex=0",
    ]


def qemu_command(
    cfg: VmConfig,
    files: RunFiles,
    ovmf: Ovmf | None,
    nvram: Path | None,
    vsock_cid: int | None,
    vhost_fd: int | None,
    guest_args: list[str],
    incoming: Path | None = None,
) -> list[str]:
    """QEMU's argument vector for `cfg`; `guest_args` carry credentials and extras;
    `incoming` is a saved VM to resume instead of booting."""
    disk_format = "raw" if files.disk == cfg.image.path else "qcow2"
    cmd = [
        *machine_args(cfg.image.architecture, cfg.accel),
        *disk_args(files.disk, disk_format),
        "-qmp",
        f"unix:{files.qmp},server=on,wait=off",
    ]
    if cfg.interactive:
        cmd += ["-chardev", f"stdio,id=console,mux=on,signal=off,logfile={files.console}"]
    else:
        cmd += ["-chardev", f"file,id=console,path={files.console}"]
    cmd += ["-device", "virtio-serial-pci,id=vser0"]
    if cfg.firmware.is_uefi():
        cmd += ["-serial", "chardev:console"]
    else:
        cmd += ["-device", "virtconsole,chardev=console"]
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
            # A resumed VM gets a new generation ID, and the guest kernel reseeds its RNG.
            "-device",
            "vmgenid,guid=auto",
        ]
    if vsock_cid is not None:
        cmd += ["-device", f"vhost-vsock-pci,guest-cid={vsock_cid},vhostfd={vhost_fd}"]
    if cfg.firmware.is_uefi():
        assert ovmf and nvram
        cmd += [*uefi_args(ovmf, nvram), "-device", "VGA"]  # a screen, for the report's screenshot
    else:
        assert cfg.image.kernel
        cmd += ["-kernel", str(cfg.image.kernel), "-append", " ".join(kernel_cmdline(cfg))]
        if cfg.firmware == Firmware.LINUX:
            assert cfg.image.initrd
            cmd += ["-initrd", str(cfg.image.initrd)]
    if incoming is not None:
        cmd += ["-incoming", "exec:cat " + shlex.quote(str(incoming))]
    return cmd + guest_args + list(cfg.qemu_args)


_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen's preexec_fn: runs in the child between fork and exec, so QEMU does not
    outlive its owner even when the owner is SIGKILLed. The signal fires when the forking
    *thread* ends, so QEMU must be spawned from a thread that lives as long as the VM."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class QemuMachine:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        files: RunFiles,
        stderr: Path,
        report: GuestReport,
        has_screen: bool = False,
        interactive: bool = False,
    ) -> None:
        self.proc = proc
        self.files = files
        self.stderr = stderr
        self.report = report
        self.console_log = files.console
        self.has_screen = has_screen
        self.interactive = interactive
        self.boot_path = BootPath.COLD
        self.boot_timeline: str | None = None  # a resumed VM's boot, from its snapshot
        self.job_url = ""
        self.console_limit = CONSOLE_LIMIT
        self._console_offset = 0
        self._console_tail = b""
        self._next_screenshot = 0.0
        self._test_ended = False
        self._agent: socket.socket | None = None

    def _screenshot(self) -> None:
        """The screen as it is now, through QMP; the last one taken is the one kept."""
        partial = self.files.tmp / "screen.png"
        if self._qmp("screendump", {"filename": str(partial), "format": "png"}) and partial.is_file():
            os.replace(partial, self.files.screenshot)

    def _watch_screen(self) -> None:
        # Periodically while the test runs, and once more the moment the test unit
        # reports its end, which is the screen the report shows.
        if not self.has_screen or self._test_ended:
            return
        with contextlib.suppress(FileNotFoundError):
            self._test_ended = b"X_HARNESS_SERVICE_RESULT=" in self.files.notify.read_bytes()
        now = time.monotonic()
        if self._test_ended or now >= self._next_screenshot:
            self._screenshot()
            self._next_screenshot = now + SCREENSHOT_INTERVAL

    def _panic_line(self) -> str | None:
        try:
            with self.files.console.open("rb") as f:
                f.seek(self._console_offset)
                chunk = f.read(CONSOLE_READ)  # what a flooding guest wrote since: read in turns
        except FileNotFoundError:
            return None
        self._console_offset += len(chunk)
        text = self._console_tail + chunk
        self._console_tail = text[-256:]
        return panic_line(text)

    def _guest_done(self) -> bool:
        # An unattended VM is thrown away after the test: once the guest has reported
        # everything, waiting for its orderly shutdown only costs time.
        if self.interactive:
            return False
        with contextlib.suppress(FileNotFoundError):
            return f"{DONE}=1".encode() in self.files.notify.read_bytes()
        return False

    def wait(self, timeout: float | None) -> Ending:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                status = self.proc.wait(timeout=0.2)
                return Ending(EndingKind.EXITED, status)
            except subprocess.TimeoutExpired:
                pass
            self._watch_screen()  # first: the screen at the test's end is the one to keep
            if self._guest_done():
                return Ending(EndingKind.EXITED, detail="the guest reported everything; the VM was ended")
            panic = self._panic_line()
            if panic:
                if self.has_screen:
                    self._screenshot()
                return Ending(EndingKind.PANIC, detail=panic)
            if self._console_offset > self.console_limit:
                return self._stop_flood()
            if deadline is not None and time.monotonic() >= deadline:
                if self.has_screen:
                    self._screenshot()
                return Ending(EndingKind.TIMEOUT)

    def _stop_flood(self) -> Ending:
        """Stop a VM whose guest writes more to its console than a log may hold, and cut
        the log there: a guest stuck printing would otherwise fill the disk."""
        self.proc.kill()
        self.proc.wait()
        cut_log(self.files.console, self.console_limit)
        mb = self.console_limit // 2**20
        return Ending(
            EndingKind.CONSOLE_FLOOD,
            detail=f"the guest wrote more than {mb} MB to its console (HARNESS_CONSOLE_LIMIT_MB); "
            "the VM was stopped and console.log cut there,",
        )

    def wait_for_agent(self, timeout: float) -> Ending | None:
        """Block until the fast path's agent says it waits for a test (None), or the boot
        fails: the machine stopped, panicked, or took longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.proc.poll()
            if status is not None:
                return Ending(EndingKind.EXITED, status)
            with contextlib.suppress(FileNotFoundError):
                if f"{AGENT_READY}=1".encode() in self.files.notify.read_bytes():
                    return None
            panic = self._panic_line()
            if panic:
                return Ending(EndingKind.PANIC, detail=panic)
            if time.monotonic() >= deadline:
                return Ending(EndingKind.TIMEOUT)
            time.sleep(0.2)

    @contextlib.contextmanager
    def _qmp_session(self, timeout: float) -> Iterator[Any]:
        """One QMP connection to this VM's QEMU, closed on leaving."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        qmp = QEMUMonitorProtocol(str(self.files.qmp))
        try:
            qmp.settimeout(timeout)
            qmp.connect()
            yield qmp
        finally:
            with contextlib.suppress(*qmp_errors()):
                qmp.close()

    def save_state(self, state: Path) -> None:
        """Stop the VM, write its memory and device state to `state`, and quit QEMU."""
        with self._qmp_session(30) as qmp:
            qmp.cmd("stop")
            qmp.cmd("migrate", uri="exec:cat >" + shlex.quote(str(state)))
            while True:
                status = qmp.cmd("query-migrate")
                assert isinstance(status, dict)
                if status.get("status") == "completed":
                    break
                if status.get("status") in ("failed", "cancelled"):
                    raise SnapshotUnavailable(
                        f"QEMU could not save the VM: {status.get('error-desc', status)}"
                    )
                time.sleep(0.1)
            qmp.cmd("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def hand_over(self, message: bytes, timeout: float = 60) -> None:
        """Once QEMU has loaded the saved state, connect to the agent's port, send it the
        test, and let the VM run (it was saved stopped, so it loads paused). The connection
        stays open, owned by the machine, until the VM is gone."""
        deadline = time.monotonic() + timeout
        while self._status() in (None, "inmigrate"):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise HarnessError(
                    f"QEMU did not resume the booted snapshot: {self.failure_detail() or 'it timed out'}",
                    "rerun with HARNESS_COLD_BOOT=1; if it persists, remove the snapshot directory",
                )
            time.sleep(0.05)
        self._agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._agent.connect(str(self.files.agent))
        self._agent.sendall(message)
        if not self._qmp("cont"):
            raise HarnessError(
                f"QEMU would not run the resumed snapshot: {self.failure_detail() or 'no word why'}",
                "rerun with HARNESS_COLD_BOOT=1; if it persists, remove the snapshot directory",
            )

    def _status(self) -> str | None:
        """QEMU's run state (inmigrate, paused, running, ...), or None while QMP is not up."""
        try:
            with self._qmp_session(5) as qmp:
                status = qmp.cmd("query-status")
            return str(status["status"]) if isinstance(status, dict) else None
        except qmp_errors():  # QMP not up yet, or QEMU gone: the caller checks which
            return None

    def _qmp(self, command: str, arguments: dict[str, Any] | None = None) -> bool:
        try:
            with self._qmp_session(5) as qmp:
                qmp.cmd(command, **(arguments or {}))
            return True
        except qmp_errors():  # any QMP trouble means: fall back to force
            return False

    def power_off(self, orderly: bool) -> None:
        if self.proc.poll() is not None:
            return
        if orderly and self._qmp("system_powerdown"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=POWERDOWN_GRACE)
                return
        self._qmp("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=3)
            return
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._agent is not None:
            self._agent.close()

    def failure_detail(self) -> str:
        try:
            lines = self.stderr.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def collect(self) -> GuestReport:
        read_port_file(self.files.notify, self.report)
        return self.report


def qmp_errors() -> tuple[type[Exception], ...]:
    """What talking to QEMU over QMP raises when QEMU is not (or no longer) there, or
    refuses a command. qemu.qmp is imported when first needed: a skipped test or a
    `validate` does not pay for it."""
    from qemu.qmp import QMPError

    return (OSError, EOFError, QMPError)


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


def make_overlay(image: Path, overlay: Path, backing_format: str = "raw") -> None:
    """A qcow2 file backed by the image: the VM writes here, the image stays untouched."""
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", str(image), str(overlay)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise HarnessError(
            f"qemu-img could not create an overlay of {image}: {result.stderr.strip()}",
            "check that qemu-utils is installed and the image is readable",
        )


@contextlib.contextmanager
def running_vm(cfg: VmConfig, files: RunFiles, incoming: Path | None = None) -> Iterator[QemuMachine]:
    """Start QEMU for `cfg` on `files` (booting, or resuming `incoming`); on leaving the
    context QEMU is gone."""
    binary = qemu_binary(cfg.image.architecture) if cfg.image.architecture in QEMU_BINARIES else None
    if binary is None or shutil.which(binary) is None:
        raise HarnessError(
            f"the image is {cfg.image.architecture} and {binary or 'no QEMU binary'} is not installed",
            "run the set-up script (tools/setup), or install QEMU for that architecture"
            " (HARNESS_QEMU names another binary)",
        )
    with contextlib.ExitStack() as stack:
        report = GuestReport()
        ovmf = nvram = None
        if cfg.firmware.is_uefi():
            ovmf = find_ovmf(cfg.image.architecture, machine_alias(binary, MACHINES[cfg.image.architecture]))
            nvram = copy_nvram(ovmf, files.tmp)

        credentials = list(cfg.credentials)
        vsock_cid = vhost_fd = listener = None
        if vsock_available() and not cfg.agent:
            vhost_fd = os.open("/dev/vhost-vsock", os.O_RDWR | os.O_CLOEXEC)
            stack.callback(os.close, vhost_fd)
            vsock_cid = reserve_cid(vhost_fd)
            listener = stack.enter_context(VsockNotifyListener(report))
            credentials.append(
                Credential("vmm.notify_socket", f"vsock-stream:{VMADDR_CID_HOST}:{listener.port}".encode())
            )

        if smbios_supported(cfg.image.architecture, cfg.firmware):
            strings = [smbios_credential(c) for c in credentials]
            if cfg.firmware.is_uefi():
                # The kernel's messages on the screen too, for the screenshot; the
                # serial console named last stays /dev/console, the one we log.
                screen = ("console=tty0", f"console={CONSOLES[cfg.image.architecture]},115200")
                strings += cmdline_extra_strings((*screen, *cfg.cmdline))
            guest_args = smbios_args(strings, files.tmp)
            if (
                cfg.firmware.is_uefi()
                and (cfg.image.systemd_version or STUB_SMBIOS_SINCE) < STUB_SMBIOS_SINCE
            ):
                guest_args += boot_esp_args(cfg, files, (*screen, *cfg.cmdline))
        else:
            guest_args = fw_cfg_args(credentials, files.tmp)

        cmd = qemu_command(cfg, files, ovmf, nvram, vsock_cid, vhost_fd, guest_args, incoming)
        (files.logs / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
        stderr = files.tmp / "qemu.stderr"
        with stderr.open("wb") as err:
            proc = subprocess.Popen(
                cmd,
                stdin=None if cfg.interactive else subprocess.DEVNULL,
                stdout=None if cfg.interactive else subprocess.DEVNULL,
                stderr=err,
                pass_fds=(vhost_fd,) if vhost_fd is not None else (),
                preexec_fn=die_with_parent,
            )
        machine = QemuMachine(
            proc,
            files,
            stderr,
            report,
            has_screen=cfg.firmware.is_uefi() and not cfg.interactive,
            interactive=cfg.interactive,
        )
        stack.callback(machine.kill)
        if listener is not None:
            listener.start()
        yield machine


@contextlib.contextmanager
def private_tmp(name: str) -> Iterator[Path]:
    # Short path in /tmp: unix socket names are limited to 108 bytes. The wrapper's PID in
    # the name tells a later run whose directory it is.
    sweep_orphans(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"harness-{name}-p{os.getpid()}-") as tmp:
        os.chmod(tmp, 0o700)
        yield Path(tmp)


# What a VM here needs before its root is mounted: the PCI transport, the disk, and the
# console and report ports (virtio-serial).
VM_DRIVERS = ("virtio_pci", "virtio_blk", "virtio_console")


def missing_drivers(image: Image) -> list[str]:
    """The drivers of VM_DRIVERS that neither the kernel nor the initrd has; none when the
    initrd does not tell (it carries no modules.builtin)."""
    if image.initrd_drivers is None:
        return []
    return [d for d in VM_DRIVERS if d not in image.initrd_drivers]


ORPHAN = re.compile(r"^harness-.*-p(\d+)-[a-z0-9_]+$")


def sweep_orphans(tmp: Path) -> None:
    """Remove the private directories of wrappers that were killed outright (SIGKILL runs
    no clean-up): their QEMU died with them (PR_SET_PDEATHSIG), their overlay is litter."""
    for directory in tmp.glob("harness-*"):
        m = ORPHAN.match(directory.name)
        if m and not process_alive(int(m.group(1))):
            shutil.rmtree(directory, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def snapshot_config(image: Image, accel: Acceleration) -> VmConfig:
    """The VM that boots to the agent and is saved: what every eligible test resumes."""
    return VmConfig(
        name="snapshot",
        image=image,
        firmware=Firmware.LINUX,
        accel=accel,
        cmdline=tuple(boot_options(AGENT_UNIT, interactive=False, volatile=True)),
        credentials=(*agent_credentials(), *emergency_guard(VIRTIO_CHANNEL)),
        agent=True,
    )


def make_snapshot(cfg: VmConfig, dest: Path, timeout: float) -> None:
    """Boot `cfg` until its agent waits, then save the VM into `dest` (state + disk)."""
    with private_tmp(cfg.name) as tmp:
        files = RunFiles(tmp, dest, Snapshot(dest).disk)
        make_overlay(cfg.image.path, files.disk)
        with running_vm(cfg, files) as machine:
            ending = machine.wait_for_agent(timeout)
            if ending is not None:
                why = {
                    "timeout": f"timed out after {timeout:.0f} s",
                    "panic": f"kernel panic: {ending.detail}",
                }.get(
                    ending.kind,
                    f"QEMU exited with status {ending.machine_status}: {machine.failure_detail()}",
                )
                raise SnapshotUnavailable(f"the snapshot boot failed: {why}")
            timeline = decode_timeline(machine.collect().last("X_HARNESS_TIMELINE"))
            if timeline:
                Snapshot(dest).timeline.write_text(timeline)
            machine.save_state(Snapshot(dest).state)


def send_test(machine: QemuMachine, plan: BootPlan) -> None:
    """Hand a resumed VM's agent the test of `plan`: its unit (the cold boot's, sending
    only its own timeline when the snapshot has the boot's) and its credentials."""
    unit = render_test_unit(
        plan.decl,
        interactive=False,
        channel=VIRTIO_CHANNEL,
        whole_journal=plan.whole_journal,
        resumed=machine.boot_timeline is not None,
    )
    credentials = (*plan.decl.credentials, testcases_credential())
    machine.hand_over(
        agent_message(
            resume_script(plan.decl.unit_name, unit, credentials, time.time(), os.urandom(SEED_BYTES))
        )
    )


class QemuBackend:
    name = "qemu"
    report_channel = VIRTIO_CHANNEL
    features = frozenset({"dut", "uefi", "serial"})
    can_resume = True

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        return [f for f in decl.requires if f not in self.features]

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        """The firmware to boot `image` with, once it is clear a VM here can boot it."""
        # Without an initrd the kernel alone must have them; what it builds in is not told apart here.
        missing = missing_drivers(image) if declared != Firmware.LINUX_NOINITRD else []
        if missing:
            drivers = f"{', '.join(missing)} driver" + (
                "s, nor are they" if len(missing) > 1 else ", nor is it"
            )
            raise HarnessError(
                f"the initrd of {image.path} has no {drivers} built into the kernel: the VM could not "
                "find its disk or report (it would hang until the timeout)",
                "add the modules to the initrd (mkosi: KernelModulesInitrdInclude=, as in this project's "
                "mkosi.conf; dracut: add_drivers+=)",
            )
        return resolve_firmware(declared, image)

    def cold_boot_reason(
        self, decl: TestDeclaration, firmware: Firmware, env: Mapping[str, str]
    ) -> str | None:
        return ineligibility(decl, firmware, env)

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[QemuMachine]:
        with contextlib.ExitStack() as stack:
            snapshot = None
            if plan.boot is BootPath.SNAPSHOT:
                try:
                    snapshot = stack.enter_context(self.booted_snapshot(plan))
                except SnapshotUnavailable as e:
                    log.warning(f"{plan.decl.name}: no booted snapshot ({e}); booting cold")
            tmp = stack.enter_context(private_tmp(plan.decl.name))
            files = RunFiles(tmp, log_dir, tmp / "overlay.qcow2")
            if snapshot is None:
                make_overlay(plan.image.path, files.disk)
                machine = stack.enter_context(running_vm(VmConfig.for_plan(plan), files))
            else:
                make_overlay(snapshot.disk, files.disk, backing_format="qcow2")
                machine = stack.enter_context(
                    running_vm(snapshot_config(plan.image, plan.accel), files, snapshot.state)
                )
                machine.boot_path = BootPath.SNAPSHOT
                if snapshot.timeline.is_file():
                    machine.boot_timeline = snapshot.timeline.read_text()
                send_test(machine, plan)
            machine.console_limit = plan.console_limit
            yield machine

    def booted_snapshot(self, plan: BootPlan) -> contextlib.AbstractContextManager[Snapshot]:
        """The booted snapshot for `plan`'s image, made first if needed, held while in use."""
        assert plan.snapshot_dir is not None
        cfg = snapshot_config(plan.image, plan.accel)
        binary = shutil.which(qemu_binary(plan.image.architecture)) or ""
        image = plan.image
        key = snapshot_key(
            [plan.accel.kind, *plan.accel.cpu_args(qemu_major(binary)), binary],
            [p for p in (image.path, image.kernel, image.initrd, Path(binary)) if p is not None],
        )
        # The boot is the agent's: the test's own timeout does not apply to it.
        timeout = SNAPSHOT_BOOT_TIMEOUT * plan.accel.timeout_factor

        def make(dest: Path) -> None:
            log.info(
                f"{plan.decl.name}: booting {image.path.name} once to save it as the booted snapshot "
                f"{dest.parent / key} (the other eligible tests resume it)"
            )
            make_snapshot(cfg, dest, timeout)

        return shared_snapshot(plan.snapshot_dir, key, plan.attempt, make)
