"""The whole run of one test: declare -> plan -> boot -> collect -> classify -> report."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import shlex
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from harness.accel import detect
from harness.backend import CONSOLE_LIMIT, Backend, BootPath, BootPlan, Ending, EndingKind
from harness.declaration import Firmware, Storage, TestDeclaration, skip_reason
from harness.errors import HarnessError, LogDirBusy
from harness.guest.units import IMPORT_CREDENTIAL_SINCE, MINIMUM_SYSTEMD, boot_options, guest_credentials
from harness.image import Image
from harness.journal import keep_journal, unit_excerpt
from harness.notify import GuestReport
from harness.record import RESULT_FILE, TIMELINE_FILE, TestRecord
from harness.results import Outcome, Status, classify
from harness.secrets import mask_file, mask_text, masked_values
from harness.subtests import subtests_from
from harness.timeline import decode_timeline, merge_timelines

log = logging.getLogger(__name__)

LOG_FILES = (
    "console.log",
    "journal.export",
    "journal.journal",
    "qemu-command.txt",
    "diagnostics.json",
    "frames.tar.gz",
    "screen.png",
    TIMELINE_FILE,
    RESULT_FILE,
)


def harness_cmdline(decl: TestDeclaration, interactive: bool) -> list[str]:
    """What every test's kernel command line gets, ahead of the test's own additions."""
    return boot_options(
        decl.unit_name, interactive, volatile=decl.storage == Storage.VOLATILE, machine_id=uuid.uuid4().hex
    ) + list(decl.cmdline)


def choose_boot_path(
    decl: TestDeclaration,
    image: Image,
    firmware: Firmware,
    backend: Backend,
    interactive: bool,
    env: dict[str, str],
) -> tuple[BootPath, str]:
    """Resume a saved boot where the backend allows it for this test; otherwise boot
    cold, and say why."""
    if interactive:
        return BootPath.COLD, "interactive run"
    if image.systemd_version is not None and image.systemd_version < IMPORT_CREDENTIAL_SINCE:
        # A resumed guest finds the test's credentials in /run/credstore, which only
        # ImportCredential= reads.
        return BootPath.COLD, f"the image's systemd {image.systemd_version} has no ImportCredential= (254)"
    why = backend.cold_boot_reason(decl, firmware, env)
    return (BootPath.COLD, why) if why else (BootPath.SNAPSHOT, "")


def plan_boot(
    decl: TestDeclaration,
    image: Image,
    backend: Backend,
    interactive: bool,
    timeout_factor: int | None,
    env: dict[str, str],
    snapshot_dir: Path | None = None,
    attempt: str = "",
) -> BootPlan:
    accel = detect(image.architecture, env)
    factor = timeout_factor if timeout_factor is not None else accel.timeout_factor
    firmware = backend.firmware(decl.firmware, image)
    boot, cold_reason = choose_boot_path(decl, image, firmware, backend, interactive, env)
    whole_journal = env.get("HARNESS_SAVE_JOURNAL", "fail") == "1"
    if snapshot_dir is None:
        boot, cold_reason = BootPath.COLD, "no directory for snapshots"
    return BootPlan(
        decl=decl,
        image=image,
        firmware=firmware,
        cmdline=tuple(harness_cmdline(decl, interactive)),
        credentials=tuple(
            guest_credentials(decl, interactive, backend.report_channel, whole_journal, image.systemd_version)
        )
        + decl.credentials,
        accel=accel,
        timeout=None if interactive else decl.timeout * factor,
        interactive=interactive,
        boot=boot,
        cold_reason=cold_reason,
        snapshot_dir=snapshot_dir,
        attempt=attempt,
        whole_journal=whole_journal,
        console_limit=console_limit(env),
    )


def console_limit(env: Mapping[str, str]) -> int:
    text = env.get("HARNESS_CONSOLE_LIMIT_MB", "")
    if not text:
        return CONSOLE_LIMIT
    if not text.isdigit() or int(text) == 0:
        raise HarnessError(
            f"HARNESS_CONSOLE_LIMIT_MB='{text}' is not a number of megabytes",
            f"set it to a whole number above 0, or unset it (default {CONSOLE_LIMIT // 2**20})",
        )
    return int(text) * 2**20


class RunContext:
    """Where a test's run belongs: its log directory, meson's build directory (for the
    rerun hints) and the `meson test` run it is part of."""

    def __init__(
        self,
        log_dir: Path,
        build_dir: Path | None,
        run: str,
        interactive_rerun: bool = True,
        snapshot_dir: Path | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.build_dir = build_dir
        self.snapshot_dir = snapshot_dir
        self.run = run
        self.interactive_rerun = interactive_rerun
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._t0 = time.monotonic()

    def record(
        self, decl: TestDeclaration, backend: str, firmware: str, outcome: Outcome, **found: Any
    ) -> TestRecord:
        journal = found.pop("journal", None)
        return TestRecord(
            name=decl.name,
            run=self.run,
            backend=backend,
            firmware=firmware,
            status=outcome.status,
            reason=outcome.reason,
            cause=outcome.cause,
            started=self.started,
            duration_s=round(time.monotonic() - self._t0, 1),
            log_dir=str(self.log_dir),
            journal=str(journal or ""),
            rerun=tuple(self.rerun_commands(decl, outcome, journal)),
            **found,
        )

    def rerun_commands(self, decl: TestDeclaration, outcome: Outcome, journal: Path | None) -> list[str]:
        """On failure: one command that reruns exactly this test, one that reads its journal."""
        if not outcome.status.is_failure():
            return []
        build = shlex.quote(str(self.build_dir)) if self.build_dir else "build"
        how = "--interactive " if self.interactive_rerun else ""
        commands = [f"meson test -C {build} {how}{decl.name}"]
        if journal is not None and journal.suffix == ".journal":
            commands.append(f"journalctl --file {shlex.quote(str(journal))} -u {decl.unit_name}")
        elif journal is not None:
            commands.append(f"less {shlex.quote(str(journal))}")
        return commands


def run_test(
    decl: TestDeclaration,
    image_path: Path,
    ctx: RunContext,
    backend: Backend,
    env: dict[str, str],
    interactive: bool = False,
    timeout_factor: int | None = None,
) -> TestRecord:
    """Run one test; the record says how it went and where its logs are."""
    clear_logs(ctx.log_dir)
    check_log_space(ctx.log_dir)
    skipped = skip_before_boot(decl, backend, env)
    if skipped:
        return ctx.record(decl, backend.name, "", skipped)
    image = Image.open(image_path)
    check_systemd(image)
    plan = plan_boot(decl, image, backend, interactive, timeout_factor, env, ctx.snapshot_dir, ctx.run)
    announce(decl, image, plan, backend)
    run = boot_and_wait(backend, plan, ctx.log_dir, crash_retries(env))
    secrets = masked_values(decl)
    mask_logs(ctx.log_dir, secrets)
    outcome = classify(
        decl.name, decl.exit_code, plan.timeout, run.ending, run.report, mask_text(run.detail, secrets)
    )
    outcome = attrs.evolve(outcome, reason=mask_text(outcome.reason, secrets))
    keep_timeline(ctx.log_dir, run)
    subtests = tuple(
        attrs.evolve(s, name=mask_text(s.name, secrets), detail=mask_text(s.detail, secrets))
        for s in subtests_from(run.report, outcome.reason)
    )
    export = ctx.log_dir / "journal.export"
    excerpt = mask_text(unit_excerpt(export, decl.unit_name), secrets)
    journal = keep_journal(export, env.get("HARNESS_SAVE_JOURNAL", "fail"), outcome.status)
    return ctx.record(
        decl,
        backend.name,
        plan.firmware,
        outcome,
        journal=journal,
        journal_excerpt=excerpt,
        subtests=subtests,
        boot=str(run.boot_path),
        retried=run.retried,
        os=image.os_name,
        job_url=run.job_url,
    )


LOCK_FILE = ".lock"


@contextlib.contextmanager
def owning_log_dir(log_dir: Path, name: str) -> Iterator[None]:
    """One run of a test at a time in its log directory: a second `meson test` on the same
    build directory would delete the first run's logs while its VM writes them and put
    its own verdict in their place. The second run stops at once instead (LogDirBusy),
    touching nothing; the lock is the kernel's, so it goes with the process, however it
    ends, and the file left behind binds nobody."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise LogDirBusy(
                f"{name} is already running with its logs in {log_dir} (process {holder}); "
                "this run would overwrite them, so it did not start",
                "wait for the other run, or run this one from a build directory of its own "
                "(meson setup build2 ...)",
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def clear_logs(log_dir: Path) -> None:
    """An earlier run's logs must not pass for this run's."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        (log_dir / name).unlink(missing_ok=True)
    for kept in log_dir.glob("console.crash-*.log"):
        kept.unlink()


MIN_LOG_SPACE = 16 * 2**20  # bytes: a failing test's console log and journal fit, mostly


def check_log_space(log_dir: Path) -> None:
    """A full disk under the log directory would lose the logs half-way, and the verdict
    with them: better not to start."""
    st = os.statvfs(log_dir)
    free = st.f_bavail * st.f_frsize
    if free < MIN_LOG_SPACE:
        raise HarnessError(
            f"only {free // 2**20} MB free for the logs in {log_dir} (a run needs "
            f"{MIN_LOG_SPACE // 2**20} MB at least)",
            "free space on that file system, or give the build directory another disk",
        )


def skip_before_boot(decl: TestDeclaration, backend: Backend, env: Mapping[str, str]) -> Outcome | None:
    reason = skip_reason(decl, env)
    if reason:
        return Outcome(Status.SKIP, reason)
    missing = backend.unmet_requirements(decl)
    if missing:
        return Outcome(
            Status.SKIP, f"the {backend.name} machine lacks required features: {', '.join(missing)}"
        )
    return None


def announce(decl: TestDeclaration, image: Image, plan: BootPlan, backend: Backend) -> None:
    """The wrapper's first line: what boots, how, where, and for how long."""
    how = "resuming the booted snapshot of" if plan.boot is BootPath.SNAPSHOT else "booting"
    log.info(
        f"{decl.name}: {how} {image.path.name} ({image.os_name or 'unknown OS'}, {plan.firmware}, "
        f"{plan.accel.kind}: {plan.accel.reason}; "
        f"timeout {plan.timeout or 'none'}{' s' if plan.timeout else ''}) on {backend.name}"
        + (f"; cold boot: {plan.cold_reason}" if plan.boot is BootPath.COLD and backend.can_resume else "")
    )
    if plan.interactive:
        log.info("The console is attached: the test's output follows. Ctrl-a x quits QEMU.")


