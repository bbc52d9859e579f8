"""The whole run of one test: declare -> plan -> boot -> watch -> collect -> classify -> gate -> report."""

from __future__ import annotations

import contextlib
import datetime
import logging
import shlex
import time
from collections.abc import Callable, Generator
from pathlib import Path

import attrs

from harness.boot.machine import Backend, Ending, EndingKind
from harness.boot.plan import BootPath, BootPlan, plan_boot
from harness.boot.watch import power_off_after, watch
from harness.declaration.declaration import TestDeclaration, skip_reason
from harness.declaration.keys import Storage
from harness.errors import HarnessError
from harness.guest.units import MINIMUM_SYSTEMD
from harness.image.doctor import boot_blockers
from harness.image.esp import secure_boot_refusal
from harness.image.parts import Image, ImageParts
from harness.settings import SaveJournal, Settings
from harness.verdict.gates import gate
from harness.verdict.journal import keep_journal, unit_excerpt
from harness.verdict.log_dir import CONSOLE_FILE, JOURNAL_EXPORT, check_log_space, clear_logs
from harness.verdict.notify import GuestReport, Notify
from harness.verdict.record import NOTHING_FOUND, TIMELINE_FILE, Found, TestRecord, run_inputs
from harness.verdict.results import Outcome, Status, classify
from harness.verdict.secrets import Secrets
from harness.verdict.subtests import Subtest, subtests_from
from harness.verdict.timeline import decode_timeline, merge_timelines

log = logging.getLogger(__name__)


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
        command: tuple[str, ...] = (),
        timeout_bound: float | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.timeout_bound = timeout_bound  # the most meson's own timeout allows (the glue's)
        self.command = command  # how the wrapper was started, for a rerun outside meson
        self.build_dir = build_dir
        self.snapshot_dir = snapshot_dir
        self.run = run
        self.interactive_rerun = interactive_rerun
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.inputs = ""  # what the run is made of (record.run_inputs), once the image is open
        self.plan: BootPlan | None = None  # once planned: its timeout goes in the record
        self._t0 = time.monotonic()

    def record(
        self,
        decl: TestDeclaration,
        backend: str,
        firmware: str,
        outcome: Outcome,
        found: Found = NOTHING_FOUND,
    ) -> TestRecord:
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
            subtests=found.subtests,
            journal=str(found.journal or ""),
            journal_excerpt=found.journal_excerpt,
            rerun=tuple(self.rerun_commands(decl, outcome, found.journal, found.subtests)),
            boot=found.boot,
            retried=found.retried,
            os=found.os,
            job_url=found.job_url,
            inputs=self.inputs,
            timeout_s=self.plan.timeout if self.plan else None,
            timeout_factor=self.plan.timeout_factor if self.plan else None,
            timeout_why=self.plan.timeout_why if self.plan else "",
        )

    def rerun_commands(
        self,
        decl: TestDeclaration,
        outcome: Outcome,
        journal: Path | None,
        subtests: tuple[Subtest, ...] = (),
    ) -> list[str]:
        """On failure: one command that reruns exactly this test (only its failed testcases,
        where the payload's testcases said which), one that reads its journal."""
        if not outcome.status.is_failure():
            return []
        how = "--interactive " if self.interactive_rerun else ""
        failed = [s.name for s in subtests if s.status == Status.FAIL and s.name.startswith("testcase_")]
        only = f"HARNESS_MATCH_TESTCASE={shlex.quote('^(' + '|'.join(failed) + ')$')} " if failed else ""
        if self.build_dir is not None:
            commands = [f"{only}meson test -C {shlex.quote(str(self.build_dir))} {how}{decl.name}"]
        else:  # run by hand, not by meson: the same command again
            commands = [f"{only}{shlex.join(self.command)}"] if self.command else []
        if journal is not None and journal.suffix == ".journal":
            commands.append(f"journalctl --file {shlex.quote(str(journal))} -u {decl.unit_name}")
        elif journal is not None:
            commands.append(f"less {shlex.quote(str(journal))}")
        return commands


