"""The QEMU backend: one VM per test on a copy-on-write overlay of the shared image."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import attrs

from harness.backend import BootPlan, Ending, panic_line
from harness.credentials import cmdline_extra_strings, fw_cfg_args, smbios_args, smbios_credential
from harness.declaration import Credential
from harness.errors import HarnessError
from harness.firmware import Ovmf, copy_nvram, find_ovmf, resolve_firmware
from harness.notify import GuestReport, VsockNotifyListener, VMADDR_CID_HOST, read_port_file, reserve_cid, vsock_available
from harness.unit import JOURNAL_PORT, NOTIFY_PORT, VIRTIO_CHANNEL

QEMU_BINARIES = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64",
                 "riscv64": "qemu-system-riscv64", "i386": "qemu-system-i386"}
MACHINES = {"x86_64": "q35", "i386": "q35", "aarch64": "virt", "riscv64": "virt"}
CONSOLES = {"x86_64": "ttyS0", "i386": "ttyS0", "aarch64": "ttyAMA0", "riscv64": "ttyS0"}
POWERDOWN_GRACE = 30.0  # seconds an orderly shutdown may take under emulation
SCREENSHOT_INTERVAL = 10.0  # seconds between screenshots while a UEFI test runs


@attrs.frozen
class RunFiles:
    """Where one VM's files live: `tmp` is private and removed afterwards, `logs` is kept."""

    tmp: Path
    logs: Path

    @property
    def overlay(self) -> Path:
        return self.tmp / "overlay.qcow2"

    @property
    def qmp(self) -> Path:
        return self.tmp / "qmp.sock"

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


def smbios_supported(arch: str, firmware: str) -> bool:
    # On x86 SeaBIOS and OVMF both publish SMBIOS; on other machines only UEFI does.
    return arch in ("x86_64", "i386") or firmware == "uefi"


def kernel_cmdline(plan: BootPlan) -> list[str]:
    """The whole command line of a direct kernel boot."""
    console = CONSOLES[plan.image.architecture]
    base = [f"console={console},115200"]
    if plan.image.root_partuuid:
        base = [f"root=PARTUUID={plan.image.root_partuuid}", *base]
    return [*base, *plan.cmdline]


def qemu_command(plan: BootPlan, files: RunFiles, ovmf: Ovmf | None, nvram: Path | None,
                 vsock_cid: int | None, vhost_fd: int | None, guest_args: list[str]) -> list[str]:
    """QEMU's argument vector for `plan`; `guest_args` carry credentials and extras."""
    arch = plan.image.architecture
    machine = MACHINES[arch]
    if machine == "q35":
        machine += ",hpet=off"  # the HPET costs time under emulation and nothing needs it
    cmd = [
        QEMU_BINARIES[arch],
        "-machine", machine,
        "-accel", plan.accel.kind,
        *plan.accel.cpu_args,
        "-m", "1536M",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-object", "rng-random,filename=/dev/urandom,id=rng0",
        "-device", "virtio-rng-pci,rng=rng0",
        "-drive", f"if=none,id=root,file={files.overlay},format=qcow2,discard=unmap,cache=unsafe",
        "-device", "virtio-blk-pci,drive=root,bootindex=1",
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
    ]
    if plan.interactive:
        cmd += ["-chardev", f"stdio,id=console,mux=on,signal=off,logfile={files.console}"]
    else:
        cmd += ["-chardev", f"file,id=console,path={files.console}"]
    cmd += ["-serial", "chardev:console"]
    cmd += [
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"file,id=notify,path={files.notify}",
        "-device", f"virtserialport,chardev=notify,name={NOTIFY_PORT}",
        "-chardev", f"file,id=journal,path={files.journal_export}",
        "-device", f"virtserialport,chardev=journal,name={JOURNAL_PORT}",
    ]
    if vsock_cid is not None:
        cmd += ["-device", f"vhost-vsock-pci,guest-cid={vsock_cid},vhostfd={vhost_fd}"]
    if plan.firmware == "uefi":
        assert ovmf and nvram
        cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={ovmf.code}",
                "-drive", f"if=pflash,format=raw,file={nvram}",
                "-device", "VGA"]  # a screen, for the report's screenshot
    else:
        assert plan.image.kernel
        cmd += ["-kernel", str(plan.image.kernel), "-append", " ".join(kernel_cmdline(plan))]
        if plan.firmware == "linux":
            assert plan.image.initrd
            cmd += ["-initrd", str(plan.image.initrd)]
    return cmd + guest_args + list(plan.decl.qemu_args)


