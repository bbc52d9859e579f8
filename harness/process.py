"""The long-lived children the harness owns (QEMU, swtpm, a virtual board's QEMU,
systemd-nspawn), started and stopped one way: `start` spawns one with its output in a log
file and the parent-death signal set, so that none outlives its owner even when the owner
is SIGKILLed; `stop` asks it to end and kills it after a grace; `kill` ends it now. Short
commands whose output is read (qemu-img, debugfs, ...) go through subprocess.run where
they are needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen's preexec_fn: runs in the child between fork and exec. The signal fires
    when the forking *thread* ends, so a child must be started from a thread that lives
    as long as the child should."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class OwnedProcess:
    """One child process the harness started and must end."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        """Its exit status, or None while it runs."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for it to end (subprocess.TimeoutExpired when it does not within `timeout`)."""
        return self.popen.wait(timeout=timeout)

    def stop(self, grace: float = 5.0) -> None:
        """Ask it to end (SIGTERM), and kill it when it has not within `grace` seconds."""
        if self.alive():
            self.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        self.kill()

    def kill(self) -> None:
        """End it now (SIGKILL) and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def start(
    cmd: Sequence[str],
    log: Path,
    *,
    merge_output: bool = False,
    on_terminal: bool = False,
    pass_fds: Sequence[int] = (),
    output: Path | None = None,
) -> OwnedProcess:
    """Start `cmd` as an owned child: its stderr (with `merge_output` its stdout too) goes
    to `log`, its stdout to `output` where given (a container's console); stdin and stdout
    are /dev/null unless `on_terminal` (a person at the console: they stay the harness's
    own)."""
    terminal_or_null = None if on_terminal else subprocess.DEVNULL
    with log.open("wb") as out, contextlib.ExitStack() as stack:
        stdout = stack.enter_context(output.open("wb")) if output is not None else None
        popen = subprocess.Popen(
            list(cmd),
            stdin=terminal_or_null,
            stdout=stdout or (out if merge_output else terminal_or_null),
            stderr=out,
            pass_fds=tuple(pass_fds),
            preexec_fn=die_with_parent,
        )
    return OwnedProcess(popen)


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a wrapper's, whose private directory it is)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
