"""What a test declares in its meson.build, as a validated, immutable value.

meson passes every key of the merged `integration_test_template + {...}` dict to the
wrapper as command-line options; `TestDeclaration.from_options` checks them all and
raises a DeclarationError naming the file and key at fault. meson runs the same check at
`meson setup`, so a broken declaration never gets as far as a VM.
"""

from __future__ import annotations

import argparse
import enum
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs

from harness.credential import ENV_NAME, Credential
from harness.disks import disk_sizes
from harness.errors import DeclarationError
from harness.extra_tree import TREES_CREDENTIAL, declared_trees

SKIP_EXIT = 77
RESERVED_CREDENTIAL = "harness.testcases"
DEFAULT_COMMAND = "/usr/lib/harness/tests/{name}/test.sh"

TEST_NAME = re.compile(r"TEST-[0-9]{2,}-[A-Z0-9][A-Z0-9_-]*")
UNIT_NAME = re.compile(
    r"[A-Za-z0-9:_.@\\-]+\.(service|socket|target|mount|path|timer|device|swap|slice|scope|automount)"
)


class Firmware(enum.StrEnum):
    """How the machine starts the image's kernel (the declaration's `firmware`)."""

    LINUX = "linux"  # QEMU loads the image's kernel and initrd itself
    LINUX_NOINITRD = "linux-noinitrd"
    UEFI = "uefi"  # OVMF runs the image's boot loader and UKI
    UEFI_SECURE_BOOT = "uefi-secure-boot"  # the same with Secure Boot on, the image's keys enrolled
    AUTO = "auto"  # linux when the image has a split-out kernel, else uefi

    def is_uefi(self) -> bool:
        return self in (Firmware.UEFI, Firmware.UEFI_SECURE_BOOT)

    def is_secure_boot(self) -> bool:
        return self == Firmware.UEFI_SECURE_BOOT

    def is_linux(self) -> bool:
        return self in (Firmware.LINUX, Firmware.LINUX_NOINITRD)


class Storage(enum.StrEnum):
    VOLATILE = "volatile"  # root writes stay in memory and vanish at a reboot
    PERSISTENT = "persistent"  # root writes go to the test's disk overlay


class BootMode(enum.StrEnum):
    """What the test allows (the declaration's `boot`)."""

    AUTO = "auto"  # resume the booted snapshot where the test is eligible
    COLD = "cold"


@attrs.frozen
class Key:
    """One key of a test's declaration: its name in meson.build is also the wrapper's
    option (`--NAME`) and, with - as _, the attribute of TestDeclaration (or of its
    `configuration` for the keys of the test unit)."""

    name: str
    default: object
    meaning: str  # the README's key table is printed from these: python3 -m harness keys
    repeated: bool = False  # a list (or dict) in meson.build: one option per element
    choices: type[enum.StrEnum] | None = None
    configuration: bool = False  # a key inside `configuration : {...}`

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")


def _choices(vocabulary: type[enum.StrEnum]) -> str:
    return ", ".join(f"`{v}`" for v in vocabulary)


