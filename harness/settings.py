"""Every HARNESS_* switch of the person running the tests: one table, read once.

How one run differs from the usual one (slow tests, cold boots, another backend, a shell):
one row of SWITCHES per variable (what it accepts, its default, what it does), docs/reference.md's
table printed from it (`python3 -m harness environment`). `Settings.from_environment`
reads them all once, where a run starts (a variable overrides the command-line option of
its name for one run); everything below takes the `Settings`: none reads os.environ
behind its back, and a bad value is the same error whichever variable holds it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from harness.errors import HarnessError
from harness.switches import (
    DIRECTORY,
    FILE,
    FLAG,
    PROGRAM,
    REGEX,
    TOKEN,
    URL,
    Accepts,
    Switch,
    number,
    one_of,
    positive,
    text_of,
)


class SaveJournal(enum.StrEnum):
    """HARNESS_SAVE_JOURNAL: which runs keep the guest's journal."""

    FAIL = "fail"  # failed tests' (and errors')
    ALWAYS = "1"
    NEVER = "0"


SWITCHES = (
    Switch("HARNESS_INTEGRATION_TESTS", FLAG, "`0`: every integration test SKIPs", "1"),
    Switch("HARNESS_SLOW_TESTS", FLAG, "`1`: run tests declared `slow`", "0"),
    Switch(
        "HARNESS_SKIP",
        Accepts("words", "words, separated by spaces", lambda text: tuple(text.split()), ()),
        'SKIP tests whose name contains any of the words (`HARNESS_SKIP="TEST-04 TEST-05"`)',
    ),
    Switch(
        "HARNESS_MATCH_TESTCASE",
        REGEX,
        "run only the subtests (testcase_* functions) it matches",
        aliases=("TEST_MATCH_TESTCASE",),
    ),
    Switch(
        "HARNESS_SKIP_TESTCASE",
        REGEX,
        "run none of the subtests (testcase_* functions) it matches",
        aliases=("TEST_SKIP_TESTCASE", "TEST_SKIP_TESTCASES"),
    ),
    Switch(
        "HARNESS_MATCH_SUBTEST",
        REGEX,
        "the same for systemd's subtest files (`TEST-NN-NAME.*.sh`, run by `run_subtests`): "
        "run only those it matches",
        aliases=("TEST_MATCH_SUBTEST",),
    ),
    Switch(
        "HARNESS_SKIP_SUBTEST",
        REGEX,
        "the same for systemd's subtest files: run none of those it matches",
        aliases=("TEST_SKIP_SUBTEST", "TEST_SKIP_SUBTESTS"),
    ),
    Switch(
        "HARNESS_SHELL",
        FLAG,
        "`1`, with `meson test -i`: boot the test's VM to its default target and a root shell on the "
        "console instead of starting the test; `systemctl start TEST-NN-NAME.service` runs the test "
        "there, its output on the console, and its status is the verdict (a failure leaves the VM up: "
        "leave the shell to end it); a VM powered off without starting it SKIPs. Without a console it "
        "is an error",
        "0",
        aliases=("TEST_SHELL",),
    ),
    Switch(
        "HARNESS_SANITIZERS",
        FLAG,
        "`1`: the image's code is built with sanitizers (systemd's `SANITIZERS`): the guest sends its "
        "whole journal after a passed test too (seconds under TCG), so that a report of any process, "
        "not only the test's own, fails it (`sanitizer-exclude-regex` excludes processes by name)",
        "0",
    ),
    Switch(
        "HARNESS_SAVE_JOURNAL",
        one_of(
            {"fail": SaveJournal.FAIL, "1": SaveJournal.ALWAYS, "0": SaveJournal.NEVER},
            {
                "always": SaveJournal.ALWAYS,
                "yes": SaveJournal.ALWAYS,
                "never": SaveJournal.NEVER,
                "no": SaveJournal.NEVER,
            },
        ),
        "`fail`: keep the guest's journal of failed tests; `1`: always; `0`: never",
        "fail",
    ),
    Switch(
        "HARNESS_ACCEL",
        one_of({"kvm": "kvm", "tcg": "tcg"}),
        "override the acceleration check",
        shown_default="KVM where it works, else TCG",
    ),
    Switch(
        "HARNESS_INTERACTIVE",
        FLAG,
        "force console mode on (`1`) or off (`0`)",
        shown_default="on when stdin and stdout are a terminal, as with `meson test -i`",
    ),
    Switch(
        "HARNESS_BACKEND",
        one_of({"qemu": "qemu", "autokit": "autokit", "lava": "lava", "nspawn": "nspawn"}),
        "what runs the tests: `qemu`, `autokit`, `lava` or `nspawn`",
        "qemu",
        "`-Dtest-backend` (`qemu`)",
        option=True,
    ),
    Switch(
        "HARNESS_PREFER_CONTAINERS",
        FLAG,
        "`1`, with qemu: a test that needs no VM runs in a container (nspawn; docs/backends.md)",
        "0",
        "`-Dprefer-containers` (`false`)",
        aliases=("TEST_PREFER_NSPAWN",),
        option=True,
    ),
    Switch(
        "HARNESS_AUTOKIT_WORKER",
        URL,
        "the autokit worker to use",
        shown_default="`-Dautokit-worker`",
        option=True,
    ),
    Switch(
        "HARNESS_AUTOKIT_TOKEN_FILE",
        text_of("a file"),
        "the file holding the worker's bearer token (see Tokens)",
    ),
    Switch(
        "HARNESS_AUTOKIT_TOKEN",
        TOKEN,
        "the worker's bearer token itself (meson's logs hold the environment: the file is safer)",
    ),
    Switch(
        "HARNESS_LAVA_URL",
        URL,
        "the LAVA server",
        shown_default="`-Dlava-url`",
        option=True,
    ),
    Switch(
        "HARNESS_LAVA_TOKEN_FILE",
        text_of("a file"),
        "the file holding the LAVA server's API token (see Tokens)",
    ),
    Switch("HARNESS_LAVA_TOKEN", TOKEN, "the LAVA server's API token itself (the file is safer)"),
    Switch(
        "HARNESS_LAVA_DEVICE_TYPE",
        text_of("a device type"),
        "the device type LAVA jobs ask for",
        "qemu",
        "`-Dlava-device-type` (`qemu`)",
        option=True,
    ),
    Switch(
        "HARNESS_LAVA_IMAGE_DIR",
        text_of("a directory"),
        "for a lab whose dispatchers run elsewhere: the web server's directory the test images go into",
        shown_default="`-Dlava-image-dir`",
        option=True,
    ),
    Switch(
        "HARNESS_LAVA_IMAGE_URL",
        URL,
        "for such a lab: that directory's URL",
        shown_default="`-Dlava-image-url`",
        option=True,
    ),
    Switch(
        "HARNESS_LAVA_QUEUE_TIMEOUT",
        Accepts("a number of seconds", "a whole number of seconds", number(0)),
        "how long a LAVA job may wait for a device before the test is an ERROR",
        "600",
    ),
    Switch("HARNESS_COLD_BOOT", FLAG, "`1`: every test boots cold (no fast path)", "0"),
    Switch(
        "HARNESS_VCPUS",
        Accepts("a number of vCPUs", "a whole number above 0", number(1)),
        "vCPUs of a cold-booted VM",
        shown_default="2 while the host has two cores for every QEMU running, else 1",
    ),
    Switch(
        "HARNESS_TIMEOUT_FACTOR",
        Accepts("a factor", "a number above 0 (`2.5`)", positive),
        "multiply every declared timeout by it, as measured or not",
        shown_default="5 under TCG, 1 with KVM or in a container; up to 3 times more on a busy host",
    ),
    Switch(
        "HARNESS_SNAPSHOT_DIR",
        DIRECTORY,
        "where booted snapshots and containers' root trees are kept",
        shown_default="`--snapshot-dir`, else `build/integration-tests/snapshots`",
        option=True,
    ),
    Switch(
        "HARNESS_SECURE_BOOT_VARS",
        FILE,
        "the UEFI variable store `firmware: 'uefi-secure-boot'` starts from, with the certificate "
        "that signed the image enrolled",
        shown_default="Debian's, with its test key",
    ),
    Switch(
        "HARNESS_COMPARE_WITH",
        DIRECTORY,
        "an earlier run (its build directory or JSON summary): the HTML report says what changed "
        "since (`os-harness compare OLD NEW` prints it)",
    ),
    Switch("HARNESS_QEMU", PROGRAM, "the QEMU binary to run", shown_default="`qemu-system-ARCH` on `PATH`"),
    Switch(
        "HARNESS_NSPAWN",
        PROGRAM,
        "the systemd-nspawn the nspawn backend runs",
        shown_default="mkosi's tools tree beside the image, else `systemd-nspawn` on `PATH`",
    ),
    Switch(
        "HARNESS_CONSOLE_LIMIT_MB",
        Accepts("a number of megabytes", "a whole number of megabytes above 0", number(1)),
        "how much console output a test may write before its machine is stopped and the test FAILs",
        "64",
    ),
    Switch(
        "HARNESS_RETRY_QEMU_CRASH",
        Accepts("a number of retries", "a whole number (`0`: never)", number(0)),
        "how often a machine that crashes before the guest says anything (QEMU killed by a signal or "
        "exiting with an error) is booted again; the verdict line, result.json (`retried`) and the "
        "report say so, and the crashed boot's console is kept as `console.crash-1.log`",
        "1",
    ),
)


