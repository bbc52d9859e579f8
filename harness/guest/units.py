"""The systemd units that turn a booted guest into a test run.

The test unit is not baked into the image: the harness sends it, and the drop-ins that
end the VM with the test's status, as credentials (`systemd.extra-unit.*`,
`systemd.unit-dropin.*`: systemd 256 reads them itself, older ones through the generator
guest/credential-units.generator). Any image with systemd 252 or later and the test
payload can therefore be tested, and a test's meson.build is the whole truth about it.

The guest reports in the notify protocol's KEY=VALUE lines through a ReportChannel: a
VM's virtio-serial port NOTIFY_PORT, or a board's serial console (lines marked
HARNESS_NOTIFY). Where vsock works, PID 1 itself also reports READY=1 and EXIT_STATUS=
to the host (`vmm.notify_socket`); the channel is what works everywhere, because PID 1's
own message is sent too late for any guest process to relay it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from harness.credential import Credential
from harness.declaration import RESERVED_CREDENTIAL, SKIP_EXIT, TestDeclaration
from harness.journal import COREDUMP_MESSAGE_ID
from harness.notify import Notify
from harness.timeline import TIMELINE_MANAGER_PROPERTIES, TIMELINE_UNIT_PROPERTIES

# What the guest's systemd must have: credentials imported from SMBIOS and fw_cfg (252).
# The test unit arrives as a systemd.extra-unit.* credential, which systemd reads itself
# from 256 on; below that, the generator the image build installs
# (guest/credential-units.generator) does it.
MINIMUM_SYSTEMD = 252
# ImportCredential= (254) takes system credentials and the credstore alike; before it,
# LoadCredential= reads the test's credentials from where the generator put them.
IMPORT_CREDENTIAL_SINCE = 254
OLD_SYSTEMD_CREDENTIALS = "/run/systemd/generator/harness-credentials"
NOTIFY_PORT = "io.harness.notify"
JOURNAL_PORT = "io.harness.journal"
CONTROL_PORT = "io.harness.control"  # a host-driven test's commands (guest/control.sh)
CONTROL_UNIT = "harness-control.service"
CONTROL_CREDENTIAL = "harness.control"
CONTROL_SCRIPT = Path(__file__).parent / "control.sh"
# Where the control agent reads the host's commands: a VM's port of its own, or a board's
# serial console, which it then shares with the kernel and systemd.
VIRTIO_CONTROL = f"/dev/virtio-ports/{CONTROL_PORT}"
CONSOLE_CONTROL = "/dev/console"
EMERGENCY_UNIT = "harness-emergency-exit.service"
DEBUG_SHELL_UNIT = "harness-debug-shell.service"
TESTCASES_CREDENTIAL = RESERVED_CREDENTIAL
TESTCASES_LIBRARY = Path(__file__).parent / "testcases.sh"
# Made by the fast path's hand-over in a resumed guest: its test unit then sends only its
# own part of the timeline (the host has the boot's from the snapshot).
RESUMED_MARK = "/run/harness-resumed"
CGROUP_SYSTEM = "/sys/fs/cgroup/system.slice"  # the unified hierarchy's, where systemd has one


@attrs.frozen
class ReportChannel:
    """Where the guest writes its notify lines: a VM's virtio-serial port, or a board's
    serial console, where a marker sets them apart from everything else printed there."""

    device: str
    prefix: str = ""

    def write(self, lines: list[str], *args: str) -> str:
        """A shell command that writes printf-formatted `lines` to the channel, if it exists."""
        fmt = "".join(f"{self.prefix}{line}\n" for line in lines).replace("\n", "\\n")
        values = "".join(f' "{a}"' for a in args)
        return f'test -c {self.device} && printf "{fmt}"{values} >{self.device}'


VIRTIO_CHANNEL = ReportChannel(f"/dev/virtio-ports/{NOTIFY_PORT}")
CONSOLE_CHANNEL = ReportChannel("/dev/console", "HARNESS_NOTIFY ")


def _report_start(ch: ReportChannel) -> str:
    # Runs before the test: tells the host the guest got as far as the test unit.
    return f"-/bin/sh -c '{ch.write(['READY=1'])} || :'"


def _verdict_line(ch: ReportChannel, name: str, expected: int) -> str:
    # The test's verdict as the guest sees it, in the subtests' line format: a lab that
    # only watches the console (LAVA's monitor) lists the test beside its subtests from
    # it. The harness itself decides from the exit status (notify.derive_exit_status, which
    # this follows), and does not read this line.
    return (
        f'if [ "$SERVICE_RESULT" = success ]; then s={expected};'
        ' elif [ "$EXIT_CODE" = exited ]; then s="$EXIT_STATUS"; else s=1; fi;'
        f' case "$$s" in {expected}) v=pass;; {SKIP_EXIT}) v=skip;; *) v=fail;; esac; '
        + ch.write([f"{Notify.TEST}=%%s 0 {name}"], "$$v")
    )


def _report_end(ch: ReportChannel, unit_name: str, whole_journal: bool, verdict: str) -> str:
    # Runs after the test, with systemd's SERVICE_RESULT/EXIT_CODE/EXIT_STATUS in the
    # environment: the host turns these into the status PID 1 exits with. Then the
    # journal goes out on its own port (VMs only), so it is there even when the disk is
    # thrown away: all of it when the test did not succeed (or the host keeps it always),
    # else only the test unit's part, which is what the report shows (exporting the
    # whole journal costs seconds under emulation).
    report = ch.write(
        [f"{Notify.SERVICE_RESULT}=%%s", f"{Notify.EXIT_CODE}=%%s", f"{Notify.UNIT_EXIT_STATUS}=%%s"],
        "$SERVICE_RESULT",
        "$EXIT_CODE",
        "$EXIT_STATUS",
    )
    # A passed test sends its unit's part and every core dump's message (the host fails a
    # test during which a process dumped core: harness/gates.py), once systemd-coredump
    # has written them (up to 20 s: it makes the stack trace first).
    # One journalctl for both: the matches are journalctl -u's, with every core dump's.
    export = "journalctl -o export"
    if not whole_journal:
        matches = (
            f"_SYSTEMD_UNIT={unit_name} + _PID=1 UNIT={unit_name} + _UID=0 OBJECT_SYSTEMD_UNIT={unit_name}"
            f" + MESSAGE_ID={COREDUMP_MESSAGE_ID}"
        )
        export = f'{{ if [ "$SERVICE_RESULT" = success ]; then {export} {matches}; else {export}; fi; }}'
    # Asking systemctl costs a process (a tenth of a second under emulation): where the
    # cgroup tree shows that no core dump was ever handled, it is not asked.
    no_dumps = f"test -d {CGROUP_SYSTEM} && ! test -d {CGROUP_SYSTEM}/system-systemd?x2dcoredump.slice"
    settle = (
        f"i=0; until {no_dumps} || [ $$i -ge 100 ] ||"
        ' ! systemctl -q is-active "systemd-coredump@*" 2>/dev/null; do sleep 0.2; i=$$((i+1)); done'
    )
    return (
        f"{report}; {verdict};"
        f" test -c /dev/virtio-ports/{JOURNAL_PORT} && {{ {settle}; }} && journalctl --sync &&"
        f" {export} >/dev/virtio-ports/{JOURNAL_PORT}"
    )


def _report_timeline(ch: ReportChannel, unit_name: str) -> str:
    # The boot timeline, gzipped and base64-encoded into one line (about 10 kB): short
    # enough for a board's serial console too. Then the mark that the guest has said all
    # it will say: the host may end the VM from here without waiting for a shutdown.
    # Every unit's (3 s under emulation), or, in a guest resumed from a snapshot
    # (RESUMED_MARK), the uptime and the test unit's alone: the host has the boot's.
    unit_props = ",".join(TIMELINE_UNIT_PROPERTIES)
    manager = ",".join(TIMELINE_MANAGER_PROPERTIES)
    uptime = "read up rest </proc/uptime; echo UptimeSeconds=$$up"
    show = (
        f"if test -e {RESUMED_MARK}; then {uptime}; echo; systemctl show -p {unit_props} {unit_name};"
        f' else systemctl show -p {manager}; {uptime}; echo; systemctl show -p {unit_props} "*"; fi'
    )
    return (
        f'test -c {ch.device} && {{ printf "{ch.prefix}{Notify.TIMELINE}=";'
        f" {{ {show}; }} | gzip -1 | base64 -w0;"
        f' echo; printf "{ch.prefix}{Notify.DONE}=1\\n"; }} >{ch.device}'
    )


def _report_after(ch: ReportChannel, unit_name: str, whole_journal: bool, verdict: str) -> str:
    # One ExecStopPost= for all the test's end says: each command systemd runs is a
    # process of its own (systemd-executor), a fifth of a second under emulation.
    end = _report_end(ch, unit_name, whole_journal, verdict)
    return f"-/bin/sh -c '{end}; {_report_timeline(ch, unit_name)}; :'"


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
) -> str:
    """The test unit; `systemd` is the guest's version, where the image tells it;
    `selection` the testcase selection from the host (testcase_selection)."""
    u = decl.configuration
    lines = ["[Unit]", f"Description={decl.name} ({decl.source})"]
    # Where the image has systemd-coredump, its socket takes the test's core dumps (the
    # fast path's guest stops at sysinit.target, before sockets.target would start it).
    lines += ["Wants=systemd-coredump.socket", "After=systemd-coredump.socket"]
    lines += [f"Wants={w}" for w in u.wants]
    lines += [f"After={a}" for a in u.after]
    lines += [
        "SuccessAction=exit",
        f"SuccessActionExitStatus={decl.exit_code}",
    ]
    if interactive:
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
        f"ExecStartPre={_report_start(channel)}",
        f"ExecStart={u.command}",
        f"ExecStopPost={_report_after(channel, decl.unit_name, whole_journal or interactive, _verdict_line(channel, decl.name, decl.exit_code))}",
    ]
    if interactive:
        lines += ["StandardInput=tty", "StandardOutput=tty", "StandardError=tty", "TTYPath=/dev/console"]
    else:
        lines += ["StandardOutput=journal+console"]
    lines += [f"Environment={_quote(f'{k}={v}')}" for k, v in (*_testcase_env(channel), *selection, *u.env)]
    names = [c.name for c in (*decl.credentials, testcases_credential())]
    if systemd is None or systemd >= IMPORT_CREDENTIAL_SINCE:
        lines += [f"ImportCredential={name}" for name in names]
    else:
        lines += [f"LoadCredential={name}:{OLD_SYSTEMD_CREDENTIALS}/{name}" for name in names]
    lines += list(u.service)
    return "\n".join(lines) + "\n"


def _emergency_exit(ch: ReportChannel) -> str:
    """Ends the VM as soon as the boot falls into emergency or rescue mode, instead of
    leaving it to sit at a root prompt until the timeout."""
    return f"""\