KEYS = (
    Key("name", "", "(required) `fs.name(meson.current_source_dir())`: the directory name, `TEST-NN-NAME`"),
    Key(
        "timeout", 300, "seconds with KVM; multiplied by 5 under TCG (`python3 -m harness accel` says which)"
    ),
    Key(
        "priority", 0, "meson's test priority: higher starts first (among equals, tests that boot cold first)"
    ),
    Key("slow", False, "runs only with `HARNESS_SLOW_TESTS=1`"),
    Key("enabled", True, "false: always SKIP"),
    Key(
        "firmware",
        Firmware.LINUX,
        "`linux` (direct kernel boot with the image's kernel and initrd), "
        "`linux-noinitrd` (the kernel alone; with its initrd where the kernel has the disk driver as a module, "
        "as systemd's wrapper does), `uefi` (OVMF, the image's systemd-boot and UKI), `uefi-secure-boot` (the same "
        "with Secure Boot enforced and the image's signing key enrolled, adding `secure-boot` to `requires`; "
        "SKIPs where the image is not signed), `auto` (linux when the image has a split-out kernel, else uefi)",
        choices=Firmware,
    ),
    Key("cmdline", [], "added to the kernel command line (for `uefi`, through SMBIOS)", repeated=True),
    Key(
        "credentials",
        [],
        "`NAME=VALUE` (text), `NAME=@FILE` (bytes of FILE, a regular file of at most 1 MB in the test's "
        "directory; an absolute path for a secret) or `NAME=env:VARIABLE`; the test reads them in `$CREDENTIALS_DIRECTORY`; "
        "values are masked in everything the host keeps (see Secrets)",
        repeated=True,
    ),
    Key("qemu-args", [], "extra QEMU arguments", repeated=True),
    Key("exit-code", 123, "the status the guest exits with on success (1..255, not 77)"),
    Key(
        "storage",
        Storage.VOLATILE,
        "`volatile`: root writes stay in memory (`systemd.volatile=overlay`) and "
        "vanish at a reboot; `persistent`: they go to the test's disk overlay and survive reboots inside the test",
        choices=Storage,
    ),
    Key(
        "boot",
        BootMode.AUTO,
        "`auto`: resume the booted snapshot when the test is eligible (see Speed), else "
        "boot cold; `cold`: always boot",
        choices=BootMode,
    ),
    Key(
        "requires",
        [],
        "features the machine must offer (a worker's features, LAVA device tags)",
        repeated=True,
    ),
    Key(
        "tpm",
        False,
        "a TPM 2.0 in the machine (adds `tpm` to `requires`): a VM gets swtpm beside it, a fresh TPM per "
        "test, and boots cold; a board must offer the `tpm` feature, else the test SKIPs",
    ),
    Key(
        "rtc",
        False,
        "the machine's real-time clock starts at the host's UTC time (`-rtc base=NOW`, as systemd's "
        "wrapper sets it); the test boots cold",
    ),
    Key(
        "disks",
        [],
        "extra empty disks, each a size (`512M`, `2G`; at most 8 of 1M..1T): sparse files beside the VM, "
        "the guest's `/dev/disk/by-id/virtio-harness-disk-N` (N from 1); the test boots cold; a board "
        "must offer the `disks` feature (added to `requires`), else the test SKIPs",
        repeated=True,
    ),
    Key(
        "extra-trees",
        [],
        "directories copied into the guest before the test starts, without an image rebuild: `DIR` (over "
        "its `/`) or `DIR:/guest/path`, DIR relative to the test's directory or absolute (mkosi's "
        "`ExtraTrees=` spelling); packed at most 256 KiB, on every backend and path; not for host-driven tests",
        repeated=True,
    ),
    Key("vm", False, "systemd's key, accepted: every test here runs in a VM or on a board (no containers)"),
    Key(
        "coredump-exclude-regex",
        "",
        "a test FAILs when a process dumped core during it, unless this regular expression matches its "
        "executable's path (systemd's spelling)",
    ),
    Key(
        "host",
        "",
        "a pytest file of the test's directory that drives the machine from the host (see Host-driven "
        "tests); the guest then boots its default target, with no test unit",
    ),
    Key("configuration", {}, "the test unit, a dict of the keys below"),
    Key(
        "command",
        "",
        "the test's command (default `/usr/lib/harness/tests/NAME/test.sh`)",
        configuration=True,
    ),
    Key("wants", [], "units the test unit wants", repeated=True, configuration=True),
    Key("after", [], "units the test unit starts after", repeated=True, configuration=True),
    Key("env", {}, "environment of the test's command, a dict", repeated=True, configuration=True),
    Key("unit", [], "extra lines for the unit's `[Unit]` section", repeated=True, configuration=True),
    Key("service", [], "extra lines for the unit's `[Service]` section", repeated=True, configuration=True),
    Key(
        "memory-accounting",
        False,
        "true: `MemoryAccounting=yes` for the test unit (systemd's key); false: the guest's default",
        configuration=True,
    ),
)
KEY_NAMES = tuple(k.name for k in KEYS if not k.configuration)
CONFIGURATION_KEY_NAMES = tuple(k.name for k in KEYS if k.configuration)


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.StrEnum):
        return f"`{value}`"
    if value == "" or value is None:
        return ""
    return str(value)