@attrs.frozen
class Options:
    """What the command line says (meson passes its -D options so) where a variable may
    say otherwise for one run; "" where it says nothing."""

    backend: str = ""
    prefer_containers: str = ""
    autokit_worker: str = ""
    lava_url: str = ""
    lava_device_type: str = ""
    lava_image_dir: str = ""
    lava_image_url: str = ""
    snapshot_dir: str = ""

    @classmethod
    def given(cls, parsed: object) -> Options:
        """The options an argparse namespace holds under these names (None: not given)."""
        return cls(**{name: getattr(parsed, name, None) or "" for name in attrs.fields_dict(cls)})


@attrs.frozen
class Settings:
    """The switches of one run, validated: one field for each row of SWITCHES."""

    integration_tests: bool
    slow_tests: bool
    skip: tuple[str, ...]
    match_testcase: str
    skip_testcase: str
    match_subtest: str
    skip_subtest: str
    shell: bool
    sanitizers: bool
    save_journal: SaveJournal
    accel: str | None  # kvm or tcg; None: as the host allows
    interactive: bool | None  # None: by the terminal
    backend: str
    prefer_containers: bool
    autokit_worker: str
    autokit_token_file: str
    autokit_token: str
    lava_url: str
    lava_token_file: str
    lava_token: str
    lava_device_type: str
    lava_image_dir: str
    lava_image_url: str
    lava_queue_timeout: int
    cold_boot: bool
    vcpus: int | None  # None: by the host's cores
    timeout_factor: float | None  # None: as measured
    snapshot_dir: Path | None  # None: beside the log directory
    secure_boot_vars: Path | None  # None: Debian's
    compare_with: Path | None  # an earlier run, for the report
    qemu: str  # "": qemu-system-ARCH
    nspawn: str  # "": the tools tree's, else systemd-nspawn on PATH
    console_limit_mb: int
    retry_qemu_crash: int

    @classmethod
    def from_environment(cls, env: Mapping[str, str], options: Options = Options()) -> Settings:
        """Every switch from `env` (os.environ at the command line, a dict in tests), else
        from `options`, else its default; a bad value is a HarnessError naming it."""
        values: dict[str, Any] = {}
        for switch in SWITCHES:
            source, text = switch.read(env)
            if not text and switch.option and getattr(options, switch.field):
                source, text = f"--{switch.field.replace('_', '-')}", getattr(options, switch.field)
            values[switch.field] = parsed(switch, source, text or switch.default)
        return cls(**values)

    @classmethod
    def defaults(cls) -> Settings:
        """What a run gets with no switch set."""
        return cls.from_environment({})


def parsed(switch: Switch, source: str, text: str) -> Any:
    if not text:
        return switch.accepts.empty
    try:
        return switch.accepts.parse(text)
    except ValueError:
        accepted = switch.accepts.hint.replace("`", "")
        default = f" (default {switch.default})" if switch.default else ""
        raise HarnessError(
            f"{source}='{text}' is not {switch.accepts.what}",
            f"use {accepted}" if source.startswith("--") else f"set it to {accepted}, or unset it{default}",
        ) from None


def environment_table() -> str:
    """docs/reference.md's table of the environment switches."""
    rows = ["| variable | accepts | default | effect |", "|---|---|---|---|"]
    for s in SWITCHES:
        name = f"`{s.name}`" + (f" (systemd's {', '.join(f'`{a}`' for a in s.aliases)})" if s.aliases else "")
        default = s.shown_default or (f"`{s.default}`" if s.default else "")
        rows.append(f"| {name} | {s.accepts.hint} | {default} | {s.meaning} |")
    return "\n".join(rows)
