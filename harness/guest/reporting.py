"""What the test unit runs to tell the host about the test: its start, its end, its
journal and timeline, as shell commands for its Exec*= lines.

The guest reports in the notify protocol's KEY=VALUE lines through a ReportChannel: a
VM's virtio-serial port NOTIFY_PORT, or a board's serial console (lines marked
HARNESS_NOTIFY). Where vsock works, PID 1 itself also reports READY=1 and EXIT_STATUS=
to the host (`vmm.notify_socket`); the channel is what works everywhere, because PID 1's
own message is sent too late for any guest process to relay it.
"""

from __future__ import annotations

import re

import attrs

from harness.declaration.declaration import SKIP_EXIT
from harness.verdict.journal import COREDUMP_MESSAGE_ID
from harness.verdict.notify import Notify
from harness.verdict.timeline import TIMELINE_MANAGER_PROPERTIES, TIMELINE_UNIT_PROPERTIES

NOTIFY_PORT = "io.harness.notify"
JOURNAL_PORT = "io.harness.journal"
JOURNAL_PORT_PATH = f"/dev/virtio-ports/{JOURNAL_PORT}"  # in the guest
# Made by the fast path's hand-over in a resumed guest: its test unit then sends only its
# own part of the timeline (the host has the boot's from the snapshot). The hand-over sets
# the clock beside the test unit's start (`date` is a process, a tenth of a second under
# emulation): the mark is made empty, and written to once the clock is right. The test's
# first command waits for that; on a cold boot there is no mark and nothing to wait for.
RESUMED_MARK = "/run/harness-resumed"
WAIT_FOR_CLOCK = f"while [ -e {RESUMED_MARK} ] && [ ! -s {RESUMED_MARK} ]; do sleep 0.01; done"
CGROUP_SYSTEM = "/sys/fs/cgroup/system.slice"  # the unified hierarchy's, where systemd has one


@attrs.frozen
class ReportChannel:
    """Where the guest writes its notify lines: a VM's virtio-serial port, or a board's
    serial console, where a marker sets them apart from everything else printed there."""

    device: str
    prefix: str = ""

    @property
    def device_unit(self) -> str | None:
        """systemd's unit of a virtio port (udev tags vport* for systemd), which the test
        unit waits for: where the initrd lacks virtio_console (Debian's initramfs-tools), the
        port appears only once the root's udev has loaded it, seconds into the boot."""
        if not self.device.startswith("/dev/virtio-ports/"):
            return None
        return self.device.removeprefix("/").replace("-", "\\x2d").replace("/", "-") + ".device"

    def write(self, lines: list[str], *args: str) -> str:
        """A shell command that writes printf-formatted `lines` to the channel, if it exists."""
        fmt = "".join(f"{self.prefix}{line}\n" for line in lines).replace("\n", "\\n")
        values = "".join(f' "{a}"' for a in args)
        return f'test -c {self.device} && printf "{fmt}"{values} >{self.device}'


VIRTIO_CHANNEL = ReportChannel(f"/dev/virtio-ports/{NOTIFY_PORT}")
CONSOLE_CHANNEL = ReportChannel("/dev/console", "HARNESS_NOTIFY ")


def report_start(ch: ReportChannel) -> str:
    # Runs before the test: tells the host the guest got as far as the test unit.
    return f"-/bin/sh -c '{WAIT_FOR_CLOCK}; {ch.write(['READY=1'])} || :'"


PLAIN_PROGRAM = re.compile(r"[A-Za-z0-9_./+-]+")


def start_lines(ch: ReportChannel, command: str) -> list[str]:
    """The test's command, started by a shell that first tells the host it got as far as
    the test unit, then becomes the command (exec: same PID, same arguments as systemd
    split them, same exit status). One process of systemd's fewer than an ExecStartPre=
    (a fifth of a second under emulation). The journal names the command's lines after
    its program, as without the shell. A command with one of systemd's prefixes (-@:+!)
    or an unusual program word keeps the ExecStartPre=."""
    words = command.split(maxsplit=1)
    program = words[0] if words else ""
    if not PLAIN_PROGRAM.fullmatch(program) or program[0] in "-+":
        return [f"ExecStartPre={report_start(ch)}", f"ExecStart={command}"]
    name = program.rsplit("/", 1)[-1]
    return [
        f"ExecStart=/bin/sh -c '{WAIT_FOR_CLOCK}; {ch.write(['READY=1'])}; exec \"$$@\"' {name} {command}",
        f"SyslogIdentifier={name}",
    ]


def verdict_line(ch: ReportChannel, name: str, expected: int) -> str:
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