[Unit]
Description=End the test VM: the boot failed
DefaultDependencies=no
Conflicts=shutdown.target
Before=shutdown.target
FailureAction=exit

[Service]
Type=oneshot
ExecStartPre=-/bin/sh -c '{ch.write([f"{Notify.EMERGENCY}=1"])} || :'
ExecStart=false
"""


_EMERGENCY_DROPIN = f"""\
[Unit]
Wants={EMERGENCY_UNIT}
"""


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


# Which testcases run, from the host's environment: ours, and systemd's names for the
# same (its upstream scripts read those), each regular expression matched against the
# testcase's function name.
TESTCASE_SELECTION = {
    "HARNESS_MATCH_TESTCASE": ("HARNESS_MATCH_TESTCASE", "TEST_MATCH_TESTCASE"),
    "HARNESS_SKIP_TESTCASE": ("HARNESS_SKIP_TESTCASE", "TEST_SKIP_TESTCASE"),
}


def testcase_selection(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The test unit's environment for the selection the host asked for: both spellings."""
    selection: list[tuple[str, str]] = []
    for ours, names in TESTCASE_SELECTION.items():
        value = next((env[n] for n in names if env.get(n)), "")
        if value:
            selection += [(ours, value), (names[1], value)]
    return tuple(selection)


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


def guest_credentials(
    decl: TestDeclaration, unit: str, interactive: bool, channel: ReportChannel = VIRTIO_CHANNEL
) -> list[Credential]:
    """The credentials that shape the guest's boot, ahead of the test's own: the test
    `unit` (render_test_unit's), the subtest library and the harness's helper units."""
    creds = [Credential(f"systemd.extra-unit.{decl.unit_name}", unit.encode()), testcases_credential()]
    if interactive:
        creds.append(Credential(f"systemd.extra-unit.{DEBUG_SHELL_UNIT}", _DEBUG_SHELL.encode()))
    else:
        creds += emergency_guard(channel)
    return creds


def emergency_guard(channel: ReportChannel) -> list[Credential]:
    """A unit that ends the VM as soon as the boot falls into emergency or rescue mode."""
    return [
        Credential(f"systemd.extra-unit.{EMERGENCY_UNIT}", _emergency_exit(channel).encode()),
        Credential("systemd.unit-dropin.emergency.target~harness", _EMERGENCY_DROPIN.encode()),
        Credential("systemd.unit-dropin.rescue.target~harness", _EMERGENCY_DROPIN.encode()),
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
        # agent's unit in /etc/systemd/system (board_image.py): no serial getty starts there.
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
