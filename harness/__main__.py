"""Command line of the harness: `python3 -m harness run|validate|accel|...`.

meson calls `run` for every test (and `validate` for every declaration at `meson setup`);
both take the declaration as the file meson wrote (`--declaration=FILE`) or as options
after the others, so a test can also be rerun by hand exactly as meson runs it (the
command is in meson-logs/testlog.txt).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from harness.boot.timeouts import accel_line
from harness.declaration import file as declaration_file
from harness.declaration.declaration import TestDeclaration
from harness.declaration.keys import key_table
from harness.errors import HarnessError, LogDirBusy
from harness.image.parts import IMAGE_PARTS, ImageParts, add_image_options, image_parts_of
from harness.project.repository import add_project_commands, check_glue
from harness.settings import SWITCHES, Options, Settings, environment_table
from harness.verdict.results import EXIT_ERROR

if TYPE_CHECKING:
    from harness.boot.machine import Backend
    from harness.verdict.record import TestRecord
    from harness.wrapper import RunContext

log = logging.getLogger("harness")


def add_declaration_option(p: argparse.ArgumentParser) -> None:
    """The declaration comes as a file (meson's way), or as --KEY=VALUE options after the
    others (by hand); harness.declaration.file parses either, not argparse."""
    p.add_argument(
        "--declaration", help="the file of --KEY=VALUE lines meson setup wrote (build/test/NAME.declaration)"
    )
    p.add_argument("--glue-version", type=int, help="the meson glue's version (test/meson.build passes it)")


def declaration_of(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> TestDeclaration:
    """The declaration in args.declaration's file and the options argparse left over."""
    options = declaration_file.read(Path(args.declaration)) if args.declaration else []
    where = args.declaration or "the command line"
    return TestDeclaration.from_options(
        declaration_file.parse(options + args.declaration_options, where), env
    )


def add_switch_options(p: argparse.ArgumentParser) -> None:
    """The options meson passes its -D options as, each overridden by the variable of its
    name for one run (settings.Options; the table is settings.SWITCHES)."""
    for switch in SWITCHES:
        if switch.option:
            flag = f"--{switch.field.replace('_', '-')}"
            p.add_argument(
                flag, default="", help=f"{switch.meaning.replace('`', '')}; {switch.name} overrides"
            )


def settings_of(args: argparse.Namespace) -> Settings:
    """The HARNESS_* switches, read here and nowhere else; a variable wins over `args`' option."""
    return Settings.from_environment(os.environ, Options.given(args))


class Interrupted(Exception):
    pass


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.backends import BackendName, backend_for
    from harness.report.html import current_run, update_run_report
    from harness.report.tap import setup_logging, tap_lines
    from harness.verdict.log_dir import owning_log_dir
    from harness.verdict.results import Status
    from harness.wrapper import RunContext

    check_glue(args.glue_version, Path(args.build_dir) if args.build_dir else None)
    decl = declaration_of(args, os.environ)
    settings = settings_of(args)
    backend, placed = backend_for(decl, settings)
    # A host-driven test is driven by its pytest file, not by a person at the console.
    interactive = (
        backend.name == BackendName.QEMU
        and decl.host is None
        and (
            sys.stdin.isatty() and sys.stdout.isatty()
            if settings.interactive is None
            else settings.interactive
        )
    )
    if settings.shell and not interactive:
        raise HarnessError(
            "HARNESS_SHELL=1 (or TEST_SHELL=1) boots the test's VM to a shell at the console, and "
            + (
                "a host-driven test is driven by its file, not at a console"
                if decl.host
                else "none is attached"
            ),
            f"run it as meson test -C build -i {decl.name}, on the qemu backend, from a terminal",
        )
    tap = args.tap and not interactive  # at a console, people read; meson parses nothing then
    if tap:
        print("TAP version 14", flush=True)
    setup_logging(tap)
    if placed:
        log.info(placed)
    build_dir = Path(args.build_dir) if args.build_dir else None
    tests_dir = (build_dir or Path(".")) / "integration-tests"
    log_dir = Path(args.log_dir) if args.log_dir else tests_dir / decl.name
    # Absolute: a resumed disk names its snapshot as its backing file, from another directory.
    snapshot_dir = (settings.snapshot_dir or log_dir.parent / "snapshots").absolute()
    ctx = RunContext(
        log_dir,
        build_dir,
        current_run(),
        interactive_rerun=backend.name == BackendName.QEMU,
        snapshot_dir=snapshot_dir,
        command=("os-harness", *sys.argv[1:]),
        timeout_bound=args.timeout_bound,
    )
    try:
        with owning_log_dir(log_dir, decl.name):
            record = run_and_record(
                decl, image_parts_of(args), ctx, backend, settings, interactive, args.timeout_factor
            )
        report_verdict(record, tap)
    except LogDirBusy as e:  # the other run's logs and verdict stay as they are
        print(f"error: {e}", file=sys.stderr, flush=True)
        if tap:
            print(f"Bail out! {e.what}", flush=True)
        return EXIT_ERROR
    except Interrupted as e:
        log.info(f"{decl.name}: interrupted by {e}; its machine was stopped. Logs: {ctx.log_dir}")
        return 130
    if build_dir is not None:
        try:
            summary, report = update_run_report(
                build_dir, tests_dir, ctx.run, f"integration-tests on {backend.name}", settings.compare_with
            )
            log.info(f"report: {report}\nsummary: {summary}")
        except OSError as e:  # the verdict stands without a report
            log.warning(f"warning: could not write the run's report: {e}")
    if tap:
        print("\n".join(tap_lines(record)[1:]), flush=True)
        # meson reads the verdict from the TAP points; a non-zero status is only for failures.
        return {Status.PASS: 0, Status.SKIP: 0, Status.FAIL: 1, Status.ERROR: EXIT_ERROR}[record.status]
    return record.exit_code


def run_and_record(
    decl: TestDeclaration,
    image: ImageParts,
    ctx: RunContext,
    backend: Backend,
    settings: Settings,
    interactive: bool,
    timeout_factor: float | None,
) -> TestRecord:
    """Run the test and write its result.json; an infrastructure fault is its verdict."""
    import attrs

    from harness.verdict.results import Outcome, Status
    from harness.wrapper import run_test

    try:
        record = run_test(
            decl, image, ctx, backend, settings, interactive=interactive, timeout_factor=timeout_factor
        )
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        record = ctx.record(decl, backend.name, "", Outcome(Status.ERROR, str(e)))
    except OSError as e:  # the disk of the log directory filled up, most likely
        what = HarnessError(
            f"could not write the logs in {ctx.log_dir}: {e.strerror or e}",
            "free space on that file system and rerun the test",
        )
        print(f"error: {what}", file=sys.stderr, flush=True)
        record = ctx.record(decl, backend.name, "", Outcome(Status.ERROR, str(what)))
    try:
        record.write()
    except OSError as e:  # the verdict still reaches meson, by the exit status and this line
        print(f"error: could not write {ctx.log_dir}/result.json: {e.strerror or e}", file=sys.stderr)
        record = attrs.evolve(record, status=Status.ERROR, reason=f"{record.reason}; result.json unwritten")
    return record


def report_verdict(record: TestRecord, tap: bool) -> None:
    """The verdict, its subtests and on failure where to look. meson's --print-errorlogs
    shows only the stderr of a test whose stdout it parses as TAP, so in CI a failure is
    read there; the rest goes to stdout with the wrapper's other lines."""
    from harness.report.text import describe

    if tap and record.status.is_failure():
        print(describe(record), file=sys.stderr, flush=True)
    else:
        log.info(describe(record))


def meson_priority(decl: TestDeclaration) -> int:
    """meson's priority for the test: the declared one, and among equals the tests that
    must boot start first, so the fast ones fill in around them: host-driven ones first
    (they reboot, cold, as often as they like), then those that boot cold, and those of a
    machine shape (firmware, storage, TPM, disks) other than most tests', whose first test
    boots to make that shape's snapshot."""
    from harness.boot.plan import USUAL_SHAPE, declared_shape, resume_blocker

    boots = resume_blocker(decl, Settings.defaults()) or declared_shape(decl) != USUAL_SHAPE
    return decl.priority * 3 + (2 if decl.host else 1 if boots else 0)


def cmd_validate(args: argparse.Namespace) -> int:
    """Checks the glue and the declaration; prints meson's priority for it."""
    check_glue(args.glue_version)
    decl = declaration_of(args)
    if args.declaration:  # inline credentials are in it: the user's only, whatever meson made it
        Path(args.declaration).chmod(0o600)
    print(meson_priority(decl))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """`keys`, `environment`: docs/reference.md's tables of the declaration keys, of the HARNESS_* switches."""
    print(key_table() if args.command == "keys" else environment_table())
    return 0


def meson_run_options(run_args: list[str]) -> argparse.Namespace:
    """`run`'s options as meson gives them for a test; the rest are the declaration's."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_declaration_option(parser)
    add_switch_options(parser)
    add_image_options(parser)
    for option in ("--timeout-factor", "--timeout-bound", "--tap", "--build-dir"):
        parser.add_argument(option, action="store_true" if option == "--tap" else "store")
    run, leftover = parser.parse_known_args(run_args)
    run.declaration_options = leftover
    return run


def cmd_lava_job(args: argparse.Namespace) -> int:
    """Prints the LAVA job meson test would submit for one test, and writes its board image."""
    from harness.backends.lava.backend import write_job
    from harness.project.repository import meson_test_args

    build_dir = Path(args.build_dir)
    run = meson_run_options(meson_test_args(build_dir, args.name))
    decl = declaration_of(run, os.environ)
    factor = float(run.timeout_factor) if run.timeout_factor else None
    out_dir = build_dir / "integration-tests" / decl.name
    definition, image = write_job(decl, image_parts_of(run), factor, out_dir, settings_of(run))
    print(definition, end="")
    where = "where the lab's dispatcher runs on this machine: elsewhere, put it where it can fetch it"
    print(f"board image: {image} (its credentials; fetched by file://, which works {where})", file=sys.stderr)
    return 0


def cmd_systemd_tests(args: argparse.Namespace) -> int:
    from harness.project.systemd_tests import fetch

    print(fetch(args.release, Path(args.into), args.names))
    return 0


def boot_contract(args: argparse.Namespace) -> int:
    """check-image --boot: the image's parts as given, a test of the project's contract,
    booted cold; its logs are kept where it fails."""
    from harness.project.repository import CONTRACT_COMMAND

    image = [
        f"--image={args.image}",
        *(f"--{k}={v}" for k in IMAGE_PARTS if (v := getattr(args, k.replace("-", "_")))),
    ]
    where = Path(tempfile.mkdtemp(prefix="os-harness-check-"))
    test_dir = where / "TEST-00-CHECK-IMAGE"  # a test's directory name, as meson's would be
    test_dir.mkdir()
    # firmware auto: the kernel where there is one, else UEFI
    test = [
        f"--name={test_dir.name}",
        f"--test-dir={test_dir}",
        "--boot=cold",
        "--timeout=120",
        "--firmware=auto",
    ]
    contract = [
        "--credentials=contract=kept",
        "--cmdline=harness.contract=1",
        f"--command={CONTRACT_COMMAND}",
    ]
    status = main(["run", *image, f"--log-dir={where / 'logs'}", *test, *contract])
    if status == 0:
        shutil.rmtree(where)
    else:
        print(f"the contract test's logs: {where / 'logs'}")
    return status


def cmd_accel(args: argparse.Namespace) -> int:
    print(accel_line(settings_of(args)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Prints the comparison; exit status 1 when the later run has new failures."""
    from harness.report.compare import compare, comparison_lines, load_results

    result = compare(load_results(args.old), load_results(args.new))
    print("\n".join(comparison_lines(result)))
    return 1 if result.new_failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="os-harness", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one test", allow_abbrev=False)
    add_declaration_option(run)
    add_image_options(run)
    run.add_argument("--build-dir", help="meson's build directory, for the hints printed on failure")
    run.add_argument(
        "--log-dir", help="where console log and journal go (default BUILD/integration-tests/NAME)"
    )
    run.add_argument(
        "--timeout-factor",
        type=float,
        help="multiply the timeout (default: 1 with KVM, 5 with TCG, more on a busy host)",
    )
    run.add_argument("--timeout-bound", type=float, help="never multiply it by more (meson's own timeout)")
    add_switch_options(run)
    run.add_argument(
        "--tap",
        action="store_true",
        help="write TAP 14 on stdout, one point per subtest (meson's protocol: 'tap')",
    )
    run.set_defaults(func=cmd_run)
    validate = sub.add_parser("validate", help="check a declaration, as meson setup does", allow_abbrev=False)
    add_declaration_option(validate)
    validate.set_defaults(func=cmd_validate)
    sub.add_parser(
        "accel", help="print the acceleration this host gives, its timeout factor and that factor's bound"
    ).set_defaults(func=cmd_accel)
    systemd_tests = sub.add_parser(
        "systemd-tests",
        help="lay out systemd's own tests from Debian's source package of the image's systemd",
        allow_abbrev=False,
    )
    systemd_tests.add_argument("--release", required=True, help="the image's Debian release (trixie)")
    systemd_tests.add_argument("--into", required=True, help="the directory for the source and the trees")
    systemd_tests.add_argument("names", nargs="+", help="systemd's tests, e.g. TEST-22-TMPFILES")
    systemd_tests.set_defaults(func=cmd_systemd_tests)
    add_project_commands(sub, boot_contract)
    for table, what in (("keys", "declaration keys"), ("environment", "HARNESS_* environment switches")):
        sub.add_parser(table, help=f"print the table of {what} (as in docs/reference.md)").set_defaults(
            func=cmd_table
        )
    lava_job = sub.add_parser(
        "lava-job",
        help="print the LAVA job definition of a test, as the lava backend submits it",
        allow_abbrev=False,
    )
    lava_job.add_argument("name", help="the test, e.g. TEST-01-BASIC")
    lava_job.add_argument(
        "-C", dest="build_dir", default="build", help="meson's build directory (default: build)"
    )
    lava_job.set_defaults(func=cmd_lava_job)
    compare = sub.add_parser("compare", help="what changed from one run to another", allow_abbrev=False)
    compare.add_argument("old", type=Path, help="the earlier run: a build directory, or a JSON summary")
    compare.add_argument("new", type=Path, help="the later run, alike")
    compare.set_defaults(func=cmd_compare)

    args, leftover = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    args.declaration_options = leftover
    if args.declaration_options and not hasattr(args, "declaration"):
        parser.error(f"unrecognized arguments: {' '.join(args.declaration_options)}")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted by SIGINT; the test's machine was stopped.", flush=True)
        return 130
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