def boot_and_wait(backend: Backend, plan: BootPlan, log_dir: Path, retries: int) -> MachineRun:
    """One run of the machine, and as many more as `retries` while it crashes before the
    guest says anything (the crashed boots' consoles are kept beside)."""
    run = run_machine(backend, plan, log_dir)
    for retry in range(1, retries + 1):
        if not run.crashed:
            break
        kept = log_dir / f"console.crash-{retry}.log"
        with contextlib.suppress(FileNotFoundError):
            (log_dir / "console.log").replace(kept)
        log.warning(
            f"{plan.decl.name}: the {backend.name} machine crashed before the guest said anything "
            f"({run.crash_description}; console: {kept.name}); booting again ({retry} of {retries})"
        )
        run = attrs.evolve(run_machine(backend, plan, log_dir), retried=retry)
    return run


def mask_logs(log_dir: Path, secrets: list[bytes]) -> None:
    for kept in (*log_dir.glob("console*.log"), log_dir / "diagnostics.json"):
        mask_file(kept, secrets)
    mask_file(log_dir / "journal.export", secrets, same_length=True)  # binary fields carry their length


def keep_timeline(log_dir: Path, run: MachineRun) -> None:
    """The boot's timeline for the report: a resumed guest sends its test unit's part only,
    the rest is the snapshot's."""
    timeline = decode_timeline(run.report.last("X_HARNESS_TIMELINE"))
    if timeline and run.boot_timeline:
        timeline = merge_timelines(run.boot_timeline, timeline)
    if timeline:
        (log_dir / TIMELINE_FILE).write_text(timeline)


