"""The systemd units that turn a booted guest into a test run.

The test unit is not baked into the image: the harness sends it, and the drop-ins that
end the VM with the test's status, as credentials (`systemd.extra-unit.*`,
`systemd.unit-dropin.*`: systemd 256 reads them itself, older ones through the generator
guest/credential-units.generator). Any image with systemd 252 or later and the test
payload can therefore be tested, and a test's meson.build is the whole truth about it.

What the test unit runs to report its start and end is reporting.py's.
"""

from __future__ import annotations

from pathlib import Path

from harness.declaration.credential import Credential
from harness.declaration.declaration import RESERVED_CREDENTIAL, TestDeclaration
from harness.declaration.extra_tree import TREES_CREDENTIAL
from harness.guest.reporting import (
    VIRTIO_CHANNEL,
    ReportChannel,
    report_after,
    start_lines,
    verdict_line,
)
from harness.settings import Settings
from harness.verdict.notify import Notify
from harness.verdict.timeline import TIMELINE_MANAGER_PROPERTIES, TIMELINE_UNIT_PROPERTIES

# What the guest's systemd must have: credentials imported from SMBIOS and fw_cfg (252).
# The test unit arrives as a systemd.extra-unit.* credential, which systemd reads itself
# from 256 on; below that, the generator the image build installs
# (guest/credential-units.generator) does it.
MINIMUM_SYSTEMD = 252
# ImportCredential= (254) takes system credentials and the credstore alike; before it,
# LoadCredential= reads the test's credentials from where the generator put them.
IMPORT_CREDENTIAL_SINCE = 254
OLD_SYSTEMD_CREDENTIALS = "/run/systemd/generator/harness-credentials"
CONTROL_PORT = "io.harness.control"  # a host-driven test's commands (guest/control.sh)
CONTROL_UNIT = "harness-control.service"
CONTROL_CREDENTIAL = "harness.control"
CONTROL_SCRIPT = Path(__file__).parent / "control.sh"
# Where the control agent reads the host's commands: a VM's port of its own, or a board's
# serial console, which it then shares with the kernel and systemd.
VIRTIO_CONTROL = f"/dev/virtio-ports/{CONTROL_PORT}"
CONSOLE_CONTROL = "/dev/console"
EMERGENCY_UNIT = "harness-emergency-exit@.service"  # instances: emergency, rescue
DEBUG_SHELL_UNIT = "harness-debug-shell.service"
TESTCASES_CREDENTIAL = RESERVED_CREDENTIAL
TESTCASES_LIBRARY = Path(__file__).parent / "testcases.sh"


def timeline_script() -> str:
    """The same as plain shell, for the fast path's agent: the timeline of the whole boot,
    which the snapshot keeps so that resumed tests need only send their own unit's."""
    unit_props = ",".join(TIMELINE_UNIT_PROPERTIES)
    manager = ",".join(TIMELINE_MANAGER_PROPERTIES)
    return (
        f'{{ systemctl show -p {manager}; echo UptimeSeconds=$(cut -d" " -f1 /proc/uptime); echo;'
        f' systemctl show -p {unit_props} "*"; }} | gzip -1 | base64 -w0\n'
    )


