"""One QEMU process, owned: started by `running_vm` and gone when its context ends, with
QMP to talk to it, its console and report port read for the watch, and power.

Everything the process leaves on disk lives in a private temporary directory
(`private_tmp`) or in the test's log directory; QEMU dies with the wrapper even when the
wrapper is SIGKILLed (PR_SET_PDEATHSIG), and the next run sweeps the directory such a
wrapper leaves (`sweep_orphans`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import process
from harness.backends.qemu.architectures import MACHINES, has_uefi, require_qemu
from harness.backends.qemu.command import RunFiles, VmConfig, machine_alias, qemu_command
from harness.backends.qemu.controls import VmControls
from harness.backends.qemu.early_console import merge_early_console
from harness.backends.qemu.firmware import copy_nvram, find_ovmf
from harness.backends.qemu.guest import guest_args
from harness.backends.qemu.qmp import Qmp
from harness.backends.qemu.vsock import VMADDR_CID_HOST, VsockNotifyListener, reserve_cid, vsock_available
from harness.boot.accel import FULL_VCPUS, vcpus_now
from harness.boot.machine import Ending, EndingKind, Look, WatchRules
from harness.boot.plan import BootPath
from harness.deadline import Deadline
from harness.declaration.credential import Credential
from harness.errors import HarnessError
from harness.process import OwnedProcess, process_alive
from harness.verdict.notify import GuestReport, read_port_file

POWERDOWN_GRACE = 30.0  # seconds an orderly shutdown may take under emulation
SCREENSHOT_INTERVAL = 10.0  # seconds between screenshots while a UEFI test runs
CONSOLE_READ = 16 * 2**20  # bytes of console output looked at (for a panic) per look, at most


class QemuMachine:
    display_name = "the VM"

    def __init__(
        self,
        proc: OwnedProcess,
        files: RunFiles,
        stderr: Path,
        report: GuestReport,
        has_screen: bool = False,
        interactive: bool = False,
        boot_path: BootPath = BootPath.COLD,
        boot_timeline: str | None = None,  # a resumed VM's: its boot happened in the snapshot
    ) -> None:
        self.proc = proc
        self.qmp = Qmp(files.qmp)
        self.files = files
        self.stderr = stderr
        self.report = report  # what arrives over vsock; the port's lines are read from its file
        self.console_log = files.console
        self.has_screen = has_screen
        self.boot_path = boot_path
        self.boot_timeline = boot_timeline
        self.job_url = ""
        # A look is two small local reads: every 50 ms ends a resumed test 0.1 s sooner
        # than the default 200 ms, for no CPU to speak of.
        self.watch_rules = WatchRules(poll=0.05, end_at_last_word=not interactive)
        self._console_offset = 0
        self._next_screenshot = 0.0
        self._test_ended = False
        self._controls: VmControls | None = None

    def look(self) -> Look:
        status = self.proc.poll()
        report = GuestReport([*self.report.pairs])
        with contextlib.suppress(FileNotFoundError):
            report.add(self.files.notify.read_bytes())
        if status is not None:
            return Look(report, stopped=Ending(EndingKind.EXITED, status))
        self._watch_screen(report.test_ended)
        return Look(report, self._read_console(), self._console_offset)

    def _read_console(self) -> bytes:
        try:
            with self.files.console.open("rb") as f:
                f.seek(self._console_offset)
                chunk = f.read(CONSOLE_READ)  # what a flooding guest wrote since: read in turns
        except FileNotFoundError:
            return b""
        self._console_offset += len(chunk)
        return chunk

    def _watch_screen(self, test_ended: bool) -> None:
        # Periodically while the test runs, and once more the moment the test unit
        # reports its end, which is the screen the report shows.
        if not self.has_screen or self._test_ended:
            return
        self._test_ended = test_ended
        now = time.monotonic()
        if test_ended or now >= self._next_screenshot:
            self.screenshot()
            self._next_screenshot = now + SCREENSHOT_INTERVAL

    def screenshot(self) -> None:
        """The screen as it is now, through QMP; the last one taken is the one kept."""
        partial = self.files.tmp / "screen.png"
        if self.qmp.try_call("screendump", filename=str(partial), format="png") and partial.is_file():
            os.replace(partial, self.files.screenshot)

    def power_off(self, orderly: bool) -> None:
        if self.proc.poll() is not None:
            return
        if self.has_screen:
            self.screenshot()  # the screen as the test left it: a timeout's, a panic's
        if orderly and self.qmp.try_call("system_powerdown"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=POWERDOWN_GRACE)
                return
        if self.qmp.try_call("quit"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=3)
                return
        self.kill()

    def kill(self) -> None:
        self.proc.kill()
        if self._controls is not None:
            self._controls.close()

    def failure_detail(self) -> str:
        try:
            lines = self.stderr.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def collect(self) -> GuestReport:
        read_port_file(self.files.notify, self.report)
        return self.report

    def controls(self) -> VmControls:
        """The VM as a host-driven test drives it (its config has the control port)."""
        if self._controls is None:
            self._controls = VmControls(self.files, self.proc, self.qmp, self.failure_detail)
        return self._controls


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
def running_vm(
    cfg: VmConfig,
    files: RunFiles,
    resuming: bool = False,
    boot_timeline: str | None = None,
    nvram_template: Path | None = None,
) -> Iterator[QemuMachine]:
    """Start QEMU for `cfg` on `files` (booting, or `resuming` a saved VM, whose boot's
    timeline is `boot_timeline` and whose UEFI variables are `nvram_template`); on leaving
    the context QEMU is gone."""
    binary = require_qemu(cfg.image.architecture, cfg.settings)
    with contextlib.ExitStack() as stack:
        report = GuestReport()
        ovmf = nvram = None
        if has_uefi(cfg.image.architecture, cfg.firmware):
            ovmf = find_ovmf(
                cfg.image.architecture,
                machine_alias(binary, MACHINES[cfg.image.architecture]),
                cfg.settings,
                secure_boot=cfg.firmware.is_secure_boot(),
            )
            nvram = copy_nvram(ovmf, files.tmp, nvram_template)

        if cfg.tpm:
            stack.enter_context(software_tpm(files))
        for number, size in enumerate(cfg.disks, start=1):
            with files.extra_disk(number).open("wb") as disk:
                disk.truncate(size)  # sparse: it costs what the test writes
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

        args = guest_args(cfg, files, credentials)
        # The booted snapshot and the VMs resumed from it keep FULL_VCPUS: migration needs
        # the same CPUs on both sides.
        vcpus = FULL_VCPUS if cfg.agent else vcpus_now(cfg.settings)
        cmd = qemu_command(cfg, files, ovmf, nvram, vsock_cid, vhost_fd, args, resuming, vcpus)
        (files.logs / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
        stderr = files.tmp / "qemu.stderr"
        vhost = (vhost_fd,) if vhost_fd is not None else ()
        proc = process.start(cmd, stderr, on_terminal=cfg.interactive, pass_fds=vhost)
        machine = QemuMachine(
            proc,
            files,
            stderr,
            report,
            has_screen=cfg.firmware.is_uefi() and not cfg.interactive,
            interactive=cfg.interactive,
            boot_path=BootPath.SNAPSHOT if resuming else BootPath.COLD,
            boot_timeline=boot_timeline,
        )
        stack.callback(merge_early_console, files.console, files.early_console)  # once QEMU is gone
        stack.callback(machine.kill)
        if listener is not None:
            listener.start()
        yield machine


@contextlib.contextmanager
def software_tpm(files: RunFiles) -> Iterator[None]:
    """swtpm serving a fresh TPM 2.0 on files.tpm, its state in the private directory
    (so nothing of it outlives the test); stopped on leaving, QEMU gone or not."""
    binary = shutil.which("swtpm")
    if binary is None:
        raise HarnessError(
            "the test declares tpm: true and swtpm is not installed",
            "install swtpm (Debian: apt-get install swtpm; a checkout: tools/setup)",
        )
    state = files.tmp / "tpm"
    state.mkdir(mode=0o700)
    log = files.tmp / "swtpm.log"
    cmd = [
        binary,
        "socket",
        "--tpm2",
        "--tpmstate",
        f"dir={state}",
        "--ctrl",
        f"type=unixio,path={files.tpm}",
    ]
    proc = process.start(cmd, log, merge_output=True)
    try:
        Deadline.after(10).wait_for(lambda: files.tpm.exists() or proc.poll() is not None, 0.05)
        if not files.tpm.exists():
            raise HarnessError(
                f"swtpm did not start: {log.read_text(errors='replace').strip() or 'no output'}",
                "check that swtpm runs here (swtpm socket --tpm2 --help)",
            )
        yield
    finally:
        proc.stop(grace=5)


@contextlib.contextmanager
def private_tmp(name: str) -> Iterator[Path]:
    # Short path in /tmp: unix socket names are limited to 108 bytes. The wrapper's PID in
    # the name tells a later run whose directory it is.
    sweep_orphans(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"harness-{name}-p{os.getpid()}-") as tmp:
        os.chmod(tmp, 0o700)
        yield Path(tmp)


ORPHAN = re.compile(r"^harness-.*-p(\d+)-[a-z0-9_]+$")


def sweep_orphans(tmp: Path) -> None:
    """Remove the private directories of wrappers that were killed outright (SIGKILL runs
    no clean-up): their QEMU died with them (PR_SET_PDEATHSIG), their overlay is litter."""
    for directory in tmp.glob("harness-*"):
        m = ORPHAN.match(directory.name)
        if m and not process_alive(int(m.group(1))):
            shutil.rmtree(directory, ignore_errors=True)