@attrs.frozen
class MachineRun:
    """One boot of the plan, up to the machine's stop: what ended it and what the guest said."""

    ending: Ending
    report: GuestReport
    detail: str  # what the machine said about a crash
    boot_path: BootPath
    boot_timeline: str | None
    retried: int = 0  # boots before this one that crashed
    job_url: str = ""  # the lab's page of the run (a LAVA job), if a lab ran it

    @property
    def crashed(self) -> bool:
        """The machine died on its own before the guest said a word: not the test's doing."""
        return (
            self.ending.kind == EndingKind.EXITED
            and self.ending.machine_status not in (0, None)
            and not self.report.pairs
        )

    @property
    def crash_description(self) -> str:
        status = self.ending.machine_status or 0
        how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        return how + (f": {self.detail}" if self.detail else "")


def check_systemd(image: Image) -> None:
    """An image whose systemd cannot receive the test unit would only time out: say so
    before anything boots."""
    if image.systemd_version is not None and image.systemd_version < MINIMUM_SYSTEMD:
        raise HarnessError(
            f"{image.path}: its systemd is {image.systemd_version}; the harness needs {MINIMUM_SYSTEMD} or "
            "later (credentials imported from SMBIOS and fw_cfg)",
            "build the image from a newer release, or with a newer systemd (backports)",
        )


