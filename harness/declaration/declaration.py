"""What a test declares in its meson.build, as a validated, immutable value.

meson passes every key of the merged `integration_test_template + {...}` dict to the
wrapper as command-line options; `TestDeclaration.from_options` checks them all and
raises a DeclarationError naming the file and key at fault. meson runs the same check at
`meson setup`, so a broken declaration never gets as far as a VM.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from harness.declaration.credential import ENV_NAME, Credential
from harness.declaration.disks import disk_sizes
from harness.declaration.extra_tree import TREES_CREDENTIAL, declared_trees
from harness.declaration.keys import KEYS, BootMode, Firmware, Storage
from harness.errors import DeclarationError
from harness.settings import Settings

SKIP_EXIT = 77
RESERVED_CREDENTIAL = "harness.testcases"
DEFAULT_COMMAND = "/usr/lib/harness/tests/{name}/test.sh"

TEST_NAME = re.compile(r"TEST-[0-9]{2,}-[A-Z0-9][A-Z0-9_-]*")
UNIT_NAME = re.compile(
    r"[A-Za-z0-9:_.@\\-]+\.(service|socket|target|mount|path|timer|device|swap|slice|scope|automount)"
)


@attrs.frozen
class Configuration:
    """The test unit the guest boots into (the declaration's `configuration`): what runs,
    what it is ordered after, and extra unit lines."""

    command: str
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    unit: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    memory_accounting: bool = False


@attrs.frozen
class TestDeclaration:
    __test__ = False  # not a pytest class

    name: str
    source: str  # the meson.build that declared it, for error messages
    test_dir: Path
    timeout: int
    priority: int = 0
    slow: bool = False
    enabled: bool = True
    firmware: Firmware = Firmware.LINUX
    cmdline: tuple[str, ...] = ()
    credentials: tuple[Credential, ...] = ()
    qemu_args: tuple[str, ...] = ()
    exit_code: int = 123
    storage: Storage = Storage.VOLATILE
    boot: BootMode = BootMode.AUTO
    requires: tuple[str, ...] = ()
    tpm: bool = False
    rtc: bool = False
    disks: tuple[int, ...] = ()  # the extra disks' sizes, in bytes
    vm: bool = False  # the test needs a VM: never placed in a container
    extra_trees: Credential | None = None  # the declared trees, packed (extra_tree.py)
    coredump_exclude_regex: str = ""
    sanitizer_exclude_regex: str = ""
    host: Path | None = None  # the host-side pytest file, for a host-driven test
    configuration: Configuration = Configuration(command="")

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    @classmethod
    def from_options(
        cls, parsed: argparse.Namespace, env: Mapping[str, str] | None = None
    ) -> TestDeclaration:
        """Build from the wrapper's parsed options (harness.declaration.file.parse); `env`
        is where env: credentials are read from (None: only check them)."""
        test_dir = Path(parsed.test_dir)
        source = str(test_dir / "meson.build")

        def bad(key: str, problem: str, fix: str = "") -> DeclarationError:
            return DeclarationError(source, key, problem, fix)

        if not TEST_NAME.fullmatch(parsed.name):
            raise bad(
                "name",
                f"'{parsed.name}' does not follow TEST-NN-NAME",
                "name the directory TEST-NN-NAME (two or more digits, upper-case name)",
            )
        if parsed.timeout <= 0:
            raise bad("timeout", f"{parsed.timeout} is not a positive number of seconds")
        for key in KEYS:
            value = getattr(parsed, key.attribute, None)
            if key.choices and value not in set(key.choices):
                raise bad(key.name, f"unknown {key.name} '{value}'", f"use one of: {', '.join(key.choices)}")
        if not 1 <= parsed.exit_code <= 255 or parsed.exit_code == SKIP_EXIT:
            raise bad(
                "exit-code",
                f"{parsed.exit_code} cannot mean success",
                "use 1..255 except 77 (skip); 0 is what a VM that just powers off reports",
            )
        credentials = tuple(Credential.parse(c, test_dir, source, env) for c in parsed.credentials)
        names = [c.name for c in credentials]
        if len(set(names)) != len(names):
            raise bad("credentials", "a credential name is given twice")
        for reserved in (RESERVED_CREDENTIAL, TREES_CREDENTIAL):
            if reserved in names:
                raise bad(
                    "credentials",
                    f"'{reserved}' is the harness's own credential",
                    "give the credential another name",
                )
        # A list of units, or systemd's spelling: one string of them, space-separated.
        wants, after = (
            tuple(u for entry in units for u in entry.split()) for units in (parsed.wants, parsed.after)
        )
        for unit in (*wants, *after):
            if not UNIT_NAME.fullmatch(unit):
                raise bad("configuration", f"'{unit}' in wants/after is not a unit name")
        unit_env = tuple(_split_env(e, bad) for e in parsed.env)
        host = _host_file(parsed.host, test_dir, bad) if parsed.host else None
        trees = declared_trees(parsed.extra_trees, test_dir, host is not None, bad)
        return cls(
            name=parsed.name,
            source=source,
            test_dir=test_dir,
            timeout=parsed.timeout,
            priority=parsed.priority,
            slow=parsed.slow,
            enabled=parsed.enabled,
            firmware=Firmware(parsed.firmware),
            cmdline=tuple(parsed.cmdline),
            credentials=credentials,
            qemu_args=tuple(parsed.qemu_args),
            exit_code=parsed.exit_code,
            storage=Storage(parsed.storage),
            boot=BootMode(parsed.boot),
            requires=_requires(parsed),
            tpm=parsed.tpm,
            rtc=parsed.rtc,
            disks=disk_sizes(parsed.disks, bad),
            vm=parsed.vm,
            extra_trees=trees,
            coredump_exclude_regex=_regex("coredump-exclude-regex", parsed.coredump_exclude_regex, bad),
            sanitizer_exclude_regex=_regex("sanitizer-exclude-regex", parsed.sanitizer_exclude_regex, bad),
            host=host,
            configuration=Configuration(
                command=parsed.command or DEFAULT_COMMAND.format(name=parsed.name),
                wants=wants,
                after=after,
                env=unit_env,
                unit=tuple(parsed.unit),
                service=tuple(parsed.service),
                memory_accounting=parsed.memory_accounting,
            ),
        )


def _requires(parsed: argparse.Namespace) -> tuple[str, ...]:
    """The declared features, and those that the tpm, disks and firmware keys imply."""
    implied = [
        f
        for f, wanted in (
            ("tpm", parsed.tpm),
            ("disks", bool(parsed.disks)),
            ("secure-boot", parsed.firmware == Firmware.UEFI_SECURE_BOOT),
        )
        if wanted
    ]
    return tuple(parsed.requires) + tuple(f for f in implied if f not in parsed.requires)


def _host_file(name: str, test_dir: Path, bad: Callable[[str, str, str], DeclarationError]) -> Path:
    """The host test's file: a Python file of the test's own directory."""
    path = test_dir / name
    if "/" in name or not name.endswith(".py"):
        raise bad(
            "host", f"'{name}' is not a Python file name", "name a file of the test's directory: 'test_x.py'"
        )
    if not path.is_file():
        raise bad("host", f"{path} does not exist", "create it, or fix the name")
    return path


def _regex(key: str, text: str, bad: Callable[[str, str, str], DeclarationError]) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise bad(key, f"'{text[:80]}' is not a regular expression: {e}", "") from None
    return text


def _split_env(spec: str, bad: Callable[[str, str], DeclarationError]) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not ENV_NAME.fullmatch(key):
        raise bad("configuration", f"env entry '{spec}' is not NAME=VALUE")
    return key, value


def skip_reason(decl: TestDeclaration, settings: Settings) -> str | None:
    """Why this test should not run at all, from its declaration and the HARNESS_* switches."""
    if not settings.integration_tests:
        return "integration tests are turned off (HARNESS_INTEGRATION_TESTS=0)"
    if not decl.enabled:
        return f"disabled in {decl.source}"
    if decl.slow and not settings.slow_tests:
        return "slow test; set HARNESS_SLOW_TESTS=1 to run it"
    for word in settings.skip:
        if word in decl.name:
            return f"skipped by HARNESS_SKIP ('{word}')"
    return None