def run_test(
    decl: TestDeclaration,
    image_parts: ImageParts,
    ctx: RunContext,
    backend: Backend,
    settings: Settings,
    interactive: bool = False,
    timeout_factor: float | None = None,
) -> TestRecord:
    """Run one test; the record says how it went and where its logs are."""
    clear_logs(ctx.log_dir, backend.log_files)
    check_log_space(ctx.log_dir)
    skipped = skip_before_boot(decl, backend, settings)
    if skipped:
        return ctx.record(decl, backend.name, "", skipped)
    if decl.host is not None:  # a typo in the file costs a second, not a boot
        from harness.host.precheck import problems, summary

        found = problems(decl.host)
        if found:
            return ctx.record(decl, backend.name, "", Outcome(Status.ERROR, summary(decl.host, found)))
    image = Image.open(image_parts)
    ctx.inputs = run_inputs((image.path, image.kernel, image.initrd, image.uki), repr(decl), decl.test_dir)
    check_systemd(image)
    for blocker in boot_blockers(image):
        raise blocker
    unbootable = secure_boot_refusal(image) if decl.firmware.is_secure_boot() else None
    if unbootable:  # not the test's fault, nor the harness's: the image was built without it
        return ctx.record(decl, backend.name, "", Outcome(Status.SKIP, unbootable))
    plan = plan_boot(
        decl,
        image,
        backend,
        interactive,
        timeout_factor,
        settings,
        ctx.snapshot_dir,
        ctx.run,
        ctx.timeout_bound,
    )
    ctx.plan = plan
    announce(decl, image, plan, backend)
    secrets = Secrets.of(decl)
    run: BootedRun
    if decl.host is not None:
        from harness.host.drive import drive  # and pytest with it: for host-driven tests only

        run = drive(decl.host, image, plan, backend, ctx.log_dir, secrets, settings.save_journal)
    else:
        # A crash before the guest says anything happens in CI and is not the test's; booted
        # again HARNESS_RETRY_QEMU_CRASH times (once), after which it is an ERROR.
        run = in_guest(decl, image, plan, backend, ctx.log_dir, settings.retry_qemu_crash, secrets)
    return conclude(decl, ctx, backend, plan.firmware, run, secrets, settings.save_journal)


# A test's run from its boot (in_guest, host.drive.drive): it yields the verdict of the
# test's own check, is sent that verdict back through the gates, and returns what it
# found once its machine stopped.
BootedRun = Generator[Outcome, Outcome, Found]


def conclude(
    decl: TestDeclaration,
    ctx: RunContext,
    backend: Backend,
    firmware: str,
    run: BootedRun,
    secrets: Secrets,
    save_journal: SaveJournal,
) -> TestRecord:
    """The one path after a boot, for a test in the guest and a host-driven one alike:
    the run's verdict through the gates (which read each log as it will be kept: a
    host-driven test's machine still runs then, to fetch the journal the verdict wants),
    the secrets withheld from the logs once the machine stopped, the journal kept or not,
    and the record."""
    console, export = ctx.log_dir / CONSOLE_FILE, ctx.log_dir / JOURNAL_EXPORT
    try:
        outcome = gate(next(run), console, export, decl, secrets)
        found = finish(run, outcome)
    finally:
        run.close()  # a run the gates broke off leaves its machine
    secrets.withhold(ctx.log_dir, backend.log_files)
    # What the test unit logged, read before keep_journal converts the export; a host-driven
    # test boots no test unit.
    excerpt = "" if decl.host else unit_excerpt(export, decl.unit_name)
    journal = keep_journal(export, save_journal, outcome.status)
    found = attrs.evolve(found, journal=journal, journal_excerpt=excerpt)
    return ctx.record(decl, backend.name, firmware, outcome, found)


def finish(run: BootedRun, outcome: Outcome) -> Found:
    """Send the run its verdict, gated; what it found, once it returned."""
    try:
        run.send(outcome)
    except StopIteration as returned:
        found: Found = returned.value
        return found
    raise RuntimeError("a run yielded a second verdict")


