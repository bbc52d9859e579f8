"""The LAVA backend: the same tests as jobs in a LAVA lab, whose scheduler shares the
boards, queues the jobs and keeps their logs.

Per test: build the board image (as for an autokit board), write the job definition
(job.py) beside the logs, submit it, and follow the job: its log's console lines go into
console.log as they come, where the harness reads the guest's report lines, a kernel
panic and a flood as it does for a VM. The harness keeps the test's timeout itself and
cancels the job when it decides (timeout, panic, flood, Ctrl-C); the job's health
speaks only when the guest said nothing of its end: Complete is the guest's silence (FAIL,
as for a VM), Incomplete or Canceled by someone else is the lab's fault (ERROR).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from harness.backends.board.console import BoardConsole
from harness.backends.board.image import plan_board_image
from harness.backends.lava.client import CANCELED, COMPLETE, JobState, LabError, LavaClient
from harness.backends.lava.job import job_definition
from harness.boot.machine import Ending, EndingKind, LogFile, Look, WatchRules
from harness.boot.plan import CONSOLE_LIMIT, BootPath, BootPlan, plan_boot
from harness.deadline import Deadline
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import Firmware
from harness.errors import HarnessError
from harness.guest.reporting import CONSOLE_CHANNEL
from harness.guest.units import CONSOLE_CONTROL
from harness.host.controls import Controls
from harness.image.parts import Image, ImageParts
from harness.settings import Settings
from harness.verdict.notify import GuestReport

log = logging.getLogger(__name__)

POLL = 2.0  # s between two looks at the job
QUEUE_LIMIT = Settings.defaults().lava_queue_timeout  # s a job may wait for a device
# s the job may take to be seen finished once the guest has reported its end (a lab's
# worker notices a finished job at its next ping, every 20 s by default); past it, the
# guest's word is the verdict and the job is left to finish by itself.
FINISH_GRACE = 30
# s the server may fail to answer while a job is followed (a restart, a proxy's 502)
# before the test is an ERROR: the job goes on in the lab meanwhile.
SERVER_PATIENCE = 60
JOB_FILE = "lava-job.yaml"


class LavaMachine:
    """One submitted job, seen as a machine: its console is the job log's target lines."""

    display_name = "the LAVA job"

    def __init__(
        self,
        client: LavaClient,
        job_id: int,
        log_dir: Path,
        poll: float = POLL,
        queue_limit: float = QUEUE_LIMIT,
        console_limit: int = CONSOLE_LIMIT,
        finish_grace: float = FINISH_GRACE,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.job_url = client.job_url(job_id)
        self.boot_path = BootPath.COLD  # a lab's device boots the test's own image every time
        self.boot_timeline: str | None = None
        self.console_log = log_dir / "console.log"
        self.console = BoardConsole(self.console_log, console_limit)
        self.log_lines = 0  # lines of the job log read so far
        self.poll = poll
        self.queue_limit = queue_limit
        self.queued_until = Deadline.after(queue_limit)
        self.unanswered: Deadline | None = None  # since the server stopped answering: how long it may
        # The guest's word decides once it came; the job then winds up by itself (a lab's
        # worker notices it finished at its next ping), and is waited for a while.
        self.watch_rules = WatchRules(poll=poll, end_at_last_word=False, finish_grace=finish_grace)
        self.state = JobState(job_id, "Submitted", "Unknown", "", "")
        self.cancelled = False  # the harness asked LAVA to cancel the job

    def _follow(self) -> bytes:
        """Read the job's state and its new log lines; the console lines go to console.log."""
        self.state = self.client.job(self.job_id)
        lines = self.client.log(self.job_id, self.log_lines)
        self.log_lines += len(lines)
        new = b"".join(f"{line.message}\n".encode() for line in lines if line.level == "target")
        self.console.add(new)
        return new

    def guest_ended(self) -> bool:
        return self.console.report.test_ended

    def look(self) -> Look:
        try:
            new = self._follow()
            self.unanswered = None
        except LabError as e:  # a restart, a proxy's 502: the job goes on in the lab meanwhile
            self.unanswered = self.unanswered or Deadline.after(SERVER_PATIENCE)
            if self.unanswered.passed():
                raise
            log.warning(f"warning: {e.what}; trying again")
            time.sleep(self.poll or 1)
            new = b""
        # The test's time starts with the device's first line, not while the job waits.
        return Look(self.console.report, new, self.console.written, self._stopped(), bool(self.console.kept))

    def _stopped(self) -> Ending | None:
        if self.state.finished:
            return self._ending()
        if self.state.queued and self.queued_until.passed():
            self.cancel()
            return Ending(
                EndingKind.INFRASTRUCTURE,
                detail=f"LAVA job {self.job_id} waited {self.queue_limit:.0f} s for a device and got none "
                "(HARNESS_LAVA_QUEUE_TIMEOUT); it was canceled",
            )
        return None

    def _ending(self) -> Ending:
        """How a finished job ended, for the classifier: the guest's word first."""
        if self.guest_ended() or self.state.health == COMPLETE:
            return Ending(EndingKind.EXITED, 0)
        reason = self.state.failure_comment
        if not reason and self.state.health != CANCELED:
            with contextlib.suppress(LabError):
                reason = self.client.job_error(self.job_id)
        comment = f": {reason}" if reason else ""
        who = " in the lab" if self.state.health == CANCELED else ""
        return Ending(
            EndingKind.INFRASTRUCTURE,
            detail=f"LAVA job {self.job_id} ended {self.state.health}{who}{comment} (see {self.job_url})",
        )

    def cancel(self) -> None:
        if not self.state.finished and not self.cancelled:
            self.cancelled = True
            self.client.cancel(self.job_id)

    def power_off(self, orderly: bool) -> None:
        self.cancel()

    def collect(self) -> GuestReport:
        with contextlib.suppress(LabError):  # the log's last lines, when the lab still answers
            self._follow()
        return self.console.report

    def failure_detail(self) -> str:
        return ""

    def controls(self) -> Controls:
        raise HarnessError(
            f"{self.display_name} cannot be driven from the host", "run host-driven tests on qemu"
        )


class LavaBackend:
    runs_on_boards = True  # its timeouts are not stretched by this host's load (boot/plan.py)
    name = "lava"
    report_channel = CONSOLE_CHANNEL
    can_resume = False
    drives_host_tests = False
    control_device = CONSOLE_CONTROL  # unused: a LAVA job is not driven from here
    log_files: tuple[LogFile, ...] = (LogFile(JOB_FILE),)

    def __init__(
        self,
        url: str,
        device_type: str,
        token: str | None,
        poll: float = POLL,
        queue_limit: float = QUEUE_LIMIT,
        image_server: ImageServer | None = None,
    ) -> None:
        self.client = LavaClient(url, token)
        self.device_type = device_type
        self.poll = poll
        self.queue_limit = queue_limit
        self.image_server = image_server

    def unmet_requirements(self, decl: TestDeclaration) -> list[str]:
        """`requires` are device tags: met when one device of the type has them all."""
        if not decl.requires:
            return []
        devices = self.client.device_tags(self.device_type)
        if any(set(decl.requires) <= tags for tags in devices):
            return []
        return [f"no {self.device_type} device has the tags {', '.join(decl.requires)}"]

    def firmware(self, declared: Firmware, image: Image) -> Firmware:
        return Firmware.UEFI  # the device boots its image through its own firmware

    def cold_boot_reason(self, decl: TestDeclaration, firmware: Firmware, settings: Settings) -> str | None:
        return "a lab's device boots every test's own image"

    def definition(self, plan: BootPlan, image_url: str) -> str:
        return job_definition(
            plan.name,
            plan.timeout or 0,
            image_url,
            self.device_type,
            plan.decl.requires,
            plan.image.architecture,
        )

    @contextlib.contextmanager
    def boot(self, plan: BootPlan, log_dir: Path) -> Iterator[LavaMachine]:
        # The image must stay until the dispatcher has copied it: the directory goes
        # when the job has ended (or was canceled).
        with (
            tempfile.TemporaryDirectory(prefix=f"harness-{plan.decl.name}-lava-") as tmp,
            # The image's directory stays private (0700): a dispatcher on this machine reads
            # it as root, as Debian's lava-worker runs.
            offered(plan_board_image(plan, Path(tmp)), self.image_server) as url,
        ):
            definition = self.definition(plan, url)
            (log_dir / JOB_FILE).write_text(definition)
            job_id = self.client.submit(definition)
            machine = LavaMachine(
                self.client, job_id, log_dir, self.poll, self.queue_limit, plan.console_limit
            )
            log.info(f"{plan.name}: LAVA job {job_id}: {machine.job_url}")
            try:
                yield machine
            finally:
                if not machine.guest_ended():  # a job whose test is over winds up by itself
                    with contextlib.suppress(LabError):
                        machine.cancel()


@attrs.frozen
class ImageServer:
    """A directory a web server serves to the lab's dispatchers, and its URL there, for a
    lab whose dispatchers run elsewhere (HARNESS_LAVA_IMAGE_DIR and HARNESS_LAVA_IMAGE_URL)."""

    directory: Path
    url: str


def image_server(directory: str, url: str) -> ImageServer | None:
    """The image server the options name, if any; both or neither must be given."""
    if not directory and not url:
        return None
    if not (directory and url):
        raise HarnessError(
            "the lava backend needs both the directory for the images and its URL, or neither",
            "set -Dlava-image-dir and -Dlava-image-url (HARNESS_LAVA_IMAGE_DIR, HARNESS_LAVA_IMAGE_URL) "
            "together; leave both empty where the lab's dispatcher runs on this machine (file://)",
        )
    if not Path(directory).is_dir():
        raise HarnessError(
            f"the directory for the LAVA images, {directory}, does not exist",
            "create it (the directory your web server serves as the image URL), or fix -Dlava-image-dir",
        )
    return ImageServer(Path(directory), url)


@contextlib.contextmanager
def offered(image: Path, server: ImageServer | None) -> Iterator[str]:
    """The URL the lab's dispatcher fetches the test's image from while the job lasts: the
    file itself where the dispatcher runs on this machine; else the image server, in a
    directory of its own whose name nobody can guess (the image holds the test's
    credentials), removed when the job is over."""
    if server is None:
        yield image.as_uri()
        return
    shelf = server.directory / secrets.token_urlsafe(18)
    shelf.mkdir(mode=0o755)
    try:
        shutil.move(image, shelf / image.name)
        (shelf / image.name).chmod(0o644)  # for the web server, which may be another user
        yield f"{server.url.rstrip('/')}/{shelf.name}/{image.name}"
    finally:
        shutil.rmtree(shelf, ignore_errors=True)


def write_job(
    decl: TestDeclaration,
    image_parts: ImageParts,
    timeout_factor: float | None,
    out_dir: Path,
    settings: Settings,
) -> tuple[str, Path]:
    """The job definition the backend would submit for `decl`, and its board image,
    written to `out_dir` for someone who submits by hand (`python3 -m harness lava-job`)."""
    backend = LavaBackend("", settings.lava_device_type, None)
    plan = plan_boot(decl, Image.open(image_parts), backend, False, timeout_factor, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Built beside its place: a rename across file systems would fail.
    with tempfile.TemporaryDirectory(prefix=".board-", dir=out_dir) as tmp:
        image = plan_board_image(plan, Path(tmp)).replace(out_dir / "board.raw")
    image.chmod(0o600)
    definition = backend.definition(plan, image.absolute().as_uri())
    (out_dir / JOB_FILE).write_text(definition)
    return definition, image
