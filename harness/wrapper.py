"""The whole run of one test: declare -> plan -> boot -> watch -> collect -> classify -> gate -> report."""

from __future__ import annotations

import contextlib
import datetime
import functools
import gzip
import logging
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from harness.boot.machine import Backend, Ending, EndingKind, LogFile
from harness.boot.plan import BootPath, BootPlan, plan_boot
from harness.boot.watch import power_off_after, watch
from harness.declaration.declaration import TestDeclaration, skip_reason
from harness.declaration.keys import Storage
from harness.errors import HarnessError
from harness.guest.reporting import CORE_DUMPS_EXPORT
from harness.guest.units import MINIMUM_SYSTEMD
from harness.host.driven_machine import DrivenMachine, MachineError
from harness.image.doctor import boot_blockers
from harness.image.esp import secure_boot_refusal
from harness.image.parts import Image, ImageParts
from harness.verdict.gates import gate
from harness.verdict.journal import keep_journal, unit_excerpt
from harness.verdict.log_dir import CONSOLE_FILE, HOST_TEST_LOG, JOURNAL_EXPORT, check_log_space, clear_logs
from harness.verdict.notify import GuestReport, Notify
from harness.verdict.record import TIMELINE_FILE, TestRecord
from harness.verdict.results import Outcome, Status, classify
from harness.verdict.secrets import mask_file, mask_text, masked_values
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
    ) -> None:
        self.log_dir = log_dir
        self.command = command  # how the wrapper was started, for a rerun outside meson
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
            rerun=tuple(self.rerun_commands(decl, outcome, journal, found.get("subtests", ()))),
            **found,
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
    env: dict[str, str],
    interactive: bool = False,
    timeout_factor: int | None = None,
) -> TestRecord:
    """Run one test; the record says how it went and where its logs are."""
    clear_logs(ctx.log_dir, backend.log_files)
    check_log_space(ctx.log_dir)
    skipped = skip_before_boot(decl, backend, env)
    if skipped:
        return ctx.record(decl, backend.name, "", skipped)
    image = Image.open(image_parts)
    check_systemd(image)
    for blocker in boot_blockers(image):
        raise blocker
    unbootable = secure_boot_refusal(image) if decl.firmware.is_secure_boot() else None
    if unbootable:  # not the test's fault, nor the harness's: the image was built without it
        return ctx.record(decl, backend.name, "", Outcome(Status.SKIP, unbootable))
    plan = plan_boot(decl, image, backend, interactive, timeout_factor, env, ctx.snapshot_dir, ctx.run)
    announce(decl, image, plan, backend)
    if decl.host is not None:
        return drive(decl, decl.host, image, plan, backend, ctx, env)
    run = boot_and_wait(backend, plan, ctx.log_dir, crash_retries(env))
    run = withhold_secrets(run, ctx.log_dir, masked_values(decl), backend.log_files)
    outcome = classify(decl.name, decl.exit_code, plan.timeout, run.ending, run.report, run.detail)
    if plan.shell and not run.report.test_started and outcome.status != Status.ERROR:
        outcome = Outcome(Status.SKIP, "HARNESS_SHELL=1: a shell instead of the test, which was not started")
    export = ctx.log_dir / JOURNAL_EXPORT
    outcome = gate(outcome, ctx.log_dir / CONSOLE_FILE, export, decl)
    keep_timeline(ctx.log_dir, run)
    excerpt = unit_excerpt(export, decl.unit_name)  # before keep_journal converts the export
    journal = keep_journal(export, env.get("HARNESS_SAVE_JOURNAL", "fail"), outcome.status)
    return ctx.record(
        decl,
        backend.name,
        plan.firmware,
        outcome,
        journal=journal,
        journal_excerpt=excerpt,
        subtests=tuple(subtests_from(run.report, outcome.reason)),
        boot=str(run.boot_path),
        retried=run.retried,
        os=image.os_name,
        job_url=run.job_url,
    )


def skip_before_boot(decl: TestDeclaration, backend: Backend, env: Mapping[str, str]) -> Outcome | None:
    reason = skip_reason(decl, env)
    if reason:
        return Outcome(Status.SKIP, reason)
    if decl.host and not backend.drives_host_tests:
        return Outcome(
            Status.SKIP,
            f"a host-driven test, and the {backend.name} backend's machines cannot be driven from the "
            "host (a LAVA job runs without the harness at the controls); it runs on qemu and autokit",
        )
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


