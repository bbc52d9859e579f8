"""A host-driven test: the test's pytest file, run by the wrapper against its machine.

The machine is booted from the declaration as for any test; once its first boot answers,
pytest runs the file in this process with the `machine` fixture (a DrivenMachine, one
for the whole file, so its functions read as the steps of one scenario). Each test
function is one subtest, in the order it ran: pass, fail (with pytest's assertion
message) or skip. The file's verdict: FAIL when a step failed, SKIP when all skipped,
PASS otherwise; ERROR when the machine never came up or pytest could not load the file.
The test's timeout bounds the whole file: the step running then fails, the steps after
it do not run and say so. pytest's own output goes to host-test.log beside console.log.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import pytest

from harness.host.controls import MachineError
from harness.host.driven_machine import DrivenMachine
from harness.verdict.log_dir import HOST_TEST_LOG
from harness.verdict.results import Outcome, Status
from harness.verdict.subtests import Subtest


class TimeoutPassed(MachineError):
    """The test's timeout passed while this step ran."""


@attrs.frozen
class HostRun:
    steps: tuple[Subtest, ...]
    error: str = ""  # why the file did not run as a test: the machine or the file, not a step

    def masked(self, hide: Callable[[str], str]) -> HostRun:
        """The run with every step's name and detail, and its error, passed through `hide`."""
        steps = tuple(attrs.evolve(s, name=hide(s.name), detail=hide(s.detail)) for s in self.steps)
        return HostRun(steps, hide(self.error))


class _Steps:
    """The pytest plugin: hands out the machine, and keeps each function's outcome."""

    def __init__(self, machine: DrivenMachine) -> None:
        self.driven = machine
        self.steps: dict[str, Subtest] = {}
        self.collect_errors: list[str] = []
        self.expired = ""  # the timeout's message, once it passed
        self.interrupted = False  # Ctrl-C, SIGTERM or SIGHUP arrived

    @pytest.fixture(scope="session")
    def machine(self) -> DrivenMachine:
        """The test's machine, the same for every function of the file."""
        return self.driven

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.collect_errors.append(str(report.longreprtext).strip().splitlines()[-1])

    def pytest_runtest_setup(self, item: Any) -> None:
        if self.expired:
            raise TimeoutPassed(f"did not run: {self.expired}")

    def pytest_runtest_logreport(self, report: Any) -> None:
        name = report.nodeid.rpartition("::")[2]
        step = self.steps.get(name)
        if report.failed:
            self.steps[name] = Subtest(name, Status.FAIL, _ms(report), _failure(report))
        elif report.skipped and step is None:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.steps[name] = Subtest(name, Status.SKIP, None, reason.removeprefix("Skipped: "))
        elif report.when == "call" and report.passed:
            self.steps[name] = Subtest(name, Status.PASS, _ms(report))


def _ms(report: Any) -> int:
    return int(report.duration * 1000)


def _failure(report: Any) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    return " ".join(message.split())[:2000]


def run_host_test(file: Path, machine: DrivenMachine, log_dir: Path, timeout: float | None) -> HostRun:
    """Wait for the machine's first boot, then run `file` with pytest against it."""
    plugin = _Steps(machine)
    with (log_dir / HOST_TEST_LOG).open("w") as log, _bounded(timeout, plugin), _interruptible(plugin):
        try:
            machine.wait_booted()
        except MachineError as e:
            return HostRun((), f"the machine did not come up for its host test: {e}")
        try:
            _pytest(file, plugin, log)
        except Exception:
            # An interrupt in the middle of pytest's own start (importing its plugins)
            # can end in an internal error of pytest's instead of its clean stop.
            if not plugin.interrupted:
                raise
    if plugin.interrupted:  # the wrapper stops the machine and says so
        raise KeyboardInterrupt
    if plugin.collect_errors:
        return HostRun((), f"pytest could not load {file.name}: {plugin.collect_errors[0]}")
    if not plugin.steps:
        return HostRun((), f"{file.name} has no test functions (pytest found none to run)")
    return HostRun(tuple(plugin.steps.values()))


def _pytest(file: Path, plugin: object, log: Any, *extra: str) -> int | pytest.ExitCode:
    """pytest over `file` in this process, with `plugin`, its output into `log`; its exit code."""
    args = [
        *extra,
        str(file),
        "-p",
        "no:cacheprovider",  # nothing written into the test's source directory
        "--rootdir",  # the module is then TEST-NN-NAME.test_x: no other module's name
        str(file.parent.parent),
        "--confcutdir",
        str(file.parent),
        "-o",
        "console_output_style=classic",
        "-c",
        "/dev/null",  # the project's own pytest settings are not the host test's
        "--import-mode=importlib",  # the file's module name is no one else's business
        "-v",
    ]
    # Neither pytest's rewritten modules nor Python's .pyc go into the source directory.
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return pytest.main(args, plugins=[plugin])
    finally:
        sys.dont_write_bytecode = bytecode
        for name, module in list(sys.modules.items()):  # the test's modules go with its run
            if file.parent in Path(getattr(module, "__file__", None) or "/").parents:
                del sys.modules[name]


@contextlib.contextmanager
def _bounded(seconds: float | None, plugin: _Steps) -> Iterator[None]:
    """The test's timeout over the whole file: SIGALRM fails the running step."""
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        plugin.expired = f"the test's timeout ({seconds:.0f} s) passed"
        plugin.driven.answered = False  # whatever it was doing is cut short
        raise TimeoutPassed(f"{plugin.expired} during this step")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _interruptible(plugin: _Steps) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP stop pytest, whatever the step catches, and are
    remembered: the run is interrupted whatever pytest made of it."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        plugin.interrupted = True
        raise KeyboardInterrupt

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def host_outcome(file: Path, run: HostRun) -> Outcome:
    if run.error:
        return Outcome(Status.ERROR, run.error)
    failed = [s for s in run.steps if s.status == Status.FAIL]
    if failed:
        first = failed[0]
        return Outcome(
            Status.FAIL,
            f"{len(failed)} of {len(run.steps)} steps of {file.name} failed, first {first.name}: {first.detail}",
            cause="exit-status",  # the steps say why
        )
    if all(s.status == Status.SKIP for s in run.steps):
        return Outcome(Status.SKIP, f"every step of {file.name} skipped: {run.steps[0].detail}")
    passed = sum(s.status == Status.PASS for s in run.steps)
    return Outcome(Status.PASS, f"{passed} of {len(run.steps)} steps of {file.name} passed")