def render_test_unit(
    decl: TestDeclaration,
    interactive: bool,
    channel: ReportChannel = VIRTIO_CHANNEL,
    whole_journal: bool = False,
    systemd: int | None = None,
    selection: tuple[tuple[str, str], ...] = (),
    shell: bool = False,
) -> str:
    """The test unit; `systemd` is the guest's version, where the image tells it;
    `selection` the testcase selection from the host (testcase_selection); `shell`: a
    person starts it from the shell on the console (HARNESS_SHELL=1)."""
    u = decl.configuration
    lines = ["[Unit]", f"Description={decl.name} ({decl.source})"]
    # As systemd's own test unit: after basic.target (its sockets, D-Bus's among them, and
    # timers), whatever boots it; the fast path's snapshot has it reached already. Where
    # the image has systemd-coredump, its socket takes the test's core dumps.
    lines += ["Wants=basic.target systemd-coredump.socket", "After=basic.target systemd-coredump.socket"]
    if channel.device_unit:
        lines += [f"Wants={channel.device_unit}", f"After={channel.device_unit}"]
    lines += [f"Wants={w}" for w in u.wants]
    lines += [f"After={a}" for a in u.after]
    lines += [
        "SuccessAction=exit",
        f"SuccessActionExitStatus={decl.exit_code}",
    ]
    if shell:
        pass  # a failing test leaves the VM up: the person's shell is there already
    elif interactive:
        # A failing test leaves the VM up, with a shell for the person at the console.
        lines.append(f"OnFailure={DEBUG_SHELL_UNIT}")
    else:
        lines.append("FailureAction=exit")
    lines += list(u.unit)
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        # The host enforces the timeout; the guest must not give up first.
        "TimeoutStartSec=infinity",
        # The test's extra trees over the root; directories already there keep their owner
        # and mode where tar is GNU's (busybox's tar has no --no-overwrite-dir).
        *(
            [
                f"ExecStartPre=/bin/sh -c 'tar --no-overwrite-dir -xzf %d/{TREES_CREDENTIAL} -C / 2>/dev/null"
                f" || tar -xzf %d/{TREES_CREDENTIAL} -C /'"
            ]
            if decl.extra_trees
            else []
        ),
        *start_lines(channel, u.command),
        f"ExecStopPost={report_after(channel, decl.unit_name, whole_journal or interactive, verdict_line(channel, decl.name, decl.exit_code))}",
    ]
    if interactive and not shell:  # from a shell, the shell keeps the console's input
        lines += ["StandardInput=tty", "StandardOutput=tty", "StandardError=tty", "TTYPath=/dev/console"]
    else:
        lines += ["StandardOutput=journal+console"]
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in (*_testcase_env(channel), *selection, *u.env)]
    names = [c.name for c in (*decl.credentials, *payload_credentials(decl))]
    if systemd is None or systemd >= IMPORT_CREDENTIAL_SINCE:
        lines += [f"ImportCredential={name}" for name in names]
    else:
        lines += [f"LoadCredential={name}:{OLD_SYSTEMD_CREDENTIALS}/{name}" for name in names]
    if u.memory_accounting:
        lines.append("MemoryAccounting=yes")
    lines += list(u.service)
    return "\n".join(lines) + "\n"


def _emergency_exit(ch: ReportChannel, test_unit: str) -> str:
    """Ends the VM as soon as the boot falls into emergency or rescue mode (the instance:
    %i), instead of leaving it to sit at a root prompt until the timeout; says which, and
    the test unit's load state (not-found: the boot fell back to rescue for want of it)."""
    # %% and $$: systemd's escapes of printf's % and the shell's $.
    state = f"$$(systemctl show -p LoadState --value {test_unit} 2>/dev/null)" if test_unit else ""
    report = (
        f'test -c {ch.device} && printf "{ch.prefix}{Notify.EMERGENCY}=%%s\\n'
        f'{ch.prefix}{Notify.TEST_UNIT_STATE}=%%s\\n" "%i" "{state}" >{ch.device}'
    )
    return f"""\
[Unit]
Description=End the test VM: the boot fell into %i mode
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target
FailureAction=exit

[Service]
Type=oneshot
ExecStartPre=-/bin/sh -c '{report} || :'
ExecStart=false
"""


def _emergency_dropin(mode: str) -> str:
    return f"[Unit]\nWants={EMERGENCY_UNIT.replace('@', f'@{mode}')}\n"


# Interactive runs only: the test failed, and the person at the console gets a root
# shell in the state it left; leaving the shell ends the VM with a failing status.
_DEBUG_SHELL = """\
[Unit]
Description=Root shell after a failed test
DefaultDependencies=no

[Service]
ExecStartPre=-/bin/sh -c 'echo; echo "The test failed. Root shell; exit it to end the VM (Ctrl-a x quits QEMU)."'
ExecStart=-/bin/bash -l
ExecStopPost=/usr/bin/systemctl exit 1
StandardInput=tty-force
StandardOutput=inherit
StandardError=inherit
TTYPath=/dev/console
"""


