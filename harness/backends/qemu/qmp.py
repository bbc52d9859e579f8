"""QMP, QEMU's monitor protocol, on one VM's socket: the machine uses it to power off,
save and resume; a host-driven test's controls to cut power and send whatever else QEMU
offers. Its own module so that the machine and the controls both use it and neither owns
the other. qemu.qmp is imported when first needed: a skipped test or a `validate` does
not pay for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def qmp_errors() -> tuple[type[Exception], ...]:
    """What talking to QEMU over QMP raises when QEMU is not (or no longer) there, or
    refuses a command."""
    from qemu.qmp import QMPError

    return (OSError, EOFError, QMPError)


class Qmp:
    """The QMP socket of one QEMU; each call opens its own connection."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    @contextlib.contextmanager
    def session(self, timeout: float) -> Iterator[Any]:
        """One QMP connection, closed on leaving."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        qmp = QEMUMonitorProtocol(str(self.socket))
        try:
            qmp.settimeout(timeout)
            qmp.connect()
            yield qmp
        finally:
            with contextlib.suppress(*qmp_errors()):
                qmp.close()

    def call(self, command: str, timeout: float, **arguments: Any) -> Any:
        """Send one command and return QEMU's answer; raises one of `qmp_errors()`."""
        with self.session(timeout) as qmp:
            return qmp.cmd(command, **arguments)

    def try_call(self, command: str, **arguments: Any) -> bool:
        """Send one command; False when QEMU is not there or refused it."""
        try:
            self.call(command, 5, **arguments)
            return True
        except qmp_errors():
            return False

    def run_state(self) -> str | None:
        """QEMU's run state (inmigrate, paused, running, ...), or None while QMP is not up."""
        try:
            status = self.call("query-status", 5)
        except qmp_errors():  # QMP not up yet, or QEMU gone: the caller checks which
            return None
        return str(status["status"]) if isinstance(status, dict) else None
