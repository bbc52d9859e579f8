"""The nspawn backend: a test's in-guest payload in a systemd-nspawn container booted from
the shared image, with the same declarations, units and verdicts as in a VM.

A container shares the host's kernel, so it boots in a fraction of a second and needs
no acceleration; what needs a kernel or a machine of its own (placement.py says what) is
an unmet requirement here: such a test SKIPs when run on this backend. Its parts:
command.py (nspawn's command line, the binary), root.py (the image's root, mounted
read-only). The container's console is nspawn's stdout; the guest's units report on it
with the console channel's marker, as a board's do, and it ends itself with the test's
status (SuccessAction=exit), which is nspawn's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import pty
import signal
import subprocess
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

from harness import process
from harness.backends.board.console import BoardConsole
from harness.backends.nspawn.command import find_nspawn, machine_name, nspawn_command
from harness.backends.nspawn.controls import NspawnControls
from harness.backends.nspawn.crashes import CrashWatch, add_to_export
from harness.backends.nspawn.placement import vm_reasons
from harness.backends.nspawn.root import mounted_root, private_tmp
from harness.boot.machine import Ending, EndingKind, LogFile, Look, WatchRules
from harness.boot.plan import BootPath, BootPlan
from harness.deadline import Deadline
from harness.declaration.credential import Credential, write_private
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware
from harness.errors import HarnessError
from harness.guest.reporting import CONSOLE_CHANNEL
from harness.guest.units import VIRTIO_CONTROL
from harness.host.controls import Controls
from harness.image.parts import Image
from harness.process import OwnedProcess
from harness.settings import Settings
from harness.verdict.log_dir import JOURNAL_EXPORT
from harness.verdict.notify import GuestReport

log = logging.getLogger(__name__)
KILL_WAIT = 2.0  # s for a killed container's processes to be gone
POWEROFF_GRACE = 10.0  # s a container may take to shut down when asked (SIGTERM to nspawn)
CONSOLE_READ = 16 * 2**20  # bytes of console read per look, at most
COMMAND_FILE = "nspawn-command.txt"
# What nspawn prints on every run here that says nothing about the test.
NOISE = ("Attempted to remove disk file system", "Some capabilities will not be set", "Spawning container")


class NspawnMachine:
    display_name = "the container"

    def __init__(
        self,
        launch: Callable[[Path], OwnedProcess],
        tmp: Path,
        stderr: Path,
        log_dir: Path,
        limit: int,
        crashes: CrashWatch,
        root: Path,
        control: tuple[int, int] | None = None,
    ) -> None:
        self._launch = launch  # starts nspawn, its stdout into the file given
        self._tmp = tmp
        self.stderr = stderr
        self.console_log = log_dir / "console.log"
        self.console = BoardConsole(self.console_log, limit)
        self.boot_path = BootPath.COLD
        self.boot_timeline: str | None = None
        self.job_url = ""
        # The container ends itself with the test's status in a moment: its last word
        # need not be waited past, and a look is one small read.
        self.watch_rules = WatchRules(poll=0.05)
        self.control = control  # a host-driven test's pty: the host's end, the container's
        self.crashes = crashes  # the host's watch over the container's core dumps
        self._root = root
        self._starts = 0
        self.start()

    def start(self) -> None:
        """Start the container (again: a reboot, a power cycle) on the same root."""
        self._starts += 1
        self.raw_console = self._tmp / f"console.{self._starts}"  # nspawn's stdout, whole
        self._offset = 0
        self.proc = self._launch(self.raw_console)

    def read_console(self) -> bytes:
        try:
            with self.raw_console.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read(CONSOLE_READ)
        except FileNotFoundError:
            return b""
        self._offset += len(chunk)
        self.console.add(chunk)
        return chunk

    def look(self) -> Look:
        status = self.proc.poll()  # first: all it printed before it ended is read below
        new = self.read_console()
        stopped = Ending(EndingKind.EXITED, status) if status is not None else None
        return Look(self.console.report, new, self.console.written, stopped=stopped)

    def power_off(self, orderly: bool) -> None:
        """Orderly: nspawn asks the container's systemd to power off (SIGTERM to nspawn);
        then, or at once, it is killed, and with it everything in its PID namespace."""
        if orderly and self.proc.alive():
            signal_children(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=POWEROFF_GRACE)
        self.kill()

    def kill(self) -> None:
        # unshare passes on no signal: nspawn, its child, is killed first. As the first
        # process of its PID namespace, nspawn is gone once everything in it is: its
        # processes' last events (a core dump's signal) are then the kernel's to send.
        if self.proc.alive():
            nspawn = signal_children(self.proc.pid, signal.SIGKILL)
            Deadline.after(KILL_WAIT).wait_for(
                lambda: not any(Path(f"/proc/{p}").exists() for p in nspawn), 0.01
            )
        self.proc.kill()

    def collect(self) -> GuestReport:
        while self.read_console():
            pass
        return self.console.report

    def failure_detail(self) -> str:
        try:
            lines = self.stderr.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        said = [line for line in lines if line.strip() and not line.startswith(NOISE)]
        return " | ".join(said[-3:])

    def add_core_dumps_seen(self, journal_export: Path) -> None:
        """The core dumps the host saw so far, into a journal export the gate reads (a
        host-driven test's, while the container runs; the container's own, at its end)."""
        add_to_export(journal_export, self.crashes.seen_so_far(), self._root)

    def controls(self) -> Controls:
        if self.control is None:
            raise HarnessError("only a host-driven test's container is driven", "declare `host:`")
        return NspawnControls(self, *self.control)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def signal_children(pid: int, signum: int) -> list[int]:
    """Signal the processes whose parent is `pid`; which they were."""
    signalled = children(pid)
    for child in signalled:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)
    return signalled


def credential_files(credentials: tuple[Credential, ...], directory: Path) -> list[tuple[str, Path]]:
    """Each credential in a file only the user can read: values never show in `ps`."""
    directory.mkdir(mode=0o700)
    return [(c.name, write_private(directory, f"credential-{i}", c.value)) for i, c in enumerate(credentials)]


class NspawnBackend:
    name = "nspawn"
    report_channel = CONSOLE_CHANNEL
    can_resume = False
    drives_host_tests = True
    control_device = VIRTIO_CONTROL  # a pty bound there (controls.py)
    log_files: tuple[LogFile, ...] = (LogFile(COMMAND_FILE),)
    runs_on_host_cpu = True  # no TCG factor on its timeouts (harness/boot/plan.py)

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        return vm_reasons(decl)

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        return Firmware.LINUX  # the host's kernel, already running: no firmware at all

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, settings: Settings) -> str | None:
        return "a container boots in under a second: nothing to resume"

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[NspawnMachine]:
        image = plan.image
        host = platform.machine()
        if image.architecture != host:
            raise HarnessError(
                f"the image is {image.architecture} and this host {host}: a container runs on the host's CPU",
                "use the qemu backend for another architecture",
            )
        nspawn = find_nspawn(plan.settings, image.path, image.architecture)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(private_tmp(plan.name))
            root = stack.enter_context(mounted_root(image, tmp / "root", plan.snapshot_dir, plan.run))
            files = credential_files(plan.credentials, tmp / "credentials")
            journal = log_dir / JOURNAL_EXPORT
            # Written by the guest, as a VM's port is; empty again when the boot is retried.
            os.close(os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            control = stack.enter_context(control_pty()) if plan.decl.host else None
            cmd = nspawn_command(
                nspawn,
                root,
                plan,
                files,
                machine_name(plan.name, os.getpid()),
                journal,
                os.ttyname(control[1]) if control else None,
            )
            (log_dir / COMMAND_FILE).write_text(" ".join(cmd) + "\n")
            stderr = tmp / "nspawn.stderr"
            crashes = watch_crashes(plan.name)
            stack.callback(crashes.stop)  # (a second stop does nothing)

            def launch(console: Path) -> OwnedProcess:
                proc = process.start(cmd, stderr, output=console)
                crashes.watch_below(proc.pid)
                return proc

            machine = NspawnMachine(launch, tmp, stderr, log_dir, plan.console_limit, crashes, root, control)
            stack.callback(report_crashes, machine, journal)  # once the container is gone
            stack.callback(machine.kill)
            yield machine


@contextlib.contextmanager
def control_pty() -> Iterator[tuple[int, int]]:
    """A pty for the control agent: the host's end, and the container's, raw (no echo,
    no line editing: the agent's protocol is its own)."""
    host_end, far_end = pty.openpty()
    try:
        tty.setraw(far_end)
        yield host_end, far_end
    finally:
        os.close(host_end)
        os.close(far_end)


def watch_crashes(test: str) -> CrashWatch:
    watch = CrashWatch()
    watch.start()
    if watch.unavailable:
        log.warning(f"{test}: a core dump in the container will go unseen: {watch.unavailable}")
    return watch


def report_crashes(machine: NspawnMachine, journal_export: Path) -> None:
    """The core dumps the host saw, into the journal export the gate reads."""
    machine.crashes.stop()
    if machine.crashes.lost:
        log.warning("the kernel dropped process events during the test: a core dump may have gone unseen")
    machine.add_core_dumps_seen(journal_export)
