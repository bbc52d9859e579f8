"""Command line of the harness: `python3 -m harness run|validate|accel`.

meson calls `run` for every test (and `validate` for every declaration at `meson setup`);
both take the declaration as options, so a test can also be rerun by hand exactly as
meson runs it (the command is in meson-logs/testlog.txt).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from harness.accel import detect
from harness.declaration import TestDeclaration
from harness.errors import HarnessError
from harness.results import EXIT_ERROR


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not true or false")


def add_declaration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True)
    p.add_argument("--test-dir", required=True, help="the test's source directory")
    p.add_argument("--timeout", type=int, default=300, help="seconds, with KVM")
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--slow", type=_bool, default=False)
    p.add_argument("--enabled", type=_bool, default=True)
    p.add_argument("--firmware", default="linux")
    p.add_argument("--storage", default="volatile")
    p.add_argument("--boot", default="auto", help="auto (resume the booted snapshot where possible) or cold")
    p.add_argument("--exit-code", type=int, default=123)
    p.add_argument("--cmdline", action="append", default=[])
    p.add_argument("--credential", action="append", default=[])
    p.add_argument("--qemu-arg", action="append", default=[])
    p.add_argument("--requires", action="append", default=[])
    p.add_argument("--unit-command", default="")
    p.add_argument("--unit-wants", action="append", default=[])
    p.add_argument("--unit-after", action="append", default=[])
    p.add_argument("--unit-env", action="append", default=[])
    p.add_argument("--unit-extra", action="append", default=[], help="a line for the [Unit] section")
    p.add_argument("--service-extra", action="append", default=[], help="a line for the [Service] section")


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def choose_backend(o, env):
    """The backend from the options meson passes, overridden by HARNESS_* for one run."""
    name = env.get("HARNESS_BACKEND") or o.backend
    if name == "qemu":
        from harness.qemu import QemuBackend

        return QemuBackend()
    if name == "autokit":
        from harness.autokit_backend import AutokitBackend

        url = env.get("HARNESS_AUTOKIT_WORKER") or o.autokit_worker
        if not url:
            raise HarnessError("the autokit backend needs a worker URL",
                               "meson setup -Dtest-backend=autokit -Dautokit-worker=http://HOST:PORT, or set HARNESS_AUTOKIT_WORKER")
        return AutokitBackend(url, env.get("HARNESS_AUTOKIT_TOKEN") or None)
    raise HarnessError(f"unknown backend '{name}'", "use qemu or autokit (-Dtest-backend, HARNESS_BACKEND)")


def cmd_run(o) -> int:
    from harness.report import current_run, update_run_report
    from harness.results import Outcome
    from harness.tap import tap_comment, tap_lines
    from harness.wrapper import RunContext, describe, run_test

    decl = TestDeclaration.from_options(o)
    env = dict(os.environ)
    backend = choose_backend(o, env)
    interactive = backend.name == "qemu" and (
        env.get("HARNESS_INTERACTIVE") == "1"
        or (env.get("HARNESS_INTERACTIVE") != "0" and sys.stdin.isatty() and sys.stdout.isatty()))
    tap = o.tap and not interactive  # at a console, people read; meson parses nothing then
    if tap:
        print("TAP version 14", flush=True)
        sys.stdout = _CommentedOutput(sys.stdout, tap_comment)
    build_dir = Path(o.build_dir) if o.build_dir else None
    tests_dir = (build_dir or Path(".")) / "integration-tests"
    log_dir = Path(o.log_dir) if o.log_dir else tests_dir / decl.name
    snapshot_dir = Path(env.get("HARNESS_SNAPSHOT_DIR") or o.snapshot_dir or log_dir.parent / "snapshots")
    ctx = RunContext(log_dir, build_dir, current_run(), interactive_rerun=backend.name == "qemu",
                     snapshot_dir=snapshot_dir)
    try:
        record = run_test(decl, Path(o.image), ctx, backend, env, interactive=interactive,
                          timeout_factor=o.timeout_factor)
    except Interrupted as e:
        print(f"{decl.name}: interrupted by {e}; the VM was stopped. Logs: {ctx.log_dir}", flush=True)
        return 130
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        record = ctx.record(decl, backend.name, "", Outcome("error", str(e)))
    record.write()
    print(describe(record), flush=True)
    if build_dir is not None:
        try:
            summary, report = update_run_report(build_dir, tests_dir, ctx.run, f"integration-tests on {backend.name}")
            print(f"report: {report}\nsummary: {summary}", flush=True)
        except OSError as e:  # the verdict stands without a report
            print(f"warning: could not write the run's report: {e}", flush=True)
    if tap:
        sys.stdout = sys.stdout.stream
        print("\n".join(tap_lines(record)[1:]), flush=True)
        # meson reads the verdict from the TAP points; a non-zero status is only for failures.
        return {"pass": 0, "skip": 0, "fail": 1, "error": EXIT_ERROR}[record.status]
    return record.exit_code


class _CommentedOutput:
    """stdout while TAP is written: whatever the run prints becomes TAP comments."""

    def __init__(self, stream, comment) -> None:
        self.stream = stream
        self._comment = comment
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.stream.write(self._comment(line) + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def cmd_validate(o) -> int:
    TestDeclaration.from_options(o)
    return 0


def cmd_accel(o) -> int:
    accel = detect()
    print(accel.kind, accel.timeout_factor, accel.reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m harness")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one test")
    add_declaration_options(run)
    run.add_argument("--image", required=True, help="the disk image mkosi built (NAME.raw)")
    run.add_argument("--build-dir", help="meson's build directory, for the hints printed on failure")
    run.add_argument("--log-dir", help="where console log and journal go (default BUILD/integration-tests/NAME)")
    run.add_argument("--timeout-factor", type=int, help="multiply the timeout (default: 1 with KVM, more with TCG)")
    run.add_argument("--backend", default="qemu", help="qemu (default) or autokit; HARNESS_BACKEND overrides")
    run.add_argument("--autokit-worker", default="", help="the worker's URL; HARNESS_AUTOKIT_WORKER overrides")
    run.add_argument("--snapshot-dir", help="where booted snapshots are kept (default: beside the log directory; "
                     "HARNESS_SNAPSHOT_DIR overrides)")
    run.add_argument("--tap", action="store_true", help="write TAP 14 on stdout, one point per subtest (meson's protocol: 'tap')")
    run.set_defaults(func=cmd_run)
    validate = sub.add_parser("validate", help="check a declaration, as meson setup does")
    add_declaration_options(validate)
    validate.set_defaults(func=cmd_validate)
    sub.add_parser("accel", help="print the acceleration this host gives, and the timeout factor").set_defaults(func=cmd_accel)

    o = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    try:
        return o.func(o)
    except KeyboardInterrupt:
        print("interrupted by SIGINT; the VM was stopped.", flush=True)
        return 130
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
