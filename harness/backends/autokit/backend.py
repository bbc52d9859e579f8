"""The autokit backend: the same tests on a board behind an autokit worker.

Per test: reserve the worker (heartbeats keep it, teardown releases it on every way
out), build the board image, flash it, power on, and read the serial console until the
test unit reports its end, the kernel panics, or the timeout passes. A host-driven test
drives the board through its serial console and the worker's power (controls.py).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.backends.autokit.client import WorkerClient, WorkerError
from harness.backends.autokit.controls import BoardControls
from harness.backends.board.console import BoardConsole
from harness.backends.board.image import plan_board_image
from harness.boot.machine import LogFile, Look, WatchRules
from harness.boot.plan import CONSOLE_LIMIT, BootPath, BootPlan
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware
from harness.guest.reporting import CONSOLE_CHANNEL
from harness.guest.units import CONSOLE_CONTROL
from harness.host.controls import Controls
from harness.image.parts import Image
from harness.settings import Settings
from harness.verdict.notify import GuestReport

SERIAL_POLL = 2.0
FRAMES_FILE = "frames.tar.gz"  # the screen capture's frames, where the worker has one


class AutokitMachine:
    display_name = "the board"

    def __init__(
        self,
        worker: WorkerClient,
        log_dir: Path,
        poll: float = SERIAL_POLL,
        console_limit: int = CONSOLE_LIMIT,
    ) -> None:
        self.worker = worker
        self.console_log = log_dir / "console.log"
        self.console = BoardConsole(self.console_log, console_limit)
        self.boot_path = BootPath.COLD  # a board is flashed and powered on for every test
        self.boot_timeline: str | None = None
        self.job_url = ""
        # The board is powered off once its test unit has ended: no last word waited for.
        self.watch_rules = WatchRules(poll=poll, end_at_last_word=False, finish_grace=0)

    def _read_serial(self) -> bytes:
        """What the serial log gained since the last read (flashing started a new log)."""
        new = self.worker.serial_since(self.console.written)
        self.console.add(new)
        return new

    def look(self) -> Look:
        new = self._read_serial()
        return Look(self.console.report, new, self.console.written)

    def power_off(self, orderly: bool) -> None:
        self.worker.power_off()

    def collect(self) -> GuestReport:
        with contextlib.suppress(WorkerError):
            self._read_serial()
        return self.console.report

    def failure_detail(self) -> str:
        return ""

    def controls(self) -> Controls:
        return BoardControls(self.worker, self.console_log, self._read_serial)


class AutokitBackend:
    runs_on_boards = True  # its timeouts are not stretched by this host's load (boot/plan.py)
    name = "autokit"
    report_channel = CONSOLE_CHANNEL
    can_resume = False
    drives_host_tests = True
    control_device = CONSOLE_CONTROL
    log_files: tuple[LogFile, ...] = (LogFile("diagnostics.json"), LogFile(FRAMES_FILE, text=False))

    def __init__(self, url: str, token: str | None = None, poll: float = SERIAL_POLL) -> None:
        self.client = WorkerClient(url, token)
        self.poll = poll

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        if not decl.requires:
            return []
        features = self.client.contract().features
        return [f for f in decl.requires if f not in features]

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        return Firmware.UEFI  # a board boots what it was flashed with, through its own firmware

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, settings: Settings) -> str | None:
        return "a board is flashed and powered on for every test"

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[AutokitMachine]:
        with (
            tempfile.TemporaryDirectory(prefix=f"harness-{plan.decl.name}-") as tmp,
            self.client.reserved() as worker,
        ):
            workdir = Path(tmp)
            image = plan_board_image(plan, workdir)
            capture = "screencapture" in worker.contract().features
            worker.network()
            worker.upload_and_flash(image, workdir)
            image.unlink()
            if capture:
                worker.start_capture()
            worker.power_on()
            machine = AutokitMachine(worker, log_dir, self.poll, plan.console_limit)
            try:
                yield machine
            finally:
                with contextlib.suppress(WorkerError):
                    worker.power_off()
                if capture:
                    with contextlib.suppress(WorkerError, OSError):
                        (log_dir / FRAMES_FILE).write_bytes(worker.stop_capture())
                with contextlib.suppress(WorkerError, OSError):
                    (log_dir / "diagnostics.json").write_text(
                        json.dumps(worker.diagnostics(), indent=1) + "\n"
                    )
