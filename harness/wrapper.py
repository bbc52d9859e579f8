"""The whole run of one test: declare -> boot -> collect -> classify -> report."""

from __future__ import annotations

import shlex
from pathlib import Path

from harness.accel import detect
from harness.backend import Backend, BootPlan
from harness.declaration import TestDeclaration, skip_reason
from harness.image import Image
from harness.journal import keep_journal
from harness.results import Outcome, classify
from harness.unit import guest_credentials

LOG_FILES = ("console.log", "journal.export", "journal.journal", "qemu-command.txt", "diagnostics.json", "frames.tar.gz")


def harness_cmdline(decl: TestDeclaration, interactive: bool) -> list[str]:
    """What every test's kernel command line gets, ahead of the test's own additions."""
    cmdline = [
        "rw",  # a UKI's own command line may leave the root read-only
        f"systemd.unit={decl.unit_name}",
        "systemd.firstboot=no",  # first boot would wait for a keypress
        "systemd.crash_action=poweroff",  # a crashing PID 1 ends the VM, not the timeout
    ]
    if not interactive:
        cmdline.append("systemd.crash_shell=0")
    if decl.storage == "volatile":
        cmdline.append("systemd.volatile=overlay")  # writes stay in memory, gone at reboot
    return cmdline + list(decl.cmdline)


def plan_boot(decl: TestDeclaration, image: Image, backend: Backend, interactive: bool, timeout_factor: int | None,
              env: dict[str, str]) -> BootPlan:
    accel = detect(image.architecture, env)
    factor = timeout_factor if timeout_factor is not None else accel.timeout_factor
    return BootPlan(
        decl=decl,
        image=image,
        firmware=backend.firmware(decl.firmware, image),
        cmdline=tuple(harness_cmdline(decl, interactive)),
        credentials=tuple(guest_credentials(decl, interactive, backend.report_channel)) + decl.credentials,
        accel=accel,
        timeout=None if interactive else decl.timeout * factor,
        interactive=interactive,
    )


def run_test(decl: TestDeclaration, image_path: Path, log_dir: Path, backend: Backend,
             env: dict[str, str], interactive: bool = False, timeout_factor: int | None = None) -> tuple[Outcome, Path | None]:
    """Run one test; returns the verdict and the journal kept for it, if any."""
    reason = skip_reason(decl, env)
    if reason:
        return Outcome("skip", reason), None
    missing = backend.unmet_requirements(decl)
    if missing:
        return Outcome("skip", f"the {backend.name} machine lacks required features: {', '.join(missing)}"), None
    image = Image.open(image_path)
    plan = plan_boot(decl, image, backend, interactive, timeout_factor, env)
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        (log_dir / name).unlink(missing_ok=True)
    print(f"{decl.name}: booting {image.path.name} ({plan.firmware}, {plan.accel.kind}: {plan.accel.reason}; "
          f"timeout {plan.timeout or 'none'}{' s' if plan.timeout else ''}) on {backend.name}", flush=True)
    if interactive:
        print("The console is attached: the test's output follows. Ctrl-a x quits QEMU.", flush=True)

    with backend.boot(plan, log_dir) as machine:
        ending = machine.wait(plan.timeout)
        if ending.kind != "exited":
            machine.power_off(orderly=ending.kind == "timeout")
        report = machine.collect()
        detail = machine.failure_detail()

    outcome = classify(decl.name, decl.exit_code, plan.timeout, ending, report, detail)
    journal = keep_journal(log_dir / "journal.export", env.get("HARNESS_SAVE_JOURNAL", "fail"), outcome.status)
    return outcome, journal


def describe(decl: TestDeclaration, outcome: Outcome, log_dir: Path, journal: Path | None, build_dir: Path | None,
             interactive_rerun: bool = True) -> str:
    """The lines a person reads after a run: verdict, and on failure where to look and how to rerun."""
    lines = [f"{decl.name}: {outcome.status.upper()}: {outcome.reason}"]
    if outcome.status in ("fail", "error"):
        console = log_dir / "console.log"
        if console.exists():
            lines.append(f"  console log: {console}")
        if journal is not None:
            if journal.suffix == ".journal":
                lines.append(f"  journal:     journalctl --file {shlex.quote(str(journal))} -u {decl.unit_name}")
            else:
                lines.append(f"  journal:     {journal} (journal export format)")
        build = shlex.quote(str(build_dir)) if build_dir else "build"
        how = "--interactive " if interactive_rerun else ""
        lines.append(f"  rerun:       meson test -C {build} {how}{decl.name}")
    return "\n".join(lines)
