"""The autokit backend: the same tests on a board behind an autokit worker.

Per test: reserve the worker (heartbeats keep it, teardown releases it on every way
out), build the board image, flash it, power on, and read the serial console until the
test unit reports its end, the kernel panics, or the timeout passes.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from harness.backend import CONSOLE_LIMIT, BootPath, BootPlan, Ending, EndingKind, cut_log, panic_line
from harness.backends.autokit.client import WorkerClient, WorkerError
from harness.board_image import plan_board_image
from harness.declaration import Firmware, TestDeclaration
from harness.guest.units import CONSOLE_CHANNEL
from harness.image import Image
from harness.notify import GuestReport, console_notify_lines

SERIAL_POLL = 2.0


class AutokitMachine:
    def __init__(self, worker: WorkerClient, log_dir: Path, poll: float = SERIAL_POLL) -> None:
        self.worker = worker
        self.console_log = log_dir / "console.log"
        self.boot_path = BootPath.COLD  # a board is flashed and powered on for every test
        self.boot_timeline: str | None = None
        self.job_url = ""
        self.poll = poll
        self.report = GuestReport()
        self.console_limit = CONSOLE_LIMIT

    def _read_serial(self) -> bytes:
        data = self.worker.serial()
        self.console_log.write_bytes(data[: self.console_limit])
        if len(data) > self.console_limit:  # the worker keeps it all; the log keeps the limit
            cut_log(self.console_log, self.console_limit)
        self.report = GuestReport()
        self.report.add(console_notify_lines(data, CONSOLE_CHANNEL.prefix.encode()))
        return data

    def wait(self, timeout: float | None) -> Ending:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            console = self._read_serial()
            if len(console) > self.console_limit:
                self.worker.power_off()
                return Ending(
                    EndingKind.CONSOLE_FLOOD,
                    detail=f"the board wrote more than {self.console_limit // 2**20} MB to its console "
                    "(HARNESS_CONSOLE_LIMIT_MB); it was powered off and console.log cut there,",
                )
            if self.report.last("X_HARNESS_SERVICE_RESULT") is not None or self.report.entered_emergency:
                return Ending(EndingKind.EXITED)
            panic = panic_line(console)
            if panic:
                return Ending(EndingKind.PANIC, detail=panic)
            if deadline is not None and time.monotonic() >= deadline:
                return Ending(EndingKind.TIMEOUT)
            time.sleep(self.poll)

    def power_off(self, orderly: bool) -> None:
        self.worker.power_off()

    def collect(self) -> GuestReport:
        with contextlib.suppress(WorkerError):
            self._read_serial()
        return self.report

    def failure_detail(self) -> str:
        return ""


class AutokitBackend:
    name = "autokit"
    report_channel = CONSOLE_CHANNEL
    can_resume = False

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

    def cold_boot_reason(
        self, decl: TestDeclaration, firmware: Firmware, env: Mapping[str, str]
    ) -> str | None:
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
            machine = AutokitMachine(worker, log_dir, self.poll)
            machine.console_limit = plan.console_limit
            try:
                yield machine
            finally:
                with contextlib.suppress(WorkerError):
                    worker.power_off()
                if capture:
                    with contextlib.suppress(WorkerError, OSError):
                        (log_dir / "frames.tar.gz").write_bytes(worker.stop_capture())
                with contextlib.suppress(WorkerError, OSError):
                    (log_dir / "diagnostics.json").write_text(
                        json.dumps(worker.diagnostics(), indent=1) + "\n"
                    )