def testcase_selection(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The test unit's environment for the testcases and subtests the host asked for (each
    a regular expression matched against the testcase's function name or the subtest's
    file; harness/settings.py reads them, and systemd's names for them): ours, which
    testcases.sh reads, and the one systemd's test-control.sh reads (guest/test-control.sh,
    ours, reads both)."""
    chosen = (
        ("HARNESS_MATCH_TESTCASE", "TEST_MATCH_TESTCASE", settings.match_testcase),
        ("HARNESS_SKIP_TESTCASE", "TEST_SKIP_TESTCASES", settings.skip_testcase),
        ("HARNESS_MATCH_SUBTEST", "TEST_MATCH_SUBTEST", settings.match_subtest),
        ("HARNESS_SKIP_SUBTEST", "TEST_SKIP_SUBTESTS", settings.skip_subtest),
    )
    return tuple(
        pair for ours, upstream, value in chosen if value for pair in ((ours, value), (upstream, value))
    )


def _testcase_env(ch: ReportChannel) -> list[tuple[str, str]]:
    # %d: the unit's credentials directory, where harness.testcases is imported to.
    return [
        ("HARNESS_TESTCASES_LIB", f"%d/{TESTCASES_CREDENTIAL}"),
        ("HARNESS_NOTIFY_DEVICE", ch.device),
        ("HARNESS_NOTIFY_PREFIX", ch.prefix),
    ]


def testcases_credential() -> Credential:
    """The guest's subtest library (harness/guest/testcases.sh), sourced by payloads,
    without its comment lines: it then fits what older systemd reads from SMBIOS."""
    lines = TESTCASES_LIBRARY.read_text().splitlines(keepends=True)
    code = [line for line in lines if line.startswith("#!") or not line.lstrip().startswith("#")]
    return Credential(TESTCASES_CREDENTIAL, "".join(code).encode())


def payload_credentials(decl: TestDeclaration) -> list[Credential]:
    """What the test unit imports besides the test's own credentials: the subtest
    library, and the test's extra trees where it has some."""
    return [testcases_credential(), *([decl.extra_trees] if decl.extra_trees else [])]


# A shell instead of the test (HARNESS_SHELL=1): once the system is up, a root shell on the
# console, which says how to start the test; leaving it powers the VM off. The console's
# getty stands down: it would read the same keys.
SHELL_UNIT = "harness-shell.service"
_SHELL = """\
[Unit]
Description=Root shell instead of the test (HARNESS_SHELL=1)
After=multi-user.target

[Service]
ExecStartPre=-/bin/sh -c 'echo; echo "HARNESS_SHELL=1: a root shell; systemctl start {unit} runs the test, exit powers off."'
ExecStart=-/bin/bash -l
ExecStopPost=/usr/bin/systemctl --no-block poweroff
StandardInput=tty-force
StandardOutput=inherit
StandardError=inherit
TTYPath=/dev/console
"""


def shell_credentials(decl: TestDeclaration) -> list[Credential]:
    return [
        Credential(f"systemd.extra-unit.{SHELL_UNIT}", _SHELL.format(unit=decl.unit_name).encode()),
        Credential(
            "systemd.unit-dropin.multi-user.target~harness-shell", f"[Unit]\nWants={SHELL_UNIT}\n".encode()
        ),
        Credential(
            "systemd.unit-dropin.serial-getty@.service~harness-shell",
            b"[Unit]\nConditionPathExists=/nonexistent\n",
        ),
    ]


def guest_credentials(
    decl: TestDeclaration,
    unit: str,
    interactive: bool,
    channel: ReportChannel = VIRTIO_CHANNEL,
    shell: bool = False,
) -> list[Credential]:
    """The credentials that shape the guest's boot, ahead of the test's own: the test
    `unit` (render_test_unit's), the subtest library and the harness's helper units; with
    `shell`, a root shell on the console instead of the test."""
    creds = [Credential(f"systemd.extra-unit.{decl.unit_name}", unit.encode()), *payload_credentials(decl)]
    if interactive:
        creds.append(Credential(f"systemd.extra-unit.{DEBUG_SHELL_UNIT}", _DEBUG_SHELL.encode()))
    else:
        creds += emergency_guard(channel, decl.unit_name)
    if shell:
        creds += shell_credentials(decl)
    return creds


