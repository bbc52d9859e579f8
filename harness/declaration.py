"""What a test declares in its meson.build, as a validated, immutable value.

meson passes every key of the merged `integration_test_template + {...}` dict to the
wrapper as command-line options; `TestDeclaration.from_options` checks them all and
raises a DeclarationError naming the file and key at fault. meson runs the same check at
`meson setup`, so a broken declaration never gets as far as a VM.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import attrs

from harness.errors import DeclarationError

FIRMWARES = ("linux", "linux-noinitrd", "uefi", "auto")
STORAGES = ("volatile", "persistent")
BOOTS = ("auto", "cold")  # auto: resume the booted snapshot where the test allows it
SKIP_EXIT = 77
RESERVED_CREDENTIAL = "harness.testcases"

TEST_NAME = re.compile(r"TEST-[0-9]{2,}-[A-Z0-9][A-Z0-9_-]*")
# systemd credential names are file names below /run/credentials.
CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@:+-]{1,255}")
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\\-]+\.(service|socket|target|mount|path|timer|device|swap|slice|scope|automount)")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@attrs.frozen
class Credential:
    """A systemd credential handed to the guest: a name and exact bytes."""

    name: str
    value: bytes

    @classmethod
    def parse(cls, spec: str, test_dir: Path, source: str) -> "Credential":
        """`NAME=VALUE` (text as written) or `NAME=@FILE` (bytes of FILE, relative to the test)."""
        name, sep, value = spec.partition("=")
        if not sep:
            raise DeclarationError(source, "credentials", f"'{spec}' is not NAME=VALUE",
                                   "write each credential as 'NAME=VALUE' or 'NAME=@FILE'")
        if not CREDENTIAL_NAME.fullmatch(name) or name in (".", ".."):
            raise DeclarationError(source, "credentials", f"'{name}' is not a valid credential name",
                                   "use letters, digits and . _ - @ : + only")
        if value.startswith("@"):
            path = test_dir / value[1:]
            try:
                return cls(name, path.read_bytes())
            except OSError as e:
                raise DeclarationError(source, "credentials", f"cannot read {path}: {e.strerror}",
                                       "NAME=@FILE reads FILE relative to the test's directory") from None
        return cls(name, value.encode())


@attrs.frozen
class UnitConfig:
    """The test unit the guest boots into: what runs and what it is ordered after."""

    command: str
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    unit_lines: tuple[str, ...] = ()
    service_lines: tuple[str, ...] = ()


@attrs.frozen
class TestDeclaration:
    name: str
    source: str  # the meson.build that declared it, for error messages
    test_dir: Path
    timeout: int
    priority: int = 0
    slow: bool = False
    enabled: bool = True
    firmware: str = "linux"
    cmdline: tuple[str, ...] = ()
    credentials: tuple[Credential, ...] = ()
    qemu_args: tuple[str, ...] = ()
    exit_code: int = 123
    storage: str = "volatile"
    boot: str = "auto"
    requirements: tuple[str, ...] = ()
    unit: UnitConfig = UnitConfig(command="")

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    @classmethod
    def from_options(cls, o) -> "TestDeclaration":
        """Build from the wrapper's parsed options (see cli.add_declaration_options)."""
        test_dir = Path(o.test_dir)
        source = str(test_dir / "meson.build")

        def bad(key: str, problem: str, fix: str = "") -> DeclarationError:
            return DeclarationError(source, key, problem, fix)

        if not TEST_NAME.fullmatch(o.name):
            raise bad("name", f"'{o.name}' does not follow TEST-NN-NAME",
                      "name the directory TEST-NN-NAME (two or more digits, upper-case name)")
        if o.timeout <= 0:
            raise bad("timeout", f"{o.timeout} is not a positive number of seconds")
        if o.firmware not in FIRMWARES:
            raise bad("firmware", f"unknown firmware '{o.firmware}'", f"use one of: {', '.join(FIRMWARES)}")
        if o.storage not in STORAGES:
            raise bad("storage", f"unknown storage '{o.storage}'", f"use one of: {', '.join(STORAGES)}")
        if o.boot not in BOOTS:
            raise bad("boot", f"unknown boot '{o.boot}'", f"use one of: {', '.join(BOOTS)}")
        if not 1 <= o.exit_code <= 255 or o.exit_code == SKIP_EXIT:
            raise bad("exit-code", f"{o.exit_code} cannot mean success",
                      "use 1..255 except 77 (skip); 0 is what a VM that just powers off reports")
        credentials = tuple(Credential.parse(c, test_dir, source) for c in o.credential)
        names = [c.name for c in credentials]
        if len(set(names)) != len(names):
            raise bad("credentials", "a credential name is given twice")
        if RESERVED_CREDENTIAL in names:
            raise bad("credentials", f"'{RESERVED_CREDENTIAL}' is the harness's own credential (the subtest library)",
                      "give the credential another name")
        for unit in (*o.unit_wants, *o.unit_after):
            if not UNIT_NAME.fullmatch(unit):
                raise bad("configuration", f"'{unit}' in wants/after is not a unit name")
        env = tuple(_split_env(e, bad) for e in o.unit_env)
        command = o.unit_command or f"/usr/lib/harness/tests/{o.name}/test.sh"
        return cls(
            name=o.name,
            source=source,
            test_dir=test_dir,
            timeout=o.timeout,
            priority=o.priority,
            slow=o.slow,
            enabled=o.enabled,
            firmware=o.firmware,
            cmdline=tuple(o.cmdline),
            credentials=credentials,
            qemu_args=tuple(o.qemu_arg),
            exit_code=o.exit_code,
            storage=o.storage,
            boot=o.boot,
            requirements=tuple(o.requires),
            unit=UnitConfig(
                command=command,
                wants=tuple(o.unit_wants),
                after=tuple(o.unit_after),
                env=env,
                unit_lines=tuple(o.unit_extra),
                service_lines=tuple(o.service_extra),
            ),
        )


def _split_env(spec: str, bad) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not ENV_NAME.fullmatch(key):
        raise bad("configuration", f"env entry '{spec}' is not NAME=VALUE")
    return key, value


def skip_reason(decl: TestDeclaration, env: dict[str, str]) -> str | None:
    """Why this test should not run at all, from its declaration and the HARNESS_* switches."""
    if env.get("HARNESS_INTEGRATION_TESTS", "1") == "0":
        return "integration tests are turned off (HARNESS_INTEGRATION_TESTS=0)"
    if not decl.enabled:
        return f"disabled in {decl.source}"
    if decl.slow and env.get("HARNESS_SLOW_TESTS", "0") != "1":
        return "slow test; set HARNESS_SLOW_TESTS=1 to run it"
    for word in _words(env.get("HARNESS_SKIP", "")):
        if word in decl.name:
            return f"skipped by HARNESS_SKIP ('{word}')"
    return None


def _words(text: str) -> Iterable[str]:
    return (w for w in text.split() if w)
