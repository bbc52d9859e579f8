"""The vocabulary of a test's declaration: every key its meson.build may write, with its
default and meaning (docs/reference.md's key table is printed from KEYS: `python3 -m harness
keys`), and the StrEnums of the keys whose values are words. declaration.py checks a
declaration against these; declaration/file.py parses the file meson writes with them.
"""

from __future__ import annotations

import enum

import attrs


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
    meaning: str  # docs/reference.md's key table is printed from these: python3 -m harness keys
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
        "timeout",
        300,
        "seconds with KVM on an idle host; x5 under TCG, up to x3 more on a busy host (`python3 -m harness accel`)",
    ),
    Key(
        "priority",
        0,
        "meson's test priority: higher starts first (among equals, tests that boot first: host-driven "
        "ones, then those that boot cold or make their machine shape's snapshot)",
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
        "a TPM 2.0 in the machine (adds `tpm` to `requires`): a VM gets swtpm beside it, a TPM of its own "
        "per test (resumed: as the snapshot's boot left it); a board must offer the `tpm` feature, else "
        "the test SKIPs",
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
        "the guest's `/dev/disk/by-id/virtio-harness-disk-N` (N from 1), new for every test; a board "
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
    Key(
        "vm",
        False,
        "systemd's key: `true`, the test needs a VM (the nspawn backend SKIPs it); `false`, a container "
        "will do unless another key needs a kernel or machine of its own (see docs/backends.md)",
    ),
    Key(
        "coredump-exclude-regex",
        "",
        "a test FAILs when a process dumped core during it, unless this regular expression matches its "
        "executable's path (systemd's spelling)",
    ),
    Key(
        "sanitizer-exclude-regex",
        "",
        "a test FAILs when a sanitizer (ASan, UBSan, LSan, MSan) reported in its journal, unless this regular "
        "expression matches the reporting process's name (systemd's spelling; see HARNESS_SANITIZERS)",
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
    Key(
        "wants",
        [],
        "units the test unit wants (or systemd's spelling: one string, space-separated)",
        repeated=True,
        configuration=True,
    ),
    Key(
        "after",
        [],
        "units the test unit starts after (or one string, space-separated)",
        repeated=True,
        configuration=True,
    ),
    Key("env", {}, "environment of the test's command, a dict", repeated=True, configuration=True),
    Key(
        "unit",
        [],
        "extra lines for the unit's `[Unit]` section (or systemd's spelling: a dict, `{'DefaultDependencies' : 'no'}`)",
        repeated=True,
        configuration=True,
    ),
    Key(
        "service",
        [],
        "extra lines for the unit's `[Service]` section (or a dict, as `unit`)",
        repeated=True,
        configuration=True,
    ),
    Key(
        "memory-accounting",
        False,
        "true (or systemd's `'yes'`): `MemoryAccounting=yes` for the test unit (systemd's key); false: the "
        "guest's default",
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
    """docs/reference.md's table of declaration keys."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for k in KEYS:
        name = f"`configuration: {k.name}`" if k.configuration else f"`{k.name}`"
        rows.append(f"| {name} | {_shown(k.default)} | {k.meaning} |")
    return "\n".join(rows)