def emergency_guard(channel: ReportChannel, test_unit: str = "") -> list[Credential]:
    """A unit that ends the VM as soon as the boot falls into emergency or rescue mode,
    saying which and how `test_unit` (if any) stands."""
    return [
        Credential(f"systemd.extra-unit.{EMERGENCY_UNIT}", _emergency_exit(channel, test_unit).encode()),
        Credential("systemd.unit-dropin.emergency.target~harness", _emergency_dropin("emergency").encode()),
        Credential("systemd.unit-dropin.rescue.target~harness", _emergency_dropin("rescue").encode()),
    ]


def boot_options(
    target_unit: str | None, interactive: bool, volatile: bool, machine_id: str | None = None
) -> list[str]:
    """What the harness adds to every kernel command line: boot into `target_unit` (the
    test unit, or the fast path's agent; None: the image's default target, as for a
    host-driven test), never wait at a prompt, end the VM on a crash, and a machine ID of
    its own where given (an image with a fixed one then still does not boot as if for the
    first time)."""
    options = [
        "rw",  # a UKI's own command line may leave the root read-only
        *([f"systemd.unit={target_unit}"] if target_unit else []),
        *([f"systemd.machine_id={machine_id}"] if machine_id else []),
        "systemd.firstboot=no",  # first boot would wait for a keypress
        "systemd.crash_action=poweroff",  # a crashing PID 1 ends the VM, not the timeout
    ]
    if not interactive:
        options.append("systemd.crash_shell=0")
    if volatile:
        options.append("systemd.volatile=overlay")  # writes stay in memory, gone at reboot
    return options


def control_credentials(systemd: int | None = None, device: str = VIRTIO_CONTROL) -> list[Credential]:
    """What a host-driven test's guest gets instead of a test unit: the control agent
    (guest/control.sh) on `device`, started at every boot once basic.target is reached, so
    that the host can drive it whatever the rest of the boot does; `systemd` is the
    guest's version. On the console, no getty competes with it for what the host types.
    Where the boot is counted (systemd-boot's boot counting pulls in boot-complete.target)
    the agent waits for the health checks, and a shutdown queued meanwhile (a failed check's
    FailureAction=reboot) cancels its start: a boot going down again is never handed to the
    test, which sees the next one that comes up."""
    if systemd is None or systemd >= IMPORT_CREDENTIAL_SINCE:
        load = f"ImportCredential={CONTROL_CREDENTIAL}"
    else:
        load = f"LoadCredential={CONTROL_CREDENTIAL}:{OLD_SYSTEMD_CREDENTIALS}/{CONTROL_CREDENTIAL}"
    unit = f"""\
[Unit]
Description=Run the host's commands (a host-driven test)
DefaultDependencies=no
After=sysinit.target boot-complete.target
Conflicts=shutdown.target
Before=shutdown.target
# The initrd's systemd reads the same credentials: the agent runs in the booted system only.
ConditionPathExists=!/etc/initrd-release

[Service]
Type=exec
{load}
ExecStart=/bin/sh %d/{CONTROL_CREDENTIAL} {device}
Restart=always
"""
    credentials = [
        Credential(f"systemd.extra-unit.{CONTROL_UNIT}", unit.encode()),
        Credential(CONTROL_CREDENTIAL, CONTROL_SCRIPT.read_bytes()),
        Credential("systemd.unit-dropin.basic.target~harness", f"[Unit]\nWants={CONTROL_UNIT}\n".encode()),
    ]
    if device == CONSOLE_CONTROL:
        # A getty on the console would read the host's commands. A board's image holds the
        # agent's unit in /etc/systemd/system (backends/board/image.py): no serial getty starts there.
        credentials.append(
            Credential(
                "systemd.unit-dropin.serial-getty@.service~harness",
                f"[Unit]\nConditionPathExists=!/etc/systemd/system/{CONTROL_UNIT}\n".encode(),
            )
        )
    return credentials


def _quote(value: str) -> str:
    """Quote one Environment= assignment the way systemd unquotes it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