def drive(
    decl: TestDeclaration,
    file: Path,
    image: Image,
    plan: BootPlan,
    backend: Backend,
    ctx: RunContext,
    env: Mapping[str, str],
) -> TestRecord:
    """A host-driven test: boot as planned, hand the machine to the test's pytest file,
    and take its steps as the subtests (harness/host/pytest_run.py)."""
    from harness.host.pytest_run import host_outcome, run_host_test

    secrets = masked_values(decl)
    with backend.boot(plan, ctx.log_dir) as machine:
        driven = DrivenMachine(machine.controls(), plan.timeout_factor, backend.name)
        run = run_host_test(file, driven, ctx.log_dir, plan.timeout)
        outcome = host_outcome(file, run)
        export = ctx.log_dir / JOURNAL_EXPORT
        if outcome.status in (Status.PASS, Status.SKIP) and driven.boot and driven.answered:
            keep_core_dumps(driven, export)
        outcome = gate(outcome, ctx.log_dir / CONSOLE_FILE, export, decl)
        wanted = outcome.status.is_failure() or env.get("HARNESS_SAVE_JOURNAL") == "1"
        if wanted and driven.boot and driven.answered and not run.error:
            keep_journal_export(driven, ctx.log_dir)
        machine.power_off(orderly=False)
        boot_path, job_url = machine.boot_path, machine.job_url
    mask_logs(ctx.log_dir, secrets, backend.log_files)
    hide = functools.partial(mask_text, values=secrets)
    return ctx.record(
        decl,
        backend.name,
        plan.firmware,
        attrs.evolve(outcome, reason=hide(outcome.reason)),
        journal=keep_journal(export, env.get("HARNESS_SAVE_JOURNAL", "fail"), outcome.status),
        subtests=tuple(attrs.evolve(s, detail=hide(s.detail)) for s in run.steps),
        boot=str(boot_path),
        os=image.os_name,
        job_url=job_url,
    )


def keep_core_dumps(driven: DrivenMachine, export: Path) -> None:
    """The core dumps the guest's journal keeps (of every boot it kept), for the gate of a
    host-driven test that passed: the test unit of the others sends them itself."""
    with contextlib.suppress(MachineError, OSError):
        export.write_bytes(driven.check(CORE_DUMPS_EXPORT, timeout=60).stdout)


def keep_journal_export(driven: DrivenMachine, log_dir: Path) -> None:
    """The guest's journal, every boot it kept, for a failed host-driven test; compressed
    on the way, as a board's serial console carries some ten kilobytes a second."""
    with contextlib.suppress(MachineError, OSError, EOFError):
        packed = driven.check("journalctl -o export | gzip -1", timeout=120).stdout
        (log_dir / JOURNAL_EXPORT).write_bytes(gzip.decompress(packed))


def mask_logs(log_dir: Path, secrets: list[bytes], backend_files: tuple[LogFile, ...]) -> None:
    """Mask the secrets in every log the run keeps: console, journal, the backend's."""
    if not secrets:
        return
    texts = (
        *log_dir.glob("console*.log"),
        log_dir / HOST_TEST_LOG,
        *(log_dir / f.name for f in backend_files if f.text),
    )
    for kept in texts:
        mask_file(kept, secrets)
    mask_file(log_dir / JOURNAL_EXPORT, secrets, same_length=True)  # binary fields carry their length


def withhold_secrets(
    run: MachineRun, log_dir: Path, secrets: list[bytes], backend_files: tuple[LogFile, ...]
) -> MachineRun:
    """The one place where secrets are masked: as the machine's words and logs enter the
    run, so that nothing drawn from them later (verdict, subtests, journal, record,
    report) can hold one."""
    if not secrets:
        return run
    mask_logs(log_dir, secrets, backend_files)

    def hide(text: str) -> str:
        return mask_text(text, secrets)

    ending = attrs.evolve(run.ending, detail=hide(run.ending.detail))
    return attrs.evolve(run, ending=ending, report=run.report.masked(hide), detail=hide(run.detail))


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