def in_guest(
    decl: TestDeclaration,
    image: Image,
    plan: BootPlan,
    backend: Backend,
    log_dir: Path,
    retries: int,
    secrets: Secrets,
) -> BootedRun:
    """A test in the guest: boot as planned and wait for the test's end; yield the verdict
    of what the guest said (masked as it enters), and with the gated verdict back, return
    its subtests and the boot's facts."""
    run = boot_and_wait(backend, plan, log_dir, retries).masked(secrets.text)
    outcome = classify(decl.name, decl.exit_code, plan.timeout, run.ending, run.report, run.detail)
    if plan.shell and not run.report.test_started and outcome.status != Status.ERROR:
        outcome = Outcome(Status.SKIP, "HARNESS_SHELL=1: a shell instead of the test, which was not started")
    outcome = yield outcome
    keep_timeline(log_dir, run)
    return Found(
        subtests=tuple(subtests_from(run.report, outcome.reason)),
        boot=str(run.boot_path),
        retried=run.retried,
        os=image.os_name,
        job_url=run.job_url,
    )


def skip_before_boot(decl: TestDeclaration, backend: Backend, settings: Settings) -> Outcome | None:
    reason = skip_reason(decl, settings)
    if reason:
        return Outcome(Status.SKIP, reason)
    if decl.host and not backend.drives_host_tests:
        return Outcome(
            Status.SKIP,
            f"a host-driven test, and the {backend.name} backend's machines cannot be driven from the "
            "host (a LAVA job runs without the harness at the controls); it runs on qemu, autokit and nspawn",
        )
    missing = backend.unmet_requirements(decl)
    if missing:
        return Outcome(
            Status.SKIP, f"the {backend.name} machine lacks required features: {', '.join(missing)}"
        )
    return None


def timeout_text(plan: BootPlan) -> str:
    if plan.timeout is None:
        return "none"
    return f"{plan.timeout:g} s = {plan.decl.timeout} s x{plan.timeout_factor:g}, {plan.timeout_why}"


def announce(decl: TestDeclaration, image: Image, plan: BootPlan, backend: Backend) -> None:
    """The wrapper's first line: what boots, how, where, and for how long."""
    how = "resuming the booted snapshot of" if plan.boot_path is BootPath.SNAPSHOT else "booting"
    log.info(
        f"{decl.name}: {how} {image.path.name} ({image.os_name or 'unknown OS'}, {plan.firmware}, "
        f"{plan.accel.kind}: {plan.accel.reason}; "
        f"timeout {timeout_text(plan)}) on {backend.name}"
        + (
            f"; cold boot: {plan.cold_reason}"
            if plan.boot_path is BootPath.COLD and backend.can_resume
            else ""
        )
    )
    direct = plan.firmware in ("linux", "linux-noinitrd")  # a UKI brings an initrd of its own
    if direct and not image.initrd_has_systemd and decl.storage == Storage.VOLATILE:
        log.info(
            f"{decl.name}: {image.path.name} boots with no systemd in an initrd, which is what makes "
            "storage 'volatile' (systemd.volatile=): the test's writes last until the VM ends, reboots included"
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
            (log_dir / CONSOLE_FILE).replace(kept)
        log.warning(
            f"{plan.decl.name}: the {backend.name} machine crashed before the guest said anything "
            f"({run.crash_description}; console: {kept.name}); booting again ({retry} of {retries})"
        )
        run = attrs.evolve(run_machine(backend, plan, log_dir), retried=retry)
    return run


def keep_timeline(log_dir: Path, run: MachineRun) -> None:
    """The boot's timeline for the report: a resumed guest sends its test unit's part only,
    the rest is the snapshot's."""
    timeline = decode_timeline(run.report.last(Notify.TIMELINE))
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

    def masked(self, hide: Callable[[str], str]) -> MachineRun:
        """The run with the machine's words passed through `hide` as they enter it (secrets.py):
        how it ended, what the guest reported, what the machine said about a crash."""
        ending = attrs.evolve(self.ending, detail=hide(self.ending.detail))
        return attrs.evolve(self, ending=ending, report=self.report.masked(hide), detail=hide(self.detail))

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
        ending = watch(machine, plan.timeout, plan.console_limit)
        power_off_after(machine, ending)
        return MachineRun(
            ending,
            machine.collect(),
            machine.failure_detail(),
            machine.boot_path,
            machine.boot_timeline,
            job_url=machine.job_url,
        )
