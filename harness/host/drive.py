"""A host-driven test's run from its boot: the machine handed to the test's pytest file
(pytest_run.py), its steps the subtests.

It is one of the two kinds of run the wrapper ends the same way (wrapper.conclude): the
steps' verdict goes out through the gates and comes back while the machine still runs,
for the guest's journal is fetched through the machine, where that verdict (or
HARNESS_SAVE_JOURNAL) wants it. A test whose steps passed fetches the core dumps'
messages alone, which is what the gates look for. pytest is imported with this module,
which the wrapper imports only for a host-driven test: an in-guest test does without it.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Generator
from pathlib import Path

from harness.boot.machine import Backend
from harness.boot.plan import BootPlan
from harness.guest.reporting import CORE_DUMPS_EXPORT
from harness.host.controls import MachineError
from harness.host.driven_machine import DrivenMachine
from harness.host.pytest_run import host_outcome, run_host_test
from harness.image.parts import Image
from harness.settings import SaveJournal
from harness.verdict.log_dir import JOURNAL_EXPORT
from harness.verdict.record import Found
from harness.verdict.results import Outcome, Status
from harness.verdict.secrets import Secrets


def drive(
    file: Path,
    image: Image,
    plan: BootPlan,
    backend: Backend,
    log_dir: Path,
    secrets: Secrets,
    save_journal: SaveJournal,
) -> Generator[Outcome, Outcome, Found]:
    """Boot as planned and hand the machine to the pytest file `file`; yield the steps'
    verdict, and with the verdict the gates send back, keep the journal and power off."""
    with backend.boot(plan, log_dir) as machine:
        driven = DrivenMachine(machine.controls(), plan.timeout_factor, backend.name)
        run = run_host_test(file, driven, log_dir, plan.timeout).masked(secrets.text)
        outcome = host_outcome(file, run)
        if outcome.status in (Status.PASS, Status.SKIP) and driven.boot and driven.answered:
            keep_core_dumps(driven, log_dir / JOURNAL_EXPORT)
        # A container's core dumps reach the host, not its journal (backends/nspawn/crashes.py).
        add_seen = getattr(machine, "add_core_dumps_seen", None)
        if add_seen is not None:
            add_seen(log_dir / JOURNAL_EXPORT)
        outcome = yield outcome
        wanted = outcome.status.is_failure() or save_journal is SaveJournal.ALWAYS
        if wanted and driven.boot and driven.answered and not run.error:
            keep_journal_export(driven, log_dir)
        machine.power_off(orderly=False)
        boot_path, job_url = machine.boot_path, machine.job_url
    return Found(subtests=run.steps, boot=str(boot_path), os=image.os_name, job_url=job_url)


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