def key_table() -> str:
    """The README's table of declaration keys."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for k in KEYS:
        name = f"`configuration: {k.name}`" if k.configuration else f"`{k.name}`"
        rows.append(f"| {name} | {_shown(k.default)} | {k.meaning} |")
    return "\n".join(rows)


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
    extra_trees: Credential | None = None  # the declared trees, packed (extra_tree.py)
    coredump_exclude_regex: str = ""
    host: Path | None = None  # the host-side pytest file, for a host-driven test
    configuration: Configuration = Configuration(command="")

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    @classmethod
    def from_options(cls, o: argparse.Namespace, env: Mapping[str, str] | None = None) -> TestDeclaration:
        """Build from the wrapper's parsed options (harness.declaration_file.parse); `env`
        is where env: credentials are read from (None: only check them)."""
        test_dir = Path(o.test_dir)
        source = str(test_dir / "meson.build")

        def bad(key: str, problem: str, fix: str = "") -> DeclarationError:
            return DeclarationError(source, key, problem, fix)

        if not TEST_NAME.fullmatch(o.name):
            raise bad(
                "name",
                f"'{o.name}' does not follow TEST-NN-NAME",
                "name the directory TEST-NN-NAME (two or more digits, upper-case name)",
            )
        if o.timeout <= 0:
            raise bad("timeout", f"{o.timeout} is not a positive number of seconds")
        for key in KEYS:
            value = getattr(o, key.attribute, None)
            if key.choices and value not in set(key.choices):
                raise bad(key.name, f"unknown {key.name} '{value}'", f"use one of: {', '.join(key.choices)}")
        if not 1 <= o.exit_code <= 255 or o.exit_code == SKIP_EXIT:
            raise bad(
                "exit-code",
                f"{o.exit_code} cannot mean success",
                "use 1..255 except 77 (skip); 0 is what a VM that just powers off reports",
            )
        credentials = tuple(Credential.parse(c, test_dir, source, env) for c in o.credentials)
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
        for unit in (*o.wants, *o.after):
            if not UNIT_NAME.fullmatch(unit):
                raise bad("configuration", f"'{unit}' in wants/after is not a unit name")
        unit_env = tuple(_split_env(e, bad) for e in o.env)
        host = _host_file(o.host, test_dir, bad) if o.host else None
        trees = declared_trees(o.extra_trees, test_dir, host is not None, bad)
        return cls(
            name=o.name,
            source=source,
            test_dir=test_dir,
            timeout=o.timeout,
            priority=o.priority,
            slow=o.slow,
            enabled=o.enabled,
            firmware=Firmware(o.firmware),
            cmdline=tuple(o.cmdline),
            credentials=credentials,
            qemu_args=tuple(o.qemu_args),
            exit_code=o.exit_code,
            storage=Storage(o.storage),
            boot=BootMode(o.boot),
            requires=_requires(o),
            tpm=o.tpm,
            rtc=o.rtc,
            disks=disk_sizes(o.disks, bad),
            extra_trees=trees,
            coredump_exclude_regex=_regex(o.coredump_exclude_regex, bad),
            host=host,
            configuration=Configuration(
                command=o.command or DEFAULT_COMMAND.format(name=o.name),
                wants=tuple(o.wants),
                after=tuple(o.after),
                env=unit_env,
                unit=tuple(o.unit),
                service=tuple(o.service),
                memory_accounting=o.memory_accounting,
            ),
        )


def _requires(o: argparse.Namespace) -> tuple[str, ...]:
    """The declared features, and those that the tpm, disks and firmware keys imply."""
    implied = [
        f
        for f, wanted in (
            ("tpm", o.tpm),
            ("disks", bool(o.disks)),
            ("secure-boot", o.firmware == Firmware.UEFI_SECURE_BOOT),
        )
        if wanted
    ]
    return tuple(o.requires) + tuple(f for f in implied if f not in o.requires)


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


def _regex(text: str, bad: Callable[[str, str, str], DeclarationError]) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise bad("coredump-exclude-regex", f"'{text[:80]}' is not a regular expression: {e}", "") from None
    return text


def _split_env(spec: str, bad: Callable[[str, str], DeclarationError]) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not ENV_NAME.fullmatch(key):
        raise bad("configuration", f"env entry '{spec}' is not NAME=VALUE")
    return key, value


def skip_reason(decl: TestDeclaration, env: Mapping[str, str]) -> str | None:
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