_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: QEMU must not outlive the wrapper,
    # even when the wrapper is SIGKILLed. The signal fires when the forking *thread*
    # ends, so QEMU must be spawned from the thread that lives as long as the VM.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class QemuMachine:
    def __init__(self, proc: subprocess.Popen, files: RunFiles, stderr: Path, report: GuestReport,
                 has_screen: bool = False) -> None:
        self.proc = proc
        self.files = files
        self.stderr = stderr
        self.report = report
        self.console_log = files.console
        self.has_screen = has_screen
        self._console_offset = 0
        self._console_tail = b""
        self._next_screenshot = 0.0
        self._test_ended = False

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
        try:
            self._test_ended = b"X_HARNESS_SERVICE_RESULT=" in self.files.notify.read_bytes()
        except FileNotFoundError:
            pass
        now = time.monotonic()
        if self._test_ended or now >= self._next_screenshot:
            self._screenshot()
            self._next_screenshot = now + SCREENSHOT_INTERVAL

    def _panic_line(self) -> str | None:
        try:
            with self.files.console.open("rb") as f:
                f.seek(self._console_offset)
                chunk = f.read()
        except FileNotFoundError:
            return None
        self._console_offset += len(chunk)
        text = self._console_tail + chunk
        self._console_tail = text[-256:]
        return panic_line(text)

    def wait(self, timeout: float | None) -> Ending:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                status = self.proc.wait(timeout=0.5)
                return Ending("exited", status)
            except subprocess.TimeoutExpired:
                pass
            self._watch_screen()
            panic = self._panic_line()
            if panic:
                if self.has_screen:
                    self._screenshot()
                return Ending("panic", detail=panic)
            if deadline is not None and time.monotonic() >= deadline:
                if self.has_screen:
                    self._screenshot()
                return Ending("timeout")

    def _qmp(self, command: str, arguments: dict | None = None) -> bool:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        qmp = QEMUMonitorProtocol(str(self.files.qmp))
        try:
            qmp.settimeout(5)
            qmp.connect()
            qmp.cmd(command, **(arguments or {}))
            return True
        except Exception:  # any QMP trouble means: fall back to force
            return False
        finally:
            with contextlib.suppress(Exception):
                qmp.close()

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

    def failure_detail(self) -> str:
        try:
            lines = self.stderr.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def collect(self) -> GuestReport:
        read_port_file(self.files.notify, self.report)
        return self.report


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


def make_overlay(image: Path, overlay: Path) -> None:
    """A qcow2 file backed by the image: the VM writes here, the image stays untouched."""
    result = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(overlay)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessError(f"qemu-img could not create an overlay of {image}: {result.stderr.strip()}",
                           "check that qemu-utils is installed and the image is readable")


class QemuBackend:
    name = "qemu"
    report_channel = VIRTIO_CHANNEL
    features = frozenset({"dut", "uefi", "serial"})

    def unmet_requirements(self, decl) -> list[str]:
        return [f for f in decl.requirements if f not in self.features]

    def firmware(self, declared: str, image) -> str:
        return resolve_firmware(declared, image)

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[QemuMachine]:
        binary = QEMU_BINARIES.get(plan.image.architecture)
        if binary is None or shutil.which(binary) is None:
            raise HarnessError(f"the image is {plan.image.architecture} and {binary or 'no QEMU binary'} is not installed",
                               "run the set-up script (tools/setup), or install QEMU for that architecture")
        with contextlib.ExitStack() as stack:
            # Short path in /tmp: unix socket names are limited to 108 bytes.
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"harness-{plan.decl.name}-")))
            os.chmod(tmp, 0o700)
            files = RunFiles(tmp, log_dir)
            make_overlay(plan.image.path, files.overlay)
            report = GuestReport()

            ovmf = nvram = None
            if plan.firmware == "uefi":
                ovmf = find_ovmf(plan.image.architecture, machine_alias(binary, MACHINES[plan.image.architecture]))
                nvram = copy_nvram(ovmf, tmp)

            credentials = list(plan.credentials)
            vsock_cid = vhost_fd = listener = None
            if vsock_available():
                vhost_fd = os.open("/dev/vhost-vsock", os.O_RDWR | os.O_CLOEXEC)
                stack.callback(os.close, vhost_fd)
                vsock_cid = reserve_cid(vhost_fd)
                listener = stack.enter_context(VsockNotifyListener(report))
                credentials.append(Credential("vmm.notify_socket", f"vsock-stream:{VMADDR_CID_HOST}:{listener.port}".encode()))

            if smbios_supported(plan.image.architecture, plan.firmware):
                strings = [smbios_credential(c) for c in credentials]
                if plan.firmware == "uefi":
                    # The kernel's messages on the screen too, for the screenshot; the
                    # serial console named last stays /dev/console, the one we log.
                    screen = ("console=tty0", f"console={CONSOLES[plan.image.architecture]},115200")
                    strings += cmdline_extra_strings((*screen, *plan.cmdline))
                guest_args = smbios_args(strings, tmp)
            else:
                guest_args = fw_cfg_args(credentials, tmp)

            cmd = qemu_command(plan, files, ovmf, nvram, vsock_cid, vhost_fd, guest_args)
            (log_dir / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
            stderr = tmp / "qemu.stderr"
            with stderr.open("wb") as err:
                proc = subprocess.Popen(
                    cmd,
                    stdin=None if plan.interactive else subprocess.DEVNULL,
                    stdout=None if plan.interactive else subprocess.DEVNULL,
                    stderr=err,
                    pass_fds=(vhost_fd,) if vhost_fd is not None else (),
                    preexec_fn=_die_with_parent,
                )
            machine = QemuMachine(proc, files, stderr, report, has_screen=plan.firmware == "uefi" and not plan.interactive)
            stack.callback(machine.kill)
            if listener is not None:
                listener.start()
            yield machine
