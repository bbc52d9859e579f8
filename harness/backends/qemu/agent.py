"""What the fast path's agent (guest/agent.sh) is: the unit a snapshot boots to, and the one
line a resumed test sends it. That line holds shell commands the agent runs in its own
shell: renew the clock and the entropy pool, write the test's credentials and unit with
the shell's printf (no process of their own), and start the unit: the test unit, or for a
host-driven test the control agent its cold boot would start. How the VM is saved and
resumed is snapshot.py's."""

from __future__ import annotations

import os
import shlex
import time

from harness.backends.qemu.snapshot_store import HARNESS_DIR
from harness.boot.plan import BootPlan
from harness.declaration.credential import Credential
from harness.errors import HarnessError
from harness.guest.reporting import RESUMED_MARK
from harness.guest.units import CONTROL_CREDENTIAL, CONTROL_UNIT, control_credentials, timeline_script

AGENT_UNIT = "harness-agent.service"
AGENT_CREDENTIAL = "harness.agent"
TIMELINE_CREDENTIAL = "harness.timeline"
AGENT_SCRIPT = HARNESS_DIR / "guest" / "agent.sh"
SEED_BYTES = 64


def agent_unit() -> str:
    return f"""\
[Unit]
Description=Wait for a test from the host (the harness's fast path)
# Reached in the snapshot already, so a resumed test unit waits for none of it: basic.target
# (as systemd's test unit, it is ordered after it) and the core dump socket.
Wants=basic.target systemd-coredump.socket
After=basic.target systemd-coredump.socket

[Service]
Type=exec
ImportCredential={AGENT_CREDENTIAL}
ImportCredential={TIMELINE_CREDENTIAL}
ExecStart=/bin/sh %d/{AGENT_CREDENTIAL}
"""


def agent_credentials() -> list[Credential]:
    return [
        Credential(f"systemd.extra-unit.{AGENT_UNIT}", agent_unit().encode()),
        Credential(AGENT_CREDENTIAL, AGENT_SCRIPT.read_bytes()),
        Credential(TIMELINE_CREDENTIAL, timeline_script().encode()),
    ]


# Each byte as printf prints it back: printable ASCII as itself, the rest (and printf's and
# the quote's own specials) as an octal escape, which dash's and bash's printf both read.
_PRINTF = [chr(b) if 32 <= b < 127 and chr(b) not in "\\%'" else f"\\{b:03o}" for b in range(256)]


def write_file(data: bytes, path: str) -> str:
    """A shell command writing exactly `data` to `path` with the shell's own printf."""
    return f"printf -- '{''.join(_PRINTF[b] for b in data)}' >{shlex.quote(path)}"


def resume_script(
    unit_name: str,
    unit_text: str,
    credentials: tuple[Credential, ...],
    now: float,
    seed: bytes,
    clock_first: bool = False,
) -> str:
    """What the agent runs in a resumed VM: the guest's clock stopped when the snapshot was
    saved and its entropy pool is a copy shared by every test, so both are renewed before
    the test runs. `date` runs beside the rest (a test unit's first command waits for it:
    WAIT_FOR_CLOCK), or before it where the unit does not wait (`clock_first`: the control
    agent of a host-driven test). Credentials go to /run/credstore, where ImportCredential=
    finds them as it finds the SMBIOS ones on a cold boot."""
    clock = f"date -s @{now:.3f} >/dev/null || :; echo set >{RESUMED_MARK}"
    renew = [clock] if clock_first else [f": >{RESUMED_MARK}", f"{{ {clock}; }} &"]
    renew.append(write_file(seed, "/dev/urandom"))
    test = [write_file(c.value, f"/run/credstore/{c.name}") for c in credentials]
    test += [
        "umask 022",  # a unit file others cannot read makes PID 1 warn in every test's journal
        write_file(unit_text.encode(), f"/run/systemd/system/{unit_name}"),
        # No daemon-reload (3 s under emulation): PID 1 has never heard of this unit, so
        # it loads it from disk when asked to start it.
        f"systemctl start --no-block {unit_name}",
    ]
    # The agent's unit ends when its shell does, and takes what still runs with it.
    return "\n".join([*renew, *test, "wait"]) + "\n"


def handed_unit(plan: BootPlan) -> tuple[str, str, tuple[Credential, ...]]:
    """What the agent of a resumed VM starts, and the credentials it gets: the test unit,
    or for a host-driven test the control agent its cold boot would start."""
    if not plan.decl.host:
        return plan.decl.unit_name, plan.unit, plan.test_credentials
    control = {c.name: c for c in control_credentials(plan.image.systemd_version)}
    unit = control[f"systemd.extra-unit.{CONTROL_UNIT}"].value.decode()
    return CONTROL_UNIT, unit, (*plan.test_credentials, control[CONTROL_CREDENTIAL])


def agent_message(script: str) -> bytes:
    """The one line the agent reads from its port and runs in its own shell (eval): the
    script's commands joined on one line, which `write_file`'s escapes make possible."""
    # A command put in the background ends with its `&`, which takes no `;` after it.
    line = "".join(c + (" " if c.endswith("&") else "; ") for c in script.splitlines()).rstrip("; ")
    if "\n" in line or "\r" in line:
        raise HarnessError("the fast path's script for the agent holds a line break", "report this as a bug")
    return line.encode() + b"\n"


def handed_test(plan: BootPlan) -> bytes:
    """The line a resumed VM's agent is sent for `plan`'s test."""
    unit_name, unit_text, credentials = handed_unit(plan)
    clock_first = plan.decl.host is not None  # the control agent does not wait for the clock
    script = resume_script(
        unit_name, unit_text, credentials, time.time(), os.urandom(SEED_BYTES), clock_first
    )
    return agent_message(script)