def run_machine(backend: Backend, plan: BootPlan, log_dir: Path) -> MachineRun:
    with backend.boot(plan, log_dir) as machine:
        boot_path, boot_timeline = machine.boot_path, machine.boot_timeline
        ending = machine.wait(plan.timeout)
        if ending.kind != EndingKind.EXITED:
            machine.power_off(orderly=ending.kind == EndingKind.TIMEOUT)
        report = machine.collect()
        detail = machine.failure_detail()
        job_url = machine.job_url
    return MachineRun(ending, report, detail, boot_path, boot_timeline, job_url=job_url)


def crash_retries(env: Mapping[str, str]) -> int:
    """How often a machine that crashes before the guest says anything is booted again
    (HARNESS_RETRY_QEMU_CRASH, default once): such crashes happen in CI and are not the
    test's; a second one is an ERROR."""
    text = env.get("HARNESS_RETRY_QEMU_CRASH", "1")
    if not text.isdigit():
        raise HarnessError(
            f"HARNESS_RETRY_QEMU_CRASH={text!r} is not a number of retries",
            "use 0 (never retry), 1 (default), ...",
        )
    return int(text)


def describe(record: TestRecord) -> str:
    """The lines a person reads after a run: verdict, subtests, and on failure where to
    look and how to rerun."""
    how = {"snapshot": "resumed from the booted snapshot", "cold": "cold boot"}.get(record.boot, "")
    if how and record.retried:
        how += (
            f", booted again after {record.retried} crash{'es' if record.retried > 1 else ''} of the machine"
        )
    took = f" ({record.duration_s:.1f} s, {how})" if how else ""
    lines = [f"{record.name}: {record.status.upper()}: {record.reason}{took}"]
    if record.job_url:
        lines.append(f"  job:         {record.job_url}")
    for s in record.subtests:
        lines.append(f"  {s.status.upper():4} {s.name}" + (f": {s.detail}" if s.detail else ""))
    if record.status.is_failure():
        console = Path(record.log_dir) / "console.log"
        if console.exists():
            lines.append(f"  console log: {console}")
        labels = ("rerun:      ", "journal:    ")
        lines += [
            f"  {label} {command}" for label, command in zip(labels, record.rerun, strict=False)
        ]  # a rerun, and a journal when kept
    return "\n".join(lines)