def report_end(ch: ReportChannel) -> str:
    # Runs after the test, with systemd's SERVICE_RESULT/EXIT_CODE/EXIT_STATUS in the
    # environment: the host turns these into the status PID 1 exits with.
    return ch.write(
        [f"{Notify.SERVICE_RESULT}=%%s", f"{Notify.EXIT_CODE}=%%s", f"{Notify.UNIT_EXIT_STATUS}=%%s"],
        "$SERVICE_RESULT",
        "$EXIT_CODE",
        "$EXIT_STATUS",
    )


def send_journal(unit_name: str, whole_journal: bool) -> str:
    # The journal goes out on its own port, so it is there even when the disk is thrown
    # away (a container has a host file bound at the port's path: `test -e`, not `-c`):
    # all of it when the test did not succeed (or the host keeps it always), else only the
    # test unit's part, which is what the report shows (exporting the whole journal costs
    # seconds under emulation).
    # A passed test sends its unit's part and every core dump's message (the host fails a
    # test during which a process dumped core: harness/verdict/gates.py), once systemd-coredump
    # has written them (up to 20 s: it makes the stack trace first).
    # One journalctl for both: the matches are journalctl -u's, with every core dump's.
    export = "journalctl -o export"
    if not whole_journal:
        matches = (
            f"_SYSTEMD_UNIT={unit_name} + _PID=1 UNIT={unit_name} + _UID=0 OBJECT_SYSTEMD_UNIT={unit_name}"
            f" + MESSAGE_ID={COREDUMP_MESSAGE_ID}"
        )
        export = f'{{ if [ "$SERVICE_RESULT" = success ]; then {export} {matches}; else {export}; fi; }}'
    settle = COREDUMPS_SETTLE.replace("$", "$$")  # in a unit's command line
    return (
        f"test -e {JOURNAL_PORT_PATH} && {{ {settle}; }} && journalctl --sync &&"
        f" {export} >{JOURNAL_PORT_PATH}"
    )


# Waits (up to 20 s) until systemd-coredump has written the dumps it is handling: it makes
# the stack trace first. Asking systemctl costs a process (a tenth of a second under
# emulation): where the cgroup tree shows that no core dump was ever handled, it is not
# asked.
COREDUMPS_SETTLE = (
    f"i=0; until {{ test -d {CGROUP_SYSTEM} && ! test -d {CGROUP_SYSTEM}/system-systemd?x2dcoredump.slice; }}"
    ' || [ $i -ge 100 ] || ! systemctl -q is-active "systemd-coredump@*" 2>/dev/null; do sleep 0.2; i=$((i+1)); done'
)
# For a host-driven test, run through its machine at the end: every core dump's message
# the guest's journal keeps, in journal export format.
CORE_DUMPS_EXPORT = (
    f"{COREDUMPS_SETTLE}; journalctl --sync; journalctl -o export MESSAGE_ID={COREDUMP_MESSAGE_ID}"
)


def report_timeline(ch: ReportChannel, unit_name: str) -> str:
    # The boot timeline, gzipped and base64-encoded into one line (about 10 kB): short
    # enough for a board's serial console too. Every unit's (3 s under emulation), or, in
    # a guest resumed from a snapshot (RESUMED_MARK), the uptime and the test unit's alone:
    # the host has the boot's.
    unit_props = ",".join(TIMELINE_UNIT_PROPERTIES)
    manager = ",".join(TIMELINE_MANAGER_PROPERTIES)
    uptime = "read up rest </proc/uptime; echo UptimeSeconds=$$up"
    show = (
        f"if test -e {RESUMED_MARK}; then {uptime}; echo; systemctl show -p {unit_props} {unit_name};"
        f' else systemctl show -p {manager}; {uptime}; echo; systemctl show -p {unit_props} "*"; fi'
    )
    return (
        f'test -c {ch.device} && {{ printf "{ch.prefix}{Notify.TIMELINE}=";'
        f" {{ {show}; }} | gzip -1 | base64 -w0; echo; }} >{ch.device}"
    )


def report_after(ch: ReportChannel, unit_name: str, whole_journal: bool, verdict: str) -> str:
    # One ExecStopPost= for all the test's end says: each command systemd runs is a
    # process of its own (systemd-executor), a fifth of a second under emulation. The
    # journal and the timeline go out side by side (on two ports), then the mark that the
    # guest has said all it will say: the host may end the VM from there without waiting
    # for a shutdown.
    journal = send_journal(unit_name, whole_journal)
    done = ch.write([f"{Notify.DONE}=1"])
    return (
        f"-/bin/sh -c '{report_end(ch)}; {verdict}; {{ {journal}; }} & {report_timeline(ch, unit_name)};"
        f" wait; {done}; :'"
    )
